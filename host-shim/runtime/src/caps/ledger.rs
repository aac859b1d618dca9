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
//! Plain Rust types only; the WIT conversion lives in `imports.rs`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The exe.dev account an entry belongs to.
pub struct Account<'a> {
    /// The `/exec` API URL.
    pub api_url: &'a str,
    /// The API token: only its fingerprint is kept.
    pub token: &'a str,
}

/// Why a VM is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A create whose outcome is unknown.
    UncertainCreate,
    /// A delete that failed.
    FailedDelete,
}

/// One entry as the guest writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The VM name.
    pub name: String,
    /// Why it is recorded.
    pub reason: Reason,
    /// How long after the write a live call still owns the VM.
    pub hold_ms: u64,
}

/// One entry as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The entry as last written.
    pub entry: Entry,
    /// Milliseconds since it was written.
    pub age_ms: u64,
}

/// Why the ledger could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// The state directory could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// The file an entry is stored as.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredEntry {
    vm_name: String,
    api_url: String,
    token_fingerprint: String,
    reason: Reason,
    hold_ms: u64,
    written_at_ms: u64,
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
#[derive(Clone, Debug)]
pub struct VmLedger {
    dir: PathBuf,
}

impl VmLedger {
    /// A ledger kept in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory of `account`'s entries.
    fn account_dir(&self, account: &Account<'_>) -> Result<PathBuf, LedgerError> {
        if account.api_url.trim().is_empty() {
            return Err(LedgerError::InvalidRequest("the API URL is empty".into()));
        }
        let fp = token_fingerprint(account.token);
        let key = hex32(&[
            b"paperclip-vm-ledger/account\0",
            account.api_url.as_bytes(),
            b"\0",
            fp.as_bytes(),
        ]);
        Ok(self.dir.join(key))
    }

    /// Record `entry` under `account`, replacing its namesake.
    pub fn put(&self, account: &Account<'_>, entry: &Entry) -> Result<(), LedgerError> {
        check_name(&entry.name)?;
        let dir = self.account_dir(account)?;
        crate::statedir::ensure_private_dir(&dir)
            .map_err(|e| io("creating", &dir, format!("{e:#}")))?;
        let stored = StoredEntry {
            vm_name: entry.name.clone(),
            api_url: account.api_url.to_string(),
            token_fingerprint: token_fingerprint(account.token),
            reason: entry.reason,
            hold_ms: entry.hold_ms,
            written_at_ms: now_ms(),
        };
        let text = serde_json::to_string_pretty(&stored).expect("an entry serializes");
        let path = dir.join(format!("{}.json", entry.name));
        let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| io("writing", &dir, e))?;
        std::fs::write(tmp.path(), text).map_err(|e| io("writing", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| io("writing", &path, e.error))?;
        Ok(())
    }

    /// Every entry under `account`, oldest first. Unreadable files are skipped with a warning.
    pub fn list(&self, account: &Account<'_>) -> Result<Vec<Recorded>, LedgerError> {
        let dir = self.account_dir(account)?;
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("reading", &dir, e)),
        };
        let now = now_ms();
        let mut out: Vec<(u64, Recorded)> = Vec::new();
        for item in read.flatten() {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<StoredEntry>(&t).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) => out.push((
                    s.written_at_ms,
                    Recorded {
                        age_ms: now.saturating_sub(s.written_at_ms),
                        entry: Entry {
                            name: s.vm_name,
                            reason: s.reason,
                            hold_ms: s.hold_ms,
                        },
                    },
                )),
                Err(e) => {
                    tracing::warn!(
                        "skipping unreadable VM ledger entry {}: {e}",
                        path.display()
                    )
                }
            }
        }
        out.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.entry.name.cmp(&b.1.entry.name))
        });
        Ok(out.into_iter().map(|(_, r)| r).collect())
    }

    /// Remove `name` under `account`; an absent entry is fine.
    pub fn remove(&self, account: &Account<'_>, name: &str) -> Result<(), LedgerError> {
        check_name(name)?;
        let path = self.account_dir(account)?.join(format!("{name}.json"));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Account<'static> = Account {
        api_url: "https://exe.dev/exec",
        token: "exe1.secret-token-value",
    };

    fn entry(name: &str, reason: Reason) -> Entry {
        Entry {
            name: name.into(),
            reason,
            hold_ms: 0,
        }
    }

    #[test]
    fn entries_round_trip_per_account_and_never_hold_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().join("vm-ledger"));
        l.put(&A, &entry("paperclip-a", Reason::UncertainCreate))
            .unwrap();
        l.put(&A, &entry("paperclip-b", Reason::FailedDelete))
            .unwrap();
        let other = Account {
            token: "exe1.another-token",
            ..A
        };
        assert!(l.list(&other).unwrap().is_empty());
        let names: Vec<_> = l
            .list(&A)
            .unwrap()
            .into_iter()
            .map(|r| (r.entry.name, r.entry.reason))
            .collect();
        assert_eq!(
            names,
            [
                ("paperclip-a".to_string(), Reason::UncertainCreate),
                ("paperclip-b".to_string(), Reason::FailedDelete)
            ]
        );
        for f in walk(dir.path()) {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("secret-token-value"), "{}", f.display());
            assert!(text.contains(&token_fingerprint(A.token)));
        }
        l.remove(&A, "paperclip-a").unwrap();
        l.remove(&A, "paperclip-a").unwrap();
        assert_eq!(l.list(&A).unwrap().len(), 1);
    }

    #[test]
    fn names_that_are_not_vm_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = VmLedger::new(dir.path().to_path_buf());
        for bad in ["", "../x", "a/b", "Upper", "-lead", &"a".repeat(64)] {
            assert!(matches!(
                l.put(&A, &entry(bad, Reason::FailedDelete)),
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
