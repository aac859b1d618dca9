//! The worker's background reconciler: while the VM ledger holds entries (VMs an uncertain
//! create may still produce, failed deletes, leases with an expiry), it works through them with
//! no Paperclip call.
//!
//! The host decides only *when*: it reads the ledger's schedule from disk and, for an account
//! with a due entry and a token it holds, calls the component's `reconcile` export like any
//! request (its own Store, deadline and limits). The guest does the work (only it speaks
//! exe.dev's API), writes the outcome and the next try back to the ledger, and says when to come
//! back. With nothing due, the worker sleeps until the earliest due time or until the ledger
//! changes; with an empty ledger it makes no call at all.
//!
//! Tokens: the ledger keeps in memory the token of each account it was asked about while that
//! account has entries (see `caps::ledger::Credentials`). After a restart the only token is the
//! worker's `EXE_API_KEY`, used for the accounts on disk whose fingerprint it matches; for other
//! accounts the entries wait for the next Paperclip call on the account, which hands the token
//! over (and sweeps them itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::notify::Outbox;
use paperclip_wasm_runtime::bindings::ledger::Account;
use paperclip_wasm_runtime::bindings::provider::ReconcileRequest;
use paperclip_wasm_runtime::caps::ledger::{account_key, token_fingerprint, AccountEntries};
use paperclip_wasm_runtime::engine::ProviderHost;

/// How long one reconcile call may spend (its API calls included).
pub const CALL_BUDGET: Duration = Duration::from_secs(20);
/// The shortest pause between two rounds, so an account whose work keeps coming back due at
/// once cannot make the worker spin.
const MIN_PAUSE: Duration = Duration::from_millis(250);
/// First pause after a reconcile call that failed as a whole (trap, no API key, …).
const FAIL_BASE: Duration = Duration::from_secs(1);
/// Longest such pause.
const FAIL_MAX: Duration = Duration::from_secs(60);
/// From this many failed calls in a row, `health` reports the reconciler degraded.
const DEGRADED_AFTER_FAILURES: u32 = 3;

/// What the reconciler knows about one account, for `health`.
#[derive(Default, Debug)]
struct AccountState {
    /// Reconcile calls that failed as a whole, in a row.
    failures: u32,
    /// The guest's account of entries that keep failing, or why the call failed.
    trouble: Option<String>,
    /// When a call may run again after failures.
    not_before: Option<std::time::Instant>,
}

/// The reconciler of one worker.
pub struct Reconciler {
    host: Arc<ProviderHost>,
    outbox: Outbox,
    accounts: Mutex<HashMap<String, AccountState>>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Reconciler {
    /// A reconciler for `host`; guest logs of its calls go to Paperclip through `outbox` (as
    /// `log` notifications without an invocation id).
    pub fn new(host: Arc<ProviderHost>, outbox: Outbox) -> Arc<Self> {
        Arc::new(Self {
            host,
            outbox,
            accounts: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, AccountState>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why `health` should say degraded: entries that keep failing, or reconcile calls that
    /// keep failing. None when all is well.
    pub fn health_problem(&self) -> Option<String> {
        let problems: Vec<String> = self
            .state()
            .values()
            .filter_map(|a| match a.failures {
                // The calls work, but the guest reports entries that keep failing.
                0 => a.trouble.clone(),
                // The calls themselves keep failing; one or two may be a blip.
                n if n >= DEGRADED_AFTER_FAILURES => a.trouble.clone(),
                _ => None,
            })
            .collect();
        (!problems.is_empty())
            .then(|| format!("the VM reconciler keeps failing: {}", problems.join("; ")))
    }

    /// Run until the task is aborted (the worker exits).
    pub async fn run(self: Arc<Self>) {
        let Some(ledger) = self.host.ledger() else {
            return;
        };
        let changed = ledger.changed();
        loop {
            // Registered before the ledger is read, so a write during the round is not missed.
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next = self.round().await;
            match next {
                None => notified.await,
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = notified => {}
                    }
                }
            }
            // A burst of writes (a create's own entries) is one wake-up, not many rounds.
            tokio::time::sleep(MIN_PAUSE).await;
        }
    }

    /// One pass over every account on disk; returns how long until something is due (none:
    /// nothing is, or nothing it holds a token for).
    async fn round(&self) -> Option<Duration> {
        let ledger = self.host.ledger()?;
        let scanned = {
            let ledger = ledger.clone();
            tokio::task::spawn_blocking(move || ledger.scan())
                .await
                .ok()?
        };
        let accounts = match scanned {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("the VM reconciler cannot read the ledger: {e}");
                return Some(FAIL_MAX);
            }
        };
        self.state()
            .retain(|key, _| accounts.iter().any(|a| &a.key == key));
        let mut next: Option<Duration> = None;
        let mut soonest = |d: Duration| next = Some(next.map_or(d, |n: Duration| n.min(d)));
        for account in &accounts {
            let Some((api_url, token)) = self.token_for(account) else {
                // No token in memory: the next Paperclip call on the account brings it.
                continue;
            };
            let now = wall_ms();
            let due_in = account
                .entries
                .iter()
                .map(|r| r.due_in_ms(now))
                .min()
                .unwrap_or(0);
            let wait_failures = self
                .state()
                .get(&account.key)
                .and_then(|s| s.not_before)
                .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                .unwrap_or_default();
            let wait = Duration::from_millis(due_in).max(wait_failures);
            if !wait.is_zero() {
                soonest(wait);
                continue;
            }
            if let Some(d) = self.reconcile(&account.key, api_url, token).await {
                soonest(d);
            }
        }
        next.map(|d| d.max(MIN_PAUSE))
    }

    /// The token for `account`: the one the ledger holds in memory, else `EXE_API_KEY` when its
    /// fingerprint (and the account's API URL) match the entries on disk.
    fn token_for(&self, account: &AccountEntries) -> Option<(String, String)> {
        let ledger = self.host.ledger()?;
        if let Some(held) = ledger.credentials().get(&account.key) {
            return Some(held);
        }
        let env = self.host.exe_api_key()?;
        let fp = token_fingerprint(env);
        (fp == account.token_fingerprint && account_key(&account.api_url, &fp) == account.key)
            .then(|| (account.api_url.clone(), env.to_string()))
    }

    /// One `reconcile` call for the account; returns when to come back.
    async fn reconcile(&self, key: &str, api_url: String, token: String) -> Option<Duration> {
        let request = ReconcileRequest {
            account: Account { api_url, token },
            budget_ms: CALL_BUDGET.as_millis() as u64,
        };
        let sink = self.outbox.sink(None);
        let result = self
            .host
            .call(sink, CALL_BUDGET, async |s, g| {
                g.call_reconcile(s, &request).await
            })
            .await;
        let outcome = match result {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(e)) => Err(crate::rpc::provider_error("reconcile", e.into()).message),
            Err(trap) => Err(format!(
                "the provider component failed: {}",
                trap.root_cause()
            )),
        };
        let mut states = self.state();
        let state = states.entry(key.to_string()).or_default();
        match outcome {
            Ok(report) => {
                if report.trouble != state.trouble {
                    if let Some(t) = &report.trouble {
                        tracing::error!("VM reconciler: {t}");
                    }
                }
                state.failures = 0;
                state.not_before = None;
                state.trouble = report.trouble;
                if report.pending == 0 {
                    if let Some(l) = self.host.ledger() {
                        l.credentials().forget(key);
                    }
                }
                report.next_in_ms.map(Duration::from_millis)
            }
            Err(message) => {
                state.failures += 1;
                let pause = FAIL_BASE
                    .saturating_mul(1 << (state.failures - 1).min(16))
                    .min(FAIL_MAX);
                state.not_before = Some(std::time::Instant::now() + pause);
                tracing::error!(
                    "VM reconciler call failed ({} in a row), next try in {} ms: {message}",
                    state.failures,
                    pause.as_millis()
                );
                state.trouble = Some(message);
                Some(pause)
            }
        }
    }
}
