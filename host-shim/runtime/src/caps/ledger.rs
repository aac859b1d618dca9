//! The `vm-ledger` capability: a durable record of exe.dev VMs that may exist without an owner,
//! kept in the host's state directory so it outlives the call and the worker that wrote it.
//!
//! Layout: `<state-dir>/vm-ledger/<account>/<vm-name>.json`, one file per entry (written to a
//! temp file and renamed, so concurrent workers never see half an entry and never lose each
//! other's writes), directories 0700. `<account>` is a digest of the API URL and the token's
//! fingerprint. An entry holds the VM name, the API URL, the token's fingerprint (SHA-256 of a
//! domain tag and the token, truncated), the reason, the hold and the time of writing: never
//! the token. No error message or log line here contains it either.
//!
//! The worker's reconciler needs an account's token to work through its entries without a
//! Paperclip call. The ledger notes the token of every account it is asked about while that
//! account has entries, **in memory only** ([`Credentials`]), forgets it once the account's
//! entries are gone, and wakes the reconciler when something was written ([`VmLedger::changed`]).
//!
//! Plain Rust types only (`paperclip-provider-types`); the WIT conversion lives in `crate::convert`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// The boundary types have one home, shared with the guest.
pub use paperclip_provider_types::{Account, LedgerEntry, LedgerError, LedgerReason, Recorded};

/// The file an entry is stored as. Files written before the schedule fields existed read with
/// them at their defaults (due at once, never tried, first recorded when written).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEntry {
    vm_name: String,
    api_url: String,
    token_fingerprint: String,
    reason: LedgerReason,
    hold_ms: u64,
    written_at_ms: u64,
    #[serde(default)]
    first_recorded_at_ms: Option<u64>,
    #[serde(default)]
    due_at_ms: u64,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    last_error: Option<String>,
}

impl StoredEntry {
    fn recorded(self, now: u64) -> Recorded {
        Recorded {
            age_ms: now.saturating_sub(self.written_at_ms),
            since_ms: self.first_recorded_at_ms.unwrap_or(self.written_at_ms),
            entry: LedgerEntry {
                name: self.vm_name,
                reason: self.reason,
                hold_ms: self.hold_ms,
                due_at_ms: self.due_at_ms,
                attempts: self.attempts,
                last_error: self.last_error,
            },
        }
    }
}

/// One account's entries as found on disk, for the reconciler and the operator's listing:
/// the API URL and token fingerprint the entries carry, never a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountEntries {
    /// The account's directory name (a digest of the API URL and the token's fingerprint).
    pub key: String,
    /// The `/exec` API URL.
    pub api_url: String,
    /// The token's fingerprint.
    pub token_fingerprint: String,
    /// The entries, oldest first.
    pub entries: Vec<Recorded>,
}

/// Tokens of accounts that have ledger entries, by account key: memory only, never written,
/// never logged (`Debug` shows the keys alone).
#[derive(Default)]
pub struct Credentials {
    tokens: Mutex<HashMap<String, (String, String)>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self.lock().keys().cloned().collect();
        f.debug_struct("Credentials")
            .field("accounts", &keys)
            .finish()
    }
}

impl Credentials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, String)>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The (API URL, token) held for account `key`.
    pub fn get(&self, key: &str) -> Option<(String, String)> {
        self.lock().get(key).cloned()
    }

    fn keep(&self, key: &str, account: &Account) {
        self.lock().insert(
            key.to_string(),
            (account.api_url.clone(), account.token.clone()),
        );
    }

    /// Drop the token of `key` (its entries are gone).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The one-way fingerprint of an API token: 32 hex digits of SHA-256 over a domain tag and the
/// token. Tokens are long random strings, so it cannot be turned back into one.
pub fn token_fingerprint(token: &str) -> String {
    hex32(&[b"paperclip-vm-ledger/token\0", token.as_bytes()])
}

fn hex32(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    crate::hex::hex(&h.finalize()[..16])
}

/// exe.dev's name syntax, which also makes the name a safe file name.
fn check_name(name: &str) -> Result<(), LedgerError> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::InvalidRequest(format!(
            "{name:?} is not a valid exe.dev VM name"
        )))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Io(format!("{what} {}: {e}", path.display()))
}

/// The ledger under one directory.
#[derive(Debug)]
pub struct VmLedger {
    dir: PathBuf,
    credentials: Credentials,
    changed: Arc<tokio::sync::Notify>,
}

/// The directory name of an account: a digest of its API URL and token fingerprint.
pub fn account_key(api_url: &str, token_fingerprint: &str) -> String {
    hex32(&[
        b"paperclip-vm-ledger/account\0",
        api_url.as_bytes(),
        b"\0",
        token_fingerprint.as_bytes(),
    ])
}

impl VmLedger {
    /// A ledger kept in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            credentials: Credentials::default(),
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The tokens the ledger holds in memory for accounts with entries.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Notified whenever an entry is written or a token for an account with entries arrives:
    /// the reconciler sleeps on it while it has nothing due.
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// The directory of `account`'s entries and its key.
    fn account_dir(&self, account: &Account) -> Result<(PathBuf, String), LedgerError> {
        if account.api_url.trim().is_empty() {
            return Err(LedgerError::InvalidRequest("the API URL is empty".into()));
        }
        let key = account_key(&account.api_url, &token_fingerprint(&account.token));
        Ok((self.dir.join(&key), key))
    }

    /// Keep `account`'s token in memory while it has entries, forget it when it has none.
    fn note_account(&self, key: &str, account: &Account, has_entries: bool) {
        if has_entries {
            let new = self
                .credentials
                .get(key)
                .is_none_or(|(_, t)| *t != account.token);
            self.credentials.keep(key, account);
            if new {
                self.changed.notify_one();
            }
        } else {
            self.credentials.forget(key);
        }
    }

    fn read_entry(path: &Path) -> Result<StoredEntry, String> {
        std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<StoredEntry>(&t).map_err(|e| e.to_string()))
    }

    /// Every account's entries on disk (accounts without entries are left out), for the
    /// reconciler and the operator. Unreadable files are skipped with a warning.
    pub fn scan(&self) -> Result<Vec<AccountEntries>, LedgerError> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &self.dir, e)),
        };
        let mut out = Vec::new();
        for item in read.flatten() {
            let dir = item.path();
            if !dir.is_dir() {
                continue;
            }
            let key = item.file_name().to_string_lossy().into_owned();
            let stored = Self::read_dir_entries(&dir)?;
            let Some(first) = stored.first() else {
                continue;
            };
            let (api_url, fp) = (first.api_url.clone(), first.token_fingerprint.clone());
            let now = now_ms();
            let mut entries: Vec<(u64, Recorded)> = stored
                .into_iter()
                .map(|s| (s.written_at_ms, s.recorded(now)))
                .collect();
            sort_entries(&mut entries);
            out.push(AccountEntries {
                key,
                api_url,
                token_fingerprint: fp,
                entries: entries.into_iter().map(|(_, r)| r).collect(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn read_dir_entries(dir: &Path) -> Result<Vec<StoredEntry>, LedgerError> {
        let read = match std::fs::read_dir(dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", dir, e)),
        };
        let mut out = Vec::new();
        for item in read.flatten() {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match Self::read_entry(&path) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(
                        "skipping unreadable VM ledger entry {}: {e}",
                        path.display()
                    )
                }
            }
        }
        Ok(out)
    }

    /// Record `entry` under `account`, replacing its namesake.
    pub fn put(&self, account: &Account, entry: &LedgerEntry) -> Result<(), LedgerError> {
        check_name(&entry.name)?;
        let (dir, key) = self.account_dir(account)?;
        crate::statedir::ensure_private_dir(&dir)
            .map_err(|e| io("creating", &dir, format!("{e:#}")))?;
        let path = dir.join(format!("{}.json", entry.name));
        let now = now_ms();
        // Since when the VM is recorded survives rewrites of its entry.
        let since = Self::read_entry(&path)
            .ok()
            .map(|old| old.first_recorded_at_ms.unwrap_or(old.written_at_ms))
            .unwrap_or(now);
        let stored = StoredEntry {
            vm_name: entry.name.clone(),
            api_url: account.api_url.to_string(),
            token_fingerprint: token_fingerprint(&account.token),
            reason: entry.reason,
            hold_ms: entry.hold_ms,
            written_at_ms: now,
            first_recorded_at_ms: Some(since),
            due_at_ms: entry.due_at_ms,
            attempts: entry.attempts,
            last_error: entry.last_error.clone(),
        };
        let text = serde_json::to_string_pretty(&stored).expect("an entry serializes");
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io("writing", &dir, e))?;
        std::fs::write(tmp.path(), text).map_err(|e| io("writing", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| io("writing", &path, e.error))?;
        self.note_account(&key, account, true);
        // A new entry, or a new schedule: the reconciler looks again.
        self.changed.notify_one();
        Ok(())
    }

    /// Every entry under `account`, oldest first. Unreadable files are skipped with a warning.
    pub fn list(&self, account: &Account) -> Result<Vec<Recorded>, LedgerError> {
        let (dir, key) = self.account_dir(account)?;
        let now = now_ms();
        let mut out: Vec<(u64, Recorded)> = Self::read_dir_entries(&dir)?
            .into_iter()
            .map(|s| (s.written_at_ms, s.recorded(now)))
            .collect();
        sort_entries(&mut out);
        self.note_account(&key, account, !out.is_empty());
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Remove `name` under `account`; an absent entry is fine.
    pub fn remove(&self, account: &Account, name: &str) -> Result<(), LedgerError> {
        check_name(name)?;
        let (dir, key) = self.account_dir(account)?;
        let path = dir.join(format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &path, e)),
        }
        let left = Self::read_dir_entries(&dir)
            .map(|l| !l.is_empty())
            .unwrap_or(true);
        self.note_account(&key, account, left);
        Ok(())
    }
}

fn sort_entries(entries: &mut [(u64, Recorded)]) {
    entries.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.entry.name.cmp(&b.1.entry.name))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_URL: &str = "https://exe.dev/exec";
    const A_TOKEN: &str = "exe1.secret-token-value";

    fn a() -> Account {
        Account {
            api_url: A_URL.into(),
            token: A_TOKEN.into(),
        }
    }

    fn entry(name: &str, reason: LedgerReason) -> LedgerEntry {
        LedgerEntry {
            name: name.into(),
            reason,
            hold_ms: 0,
            due_at_ms: 0,
            attempts: 0,
            last_error: None,
        }
    }

    #[test]
    fn entries_round_trip_per_account_and_never_hold_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().join("vm-ledger"));
        l.put(&a(), &entry("paperclip-a", LedgerReason::UncertainCreate))
            .unwrap();
        l.put(&a(), &entry("paperclip-b", LedgerReason::FailedDelete))
            .unwrap();
        let other = Account {
            token: "exe1.another-token".into(),
            ..a()
        };
        assert!(l.list(&other).unwrap().is_empty());
        let names: Vec<_> = l
            .list(&a())
            .unwrap()
            .into_iter()
            .map(|r| (r.entry.name, r.entry.reason))
            .collect();
        assert_eq!(
            names,
            [
                ("paperclip-a".to_string(), LedgerReason::UncertainCreate),
                ("paperclip-b".to_string(), LedgerReason::FailedDelete)
            ]
        );
        for f in walk(dir.path()) {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("secret-token-value"), "{}", f.display());
            assert!(text.contains(&token_fingerprint(A_TOKEN)));
        }
        l.remove(&a(), "paperclip-a").unwrap();
        l.remove(&a(), "paperclip-a").unwrap();
        assert_eq!(l.list(&a()).unwrap().len(), 1);
    }

    #[test]
    fn tokens_live_in_memory_while_the_account_has_entries_and_schedules_survive() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().join("vm-ledger"));
        let key = account_key(A_URL, &token_fingerprint(A_TOKEN));
        // Asked about an account with no entries: nothing is kept.
        assert!(l.list(&a()).unwrap().is_empty());
        assert!(l.credentials().get(&key).is_none());
        l.put(&a(), &entry("paperclip-a", LedgerReason::UncertainCreate))
            .unwrap();
        assert_eq!(
            l.credentials().get(&key),
            Some((A_URL.to_string(), A_TOKEN.to_string()))
        );
        assert!(!format!("{:?}", l).contains(A_TOKEN));
        let first = l.list(&a()).unwrap()[0].since_ms;
        std::thread::sleep(std::time::Duration::from_millis(5));
        let retry = LedgerEntry {
            due_at_ms: 42,
            attempts: 3,
            last_error: Some("rm failed (503)".into()),
            ..entry("paperclip-a", LedgerReason::UncertainCreate)
        };
        l.put(&a(), &retry).unwrap();
        let scanned = l.scan().unwrap();
        assert_eq!(scanned.len(), 1);
        assert_eq!(scanned[0].key, key);
        assert_eq!(scanned[0].api_url, A_URL);
        assert_eq!(scanned[0].token_fingerprint, token_fingerprint(A_TOKEN));
        assert_eq!(scanned[0].entries[0].entry, retry);
        assert_eq!(
            scanned[0].entries[0].since_ms, first,
            "since survives rewrites"
        );
        l.remove(&a(), "paperclip-a").unwrap();
        assert!(l.credentials().get(&key).is_none(), "forgotten once empty");
        assert!(l.scan().unwrap().is_empty());
    }

    #[test]
    fn entries_written_before_the_schedule_fields_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().to_path_buf());
        let (acct, _) = l.account_dir(&a()).unwrap();
        std::fs::create_dir_all(&acct).unwrap();
        std::fs::write(
            acct.join("paperclip-old.json"),
            r#"{"vmName":"paperclip-old","apiUrl":"https://exe.dev/exec","tokenFingerprint":"x","reason":"failed-delete","holdMs":0,"writtenAtMs":1000}"#,
        )
        .unwrap();
        let got = l.list(&a()).unwrap();
        assert_eq!(
            got[0].entry,
            entry("paperclip-old", LedgerReason::FailedDelete)
        );
        assert_eq!(got[0].since_ms, 1000);
    }

    #[test]
    fn names_that_are_not_vm_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().to_path_buf());
        for bad in ["", "../x", "a/b", "Upper", "-lead", &"a".repeat(64)] {
            assert!(matches!(
                l.put(&a(), &entry(bad, LedgerReason::FailedDelete)),
                Err(LedgerError::InvalidRequest(_))
            ));
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
