//! Lease expiry. exe.dev VMs have none, so the provider enforces Paperclip's
//! `requestedExpiresAt`: the lease's deadline is written to the host's durable VM ledger
//! (reason `lease-expiry`, due at the deadline) before the lease is handed out, and whoever finds
//! it due deletes the VM: the worker's reconciler, a later call on the account, or a resume of
//! the lease, which then answers `expired`.

use super::orphans::Ledger;
use super::Provider;
use crate::error::ProviderError;
use crate::host::{LedgerEntry, LedgerReason, LogLevel};
use crate::timestamp::{format_iso8601_ms, parse_iso8601_ms};
use serde_json::{Map, Value};

/// A lease's expiry: the instant, and the `expiresAt` text handed to Paperclip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// Wall-clock ms since the Unix epoch.
    pub at_ms: u64,
    /// The same instant as ISO-8601 in UTC, with milliseconds.
    pub text: String,
}

impl Expiry {
    /// From Unix milliseconds.
    pub fn at(at_ms: u64) -> Expiry {
        Expiry {
            at_ms,
            text: format_iso8601_ms(at_ms),
        }
    }
}

impl Provider<'_> {
    /// Check `requestedExpiresAt` before anything is created: an ISO-8601 time with an offset,
    /// still in the future. The lease's expiry is exactly that instant (so at or before it).
    pub(crate) fn requested_expiry(&self, requested: &str) -> Result<Expiry, ProviderError> {
        let at_ms = parse_iso8601_ms(requested).ok_or_else(|| {
            ProviderError::InvalidRequest(format!(
                "requestedExpiresAt {requested:?} is not an ISO-8601 time with a UTC offset (e.g. 2026-01-31T12:00:00.000Z)"
            ))
        })?;
        if at_ms <= self.host.wall_ms() {
            return Err(ProviderError::InvalidRequest(format!(
                "requestedExpiresAt {requested} has already passed"
            )));
        }
        Ok(Expiry::at(at_ms))
    }

    /// Record the lease's expiry durably; the lease may be handed out only if this succeeded.
    pub(crate) fn record_expiry(&self, name: &str, expiry: &Expiry) -> Result<(), ProviderError> {
        let ledger = self.ledger().ok_or_else(|| no_ledger(name, "no API key"))?;
        let entry = LedgerEntry {
            due_at_ms: expiry.at_ms,
            ..LedgerEntry::new(name, LedgerReason::LeaseExpiry, 0)
        };
        ledger
            .try_put(&entry)
            .map_err(|e| no_ledger(name, &e.to_string()))
    }

    /// The expiry of lease `name`: the ledger's `lease-expiry` entry, else the lease metadata's
    /// `expiresAt` (re-recorded in the ledger when it is missing there, e.g. after the state
    /// directory was lost). None: the lease has no expiry.
    pub(crate) fn lease_expiry(&self, name: &str, meta: &Map<String, Value>) -> Option<Expiry> {
        let ledger = self.ledger();
        let recorded = ledger
            .as_ref()
            .and_then(|l| l.get(name))
            .filter(|r| r.entry.reason == LedgerReason::LeaseExpiry);
        if let Some(r) = recorded {
            return Some(Expiry::at(r.entry.due_at_ms));
        }
        let from_meta = meta
            .get("expiresAt")
            .and_then(Value::as_str)
            .and_then(parse_iso8601_ms)
            .map(Expiry::at)?;
        if let Some(l) = &ledger {
            rerecord(l, name, &from_meta);
        }
        Some(from_meta)
    }

    /// Resume of a lease whose expiry has passed: delete its VM (a failure stays recorded for the
    /// reconciler) and report whether it expired.
    pub(crate) fn expired_on_resume(&self, name: &str, expiry: &Expiry) -> bool {
        if self.host.wall_ms() < expiry.at_ms {
            return false;
        }
        self.log(
            LogLevel::Info,
            "resumed lease has expired; deleting its exe.dev VM",
            &[
                ("vmName", name.to_string()),
                ("expiresAt", expiry.text.clone()),
            ],
        );
        let deleted = self.delete_vm(name, None, self.cleanup_deadline());
        if let Err(e) = &deleted {
            self.log(
                LogLevel::Warn,
                "could not delete the exe.dev VM of an expired lease; the reconciler retries",
                &[("vmName", name.to_string()), ("error", e.to_string())],
            );
        }
        self.settle_delete(name, &deleted, false);
        true
    }
}

fn rerecord(ledger: &Ledger<'_>, name: &str, expiry: &Expiry) {
    ledger.put_entry(&LedgerEntry {
        due_at_ms: expiry.at_ms,
        ..LedgerEntry::new(name, LedgerReason::LeaseExpiry, 0)
    });
}

fn no_ledger(name: &str, why: &str) -> ProviderError {
    ProviderError::InvalidRequest(format!(
        "requestedExpiresAt cannot be honoured for exe.dev VM {name}: exe.dev has no VM expiry and the host could not record the deadline in its VM ledger ({why})"
    ))
}
