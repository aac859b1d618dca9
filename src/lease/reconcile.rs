//! The reconciler's work on one account, run by the worker in the background (the `reconcile`
//! export) with no Paperclip call: one `ls --json` per round shows which recorded VMs exist,
//! then each due entry is settled or scheduled again.
//!
//! - an uncertain create whose VM appeared is deleted; one not there yet is looked for again
//!   soon (1 s, doubling to 5 s) until `orphans::APPEAR_HORIZON_MS` has passed;
//! - a failed delete and an expired lease are deleted (gone counts as deleted);
//! - a failure schedules the entry later: never sooner than the API's `Retry-After`, with an
//!   exponential backoff for deletes; after [`TROUBLE_AFTER_ATTEMPTS`] failed tries each failure
//!   is logged as an error naming the VM, and the report carries it for the worker's `health`.
//!
//! Entries a live call holds, and entries not yet due, are left alone; the report says when the
//! next one is due, so the worker calls again then and not before.

use super::orphans::{may_still_appear, Ledger};
use super::Provider;
use crate::api;
use crate::config::{Config, MISSING_API_KEY};
use crate::error::ProviderError;
use crate::host::{Account, Host, LedgerEntry, LedgerReason, LogLevel, Recorded};
use crate::time::backoff_ms;
use crate::vm::VmRecord;

/// First pause between look-ups for the VM of an uncertain create.
pub const WATCH_BASE_MS: u64 = 1_000;
/// Longest pause between those look-ups: a VM that appears is deleted within this plus one
/// `rm`.
pub const WATCH_MAX_MS: u64 = 5_000;
/// First pause after a failed delete (or a failed look-up of a delete's VM).
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest pause between retries of a failing delete.
pub const RETRY_MAX_MS: u64 = 60_000;
/// From this many failed tries on, each further failure is an operator-visible error.
pub const TROUBLE_AFTER_ATTEMPTS: u32 = 5;

/// What one reconcile call did and what is left (plain mirror of the WIT `reconcile-report`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileReport {
    /// VMs deleted by this call.
    pub deleted: Vec<String>,
    /// Entries still recorded for the account.
    pub pending: u32,
    /// When the next call is due, in ms from now; none when nothing is left.
    pub next_in_ms: Option<u64>,
    /// The entries that keep failing, with their last error.
    pub trouble: Option<String>,
}

impl<'h> Provider<'h> {
    /// A provider for the reconciler: the account's API and token, and `budget_ms` as the call's
    /// deadline. Nothing else of an environment's config is needed to look up and delete VMs.
    pub fn for_account(
        host: &'h dyn Host,
        account: &Account,
        budget_ms: u64,
    ) -> Result<Provider<'h>, ProviderError> {
        let config = serde_json::json!({
            "apiKey": account.token,
            "apiUrl": account.api_url,
            "timeoutMs": budget_ms.max(1),
        });
        let config = Config::from_json(&config.to_string())?;
        if config.api_url != account.api_url {
            // The ledger is keyed by the URL as the guest normalised it; another spelling would
            // read another account's (empty) ledger.
            return Err(ProviderError::InvalidRequest(format!(
                "the ledger account's API URL {} is not in its normal form {}",
                account.api_url, config.api_url
            )));
        }
        Ok(Provider {
            host,
            configured_timeout_ms: config.timeout_ms,
            config,
            environment_id: "reconciler".to_string(),
        })
    }

    /// Work through the account's due ledger entries within the call's deadline.
    pub fn reconcile(&self) -> Result<ReconcileReport, ProviderError> {
        let ledger = self
            .ledger()
            .ok_or_else(|| ProviderError::InvalidConfig(MISSING_API_KEY.to_string()))?;
        let entries = ledger
            .try_list()
            .map_err(|e| ProviderError::Internal(format!("reading the VM ledger: {e}")))?;
        let now = self.host.wall_ms();
        let due: Vec<&Recorded> = entries.iter().filter(|r| r.due_in_ms(now) == 0).collect();
        let mut deleted = Vec::new();
        if !due.is_empty() {
            self.work_through(&ledger, &due, &mut deleted);
        }
        Ok(self.report(&ledger, deleted))
    }

    fn work_through(&self, ledger: &Ledger<'_>, due: &[&Recorded], deleted: &mut Vec<String>) {
        let deadline = self.deadline();
        let api = match self.api() {
            Ok(api) => api,
            Err(e) => {
                for r in due {
                    self.retry_later(ledger, r, &e);
                }
                return;
            }
        };
        // One listing for every due entry: the traffic per round does not grow with the ledger.
        // A plain list: an account's listing is short, and a hash set costs the component size.
        let present: Vec<String> = match api.run(&api::ls_all_command(), deadline) {
            Ok(body) => VmRecord::list_from_value(&body)
                .into_iter()
                .map(|vm| vm.name)
                .collect(),
            Err(e) => {
                for r in due {
                    self.retry_later(ledger, r, &e);
                }
                return;
            }
        };
        for r in due {
            // What is left stays due: the next call starts with it.
            if deadline.remaining(self.host) == 0 {
                break;
            }
            let name = r.entry.name.as_str();
            if !present.iter().any(|p| p == name) {
                self.not_present(ledger, r);
                continue;
            }
            match self.delete_vm(name, None, deadline) {
                Ok(_) => {
                    self.log(
                        LogLevel::Warn,
                        match r.entry.reason {
                            LedgerReason::LeaseExpiry => {
                                "deleted the exe.dev VM of an expired lease"
                            }
                            _ => "deleted an exe.dev VM that had no owner",
                        },
                        &[
                            ("vmName", name.to_string()),
                            ("reason", r.entry.reason.as_str().to_string()),
                            ("attempts", (r.entry.attempts + 1).to_string()),
                        ],
                    );
                    ledger.remove(name);
                    deleted.push(name.to_string());
                }
                Err(e) => self.retry_later(ledger, r, &e),
            }
        }
    }

    /// A due entry whose VM the listing does not show.
    fn not_present(&self, ledger: &Ledger<'_>, r: &Recorded) {
        let now = self.host.wall_ms();
        if may_still_appear(r, now) {
            let attempts = r.entry.attempts.saturating_add(1);
            ledger.put_entry(&LedgerEntry {
                due_at_ms: now + backoff_ms(WATCH_BASE_MS, WATCH_MAX_MS, attempts),
                attempts,
                last_error: None,
                hold_ms: 0,
                ..r.entry.clone()
            });
        } else {
            // Deleted already, or an uncertain create past the horizon: nothing left to do.
            self.log(
                LogLevel::Info,
                "exe.dev VM recorded in the ledger is not there; forgetting it",
                &[
                    ("vmName", r.entry.name.clone()),
                    ("reason", r.entry.reason.as_str().to_string()),
                ],
            );
            ledger.remove(&r.entry.name);
        }
    }

    /// A try failed: record why and when to try again.
    fn retry_later(&self, ledger: &Ledger<'_>, r: &Recorded, e: &ProviderError) {
        let attempts = r.entry.attempts.saturating_add(1);
        let retry_after = match e {
            ProviderError::Api(a) => a.retry_after_ms.unwrap_or(0),
            _ => 0,
        };
        let backoff = if r.entry.reason == LedgerReason::UncertainCreate {
            // Still watching for the VM: a failure must not stretch the look-ups past the
            // 15 s promise beyond what the API itself asks for.
            backoff_ms(WATCH_BASE_MS, WATCH_MAX_MS, attempts)
        } else {
            backoff_ms(RETRY_BASE_MS, RETRY_MAX_MS, attempts)
        };
        let wait = backoff.max(retry_after);
        let message = e.to_string();
        let level = if attempts >= TROUBLE_AFTER_ATTEMPTS {
            LogLevel::Error
        } else {
            LogLevel::Warn
        };
        self.log(
            level,
            "the reconciler could not settle an exe.dev VM; it tries again later",
            &[
                ("vmName", r.entry.name.clone()),
                ("reason", r.entry.reason.as_str().to_string()),
                ("attempts", attempts.to_string()),
                ("retryInMs", wait.to_string()),
                ("error", message.clone()),
            ],
        );
        ledger.put_entry(&LedgerEntry {
            due_at_ms: self.host.wall_ms() + wait,
            attempts,
            last_error: Some(message),
            hold_ms: 0,
            ..r.entry.clone()
        });
    }

    fn report(&self, ledger: &Ledger<'_>, deleted: Vec<String>) -> ReconcileReport {
        let left = ledger.list();
        let now = self.host.wall_ms();
        let trouble: Vec<String> = left
            .iter()
            .filter(|r| r.entry.attempts >= TROUBLE_AFTER_ATTEMPTS)
            .filter_map(|r| {
                let e = r.entry.last_error.as_deref()?;
                Some(format!(
                    "exe.dev VM {} ({}): {} tries failed, last: {e}",
                    r.entry.name,
                    r.entry.reason.as_str(),
                    r.entry.attempts
                ))
            })
            .collect();
        ReconcileReport {
            deleted,
            pending: left.len() as u32,
            next_in_ms: left.iter().map(|r| r.due_in_ms(now)).min(),
            trouble: (!trouble.is_empty()).then(|| trouble.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests;
