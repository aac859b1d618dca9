//! No VM without an owner.
//!
//! A create whose outcome is unknown (no answer in time, a lost connection, a 5xx after the
//! request went out) may still produce its VM after the call has ended, and a delete may be
//! refused. Every such VM is written to the host's durable VM ledger (`paperclip:vm-ledger`):
//! a create is recorded before it is sent and settled when its VM is owned or deleted, a failed
//! delete is recorded when it fails. Every later lifecycle call on the same account first
//! deletes what the ledger still holds ([`Provider::sweep_orphans`]).

use super::{Provider, CLEANUP_TIMEOUT_MS};
use crate::api;
use crate::error::ProviderError;
use crate::host::{Account, Host, LedgerEntry, LedgerError, LedgerReason, LogLevel, Recorded};
use crate::time::{backoff_ms, Deadline};
use crate::vm::VmRecord;

/// How long one call may spend deleting recorded orphans before its own work.
pub const SWEEP_BUDGET_MS: u64 = 10_000;
/// How long after an uncertain create its VM may still appear: until then an entry whose VM is
/// not there (yet) stays in the ledger.
pub const APPEAR_HORIZON_MS: u64 = 10 * 60 * 1000;
/// First pause between look-ups while watching for the VM of an uncertain create.
pub const WATCH_POLL_BASE_MS: u64 = 500;
/// Longest pause between those look-ups.
pub const WATCH_POLL_MAX_MS: u64 = 2_000;
/// Added to a write-ahead hold for the host's grace period past the call's own deadline.
const HOST_GRACE_MS: u64 = 30_000;

/// One VM of the operator's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmListing {
    /// The VM name.
    pub name: String,
    /// exe.dev lists it now.
    pub present: bool,
    /// exe.dev's status, when present.
    pub status: Option<String>,
    /// Why the ledger records it (an orphan), if it does.
    pub orphan: Option<LedgerReason>,
}

/// True when a failed create may still have created its VM: no response (status 0) or a 5xx,
/// which only says the request went out.
pub fn create_outcome_unknown(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Api(a) if a.status == 0 || a.status >= 500)
}

/// The host's ledger for one account. Ledger trouble never fails a call: it is logged, and the
/// in-call reconciliation still runs.
pub struct Ledger<'h> {
    host: &'h dyn Host,
    account: Account,
}

impl<'h> Ledger<'h> {
    fn complain(&self, what: &str, name: Option<&str>, e: &LedgerError) {
        let level = match e {
            LedgerError::Unavailable(_) => LogLevel::Debug,
            _ => LogLevel::Warn,
        };
        let mut fields = vec![("error", e.to_string())];
        if let Some(n) = name {
            fields.push(("vmName", n.to_string()));
        }
        self.host.log(level, what, &fields);
    }

    /// Record `name` (replacing an entry of that name), due at once.
    pub fn put(&self, name: &str, reason: LedgerReason, hold_ms: u64) {
        self.put_entry(&LedgerEntry::new(name, reason, hold_ms));
    }

    /// Record `entry` (replacing its namesake); trouble is logged.
    pub fn put_entry(&self, entry: &LedgerEntry) {
        if let Err(e) = self.try_put(entry) {
            self.complain(
                "could not record the exe.dev VM in the host's ledger",
                Some(&entry.name),
                &e,
            );
        }
    }

    /// Record `entry`, telling the caller when the host could not (for a lease expiry, which
    /// must not be promised unless it is recorded).
    pub fn try_put(&self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        self.host.ledger_put(&self.account, entry)
    }

    /// Forget `name`: it is owned or gone.
    pub fn remove(&self, name: &str) {
        if let Err(e) = self.host.ledger_remove(&self.account, name) {
            self.complain(
                "could not clear the exe.dev VM from the host's ledger",
                Some(name),
                &e,
            );
        }
    }

    /// Every entry (none when the ledger cannot be read).
    pub fn list(&self) -> Vec<Recorded> {
        self.try_list().unwrap_or_else(|e| {
            self.complain("could not read the host's VM ledger", None, &e);
            Vec::new()
        })
    }

    /// Every entry, or why the ledger cannot be read.
    pub fn try_list(&self) -> Result<Vec<Recorded>, LedgerError> {
        self.host.ledger_list(&self.account)
    }

    /// The entry of `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<Recorded> {
        self.list().into_iter().find(|r| r.entry.name == name)
    }
}

/// Whether an uncertain create recorded at `since_ms` may still produce its VM at `now_wall_ms`.
pub fn may_still_appear(r: &Recorded, now_wall_ms: u64) -> bool {
    r.entry.reason == LedgerReason::UncertainCreate
        && now_wall_ms.saturating_sub(r.since_ms) < APPEAR_HORIZON_MS
}

impl<'h> Provider<'h> {
    /// The ledger of the config's account; none without an API key (then no API call runs).
    pub(crate) fn ledger(&self) -> Option<Ledger<'h>> {
        let token = self.config.resolve_api_key(self.host)?;
        Some(Ledger {
            host: self.host,
            account: Account {
                api_url: self.config.api_url.clone(),
                token,
            },
        })
    }

    /// The write-ahead hold of a create: the call may own the VM until its deadline, the
    /// watch and a cleanup after it, and the host's grace have passed.
    pub(crate) fn create_hold_ms(&self, deadline: Deadline) -> u64 {
        let cleanup = self.config.timeout_ms.min(CLEANUP_TIMEOUT_MS);
        deadline.remaining(self.host) + 2 * cleanup + HOST_GRACE_MS
    }

    /// After a create whose outcome is unknown: look the name up until its VM appears or the
    /// cleanup budget is spent. A VM that appears is returned (the caller adopts it, or deletes
    /// it when no time is left); one that does not is left recorded in the ledger for a later
    /// call to delete, and the create's error is returned.
    pub(crate) fn watch_uncertain_create(
        &self,
        name: &str,
        err: ProviderError,
    ) -> Result<VmRecord, ProviderError> {
        let watch = self.cleanup_deadline();
        let mut looked = 0u32;
        loop {
            looked += 1;
            match self.lookup_vm(name, watch) {
                Ok(Some(vm)) => {
                    self.log(
                        LogLevel::Warn,
                        "adopted exe.dev VM after an uncertain create",
                        &[
                            ("vmName", name.to_string()),
                            ("lookups", looked.to_string()),
                        ],
                    );
                    return Ok(vm);
                }
                Ok(None) => {}
                Err(e) => self.log(
                    LogLevel::Warn,
                    "exe.dev VM lookup after an uncertain create failed; still watching",
                    &[("vmName", name.to_string()), ("error", e.to_string())],
                ),
            }
            let left = watch.remaining(self.host);
            if left == 0 {
                break;
            }
            let pause = backoff_ms(WATCH_POLL_BASE_MS, WATCH_POLL_MAX_MS, looked);
            self.host.sleep_ms(pause.min(left));
        }
        if let Some(ledger) = self.ledger() {
            ledger.put(name, LedgerReason::UncertainCreate, 0);
        }
        self.log(
            LogLevel::Warn,
            "exe.dev VM did not appear within the cleanup budget; the host's ledger keeps it so a later call deletes it if it appears",
            &[("vmName", name.to_string()), ("lookups", looked.to_string())],
        );
        Err(err)
    }

    /// Settle the ledger after this call tried to delete `name`: deleted (or gone) clears the
    /// entry, a failure records it for a later call. `keep_if_gone` keeps an uncertain-create
    /// entry when `rm` found nothing (the VM may still appear).
    pub(crate) fn settle_delete(
        &self,
        name: &str,
        result: &Result<bool, ProviderError>,
        keep_if_gone: bool,
    ) {
        let Some(ledger) = self.ledger() else {
            return;
        };
        match result {
            Ok(true) => ledger.remove(name),
            Ok(false) if keep_if_gone => {}
            Ok(false) => ledger.remove(name),
            Err(_) if keep_if_gone => {}
            Err(_) => ledger.put(name, LedgerReason::FailedDelete, 0),
        }
    }

    /// Delete what the ledger holds for this account, except `except` (the call's own VM),
    /// entries a live call still holds and entries not yet due (a lease before its expiry, a
    /// retry the reconciler scheduled), within [`SWEEP_BUDGET_MS`]. An uncertain create whose
    /// VM is not there stays recorded until [`APPEAR_HORIZON_MS`] has passed.
    pub(crate) fn sweep_orphans(&self, except: Option<&str>) {
        let Some(ledger) = self.ledger() else {
            return;
        };
        let entries = ledger.list();
        if entries.is_empty() {
            return;
        }
        let budget = Deadline::after(self.host, SWEEP_BUDGET_MS.min(self.config.timeout_ms));
        let now_wall = self.host.wall_ms();
        for r in entries {
            let name = r.entry.name.as_str();
            if except == Some(name) || r.due_in_ms(now_wall) > 0 {
                continue;
            }
            if budget.remaining(self.host) == 0 {
                break;
            }
            match self.delete_vm(name, None, budget) {
                Ok(true) => {
                    self.log(
                        LogLevel::Warn,
                        "deleted an exe.dev VM that had no owner",
                        &[
                            ("vmName", name.to_string()),
                            ("reason", r.entry.reason.as_str().to_string()),
                        ],
                    );
                    ledger.remove(name);
                }
                Ok(false) => {
                    if !may_still_appear(&r, now_wall) {
                        ledger.remove(name);
                    }
                }
                Err(e) => self.log(
                    LogLevel::Warn,
                    "could not delete an exe.dev VM without an owner; it stays in the host's ledger",
                    &[("vmName", name.to_string()), ("error", e.to_string())],
                ),
            }
        }
    }

    /// The operator's listing: this provider's VMs (by name prefix) and the ledger's entries,
    /// the recorded ones marked as orphans. Deletes nothing.
    pub fn list_vms(&self) -> Result<Vec<VmListing>, ProviderError> {
        let api = self.api()?;
        let body = api.run(&api::ls_all_command(), self.deadline())?;
        let now_wall = self.host.wall_ms();
        // A lease before its expiry has an owner: it is recorded, but no orphan.
        let recorded: Vec<Recorded> = self
            .ledger()
            .map(|l| l.list())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.entry.reason != LedgerReason::LeaseExpiry || r.due_in_ms(now_wall) == 0)
            .collect();
        let orphan = |name: &str| {
            recorded
                .iter()
                .find(|r| r.entry.name == name)
                .map(|r| r.entry.reason)
        };
        let prefix = format!("{}-", self.config.name_prefix);
        let mut out: Vec<VmListing> = VmRecord::list_from_value(&body)
            .into_iter()
            .filter(|vm| vm.name.starts_with(&prefix) || orphan(&vm.name).is_some())
            .map(|vm| VmListing {
                orphan: orphan(&vm.name),
                name: vm.name,
                present: true,
                status: vm.status,
            })
            .collect();
        for r in &recorded {
            if !out.iter().any(|l| l.name == r.entry.name) {
                out.push(VmListing {
                    name: r.entry.name.clone(),
                    present: false,
                    status: None,
                    orphan: Some(r.entry.reason),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
