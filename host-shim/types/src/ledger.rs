//! The host's durable VM ledger: VMs that may exist without an owner, and leases with an expiry
//! (WIT `paperclip:vm-ledger/ledger`).

use std::fmt;
use std::str::FromStr;

/// The exe.dev account a ledger entry belongs to (WIT `account`).
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// The `/exec` API URL.
    pub api_url: String,
    /// The API token (a secret: `Debug` redacts it; the host stores only a fingerprint).
    pub token: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Account({:?}, [REDACTED])", self.api_url)
    }
}

/// Why a VM is in the ledger (WIT `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerReason {
    /// A create whose outcome is unknown: the VM may appear later.
    UncertainCreate,
    /// A release or destroy that could not delete the VM.
    FailedDelete,
    /// A lease with an expiry: its VM is deleted once the entry is due.
    LeaseExpiry,
}

impl LedgerReason {
    /// Every reason, in declaration order.
    pub const ALL: [LedgerReason; 3] = [
        LedgerReason::UncertainCreate,
        LedgerReason::FailedDelete,
        LedgerReason::LeaseExpiry,
    ];

    /// The one spelling of the reason: in ledger files, logs, listings and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerReason::UncertainCreate => "uncertain-create",
            LedgerReason::FailedDelete => "failed-delete",
            LedgerReason::LeaseExpiry => "lease-expiry",
        }
    }
}

impl fmt::Display for LedgerReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A ledger reason spelled some other way than [`LedgerReason::as_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM ledger reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for LedgerReason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LedgerReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

impl serde::Serialize for LedgerReason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for LedgerReason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One ledger entry as written (WIT `entry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The VM name.
    pub name: String,
    /// Why it is recorded.
    pub reason: LedgerReason,
    /// How long after the write a live call still owns the VM (0: nobody).
    pub hold_ms: u64,
    /// Wall-clock ms (Unix epoch) before which nobody acts on it: the next try, or a lease's
    /// expiry (0: at once).
    pub due_at_ms: u64,
    /// Tries made so far.
    pub attempts: u32,
    /// Why the last try failed (safe to show: the guest scrubs its errors).
    pub last_error: Option<String>,
}

impl LedgerEntry {
    /// A fresh entry: due at once, never tried.
    pub fn new(name: &str, reason: LedgerReason, hold_ms: u64) -> LedgerEntry {
        LedgerEntry {
            name: name.to_string(),
            reason,
            hold_ms,
            due_at_ms: 0,
            attempts: 0,
            last_error: None,
        }
    }
}

/// One ledger entry as read back (WIT `recorded`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The entry as last written.
    pub entry: LedgerEntry,
    /// Wall-clock milliseconds since it was written.
    pub age_ms: u64,
    /// Wall-clock ms (Unix epoch) when the VM was first recorded.
    pub since_ms: u64,
}

impl Recorded {
    /// A live call still owns the VM.
    pub fn held(&self) -> bool {
        self.age_ms < self.entry.hold_ms
    }

    /// Milliseconds until the entry may be acted on at wall-clock `now_wall_ms` (0: due): the
    /// end of a live call's hold or the entry's `due_at_ms`, whichever is later.
    pub fn due_in_ms(&self, now_wall_ms: u64) -> u64 {
        let hold = self.entry.hold_ms.saturating_sub(self.age_ms);
        hold.max(self.entry.due_at_ms.saturating_sub(now_wall_ms))
    }
}

/// Why the host could not use its ledger (WIT `ledger-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The host keeps no ledger (it was given no state directory).
    #[error("the host keeps no VM ledger: {0}")]
    Unavailable(String),
    /// The request is malformed.
    #[error("invalid VM ledger request: {0}")]
    InvalidRequest(String),
    /// Reading or writing the host's state failed.
    #[error("VM ledger I/O failed: {0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_one_spelling_both_ways() {
        for r in LedgerReason::ALL {
            assert_eq!(r.as_str().parse::<LedgerReason>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(
            "Uncertain-Create".parse::<LedgerReason>(),
            Err(UnknownReason("Uncertain-Create".into()))
        );
    }

    #[test]
    fn due_is_the_later_of_hold_and_schedule() {
        let mut e = LedgerEntry::new("vm", LedgerReason::FailedDelete, 5_000);
        e.due_at_ms = 10_000;
        let r = Recorded {
            entry: e,
            age_ms: 1_000,
            since_ms: 0,
        };
        assert!(r.held());
        assert_eq!(r.due_in_ms(9_000), 4_000);
        assert_eq!(r.due_in_ms(1_000), 9_000);
    }

    #[test]
    fn the_token_never_prints() {
        let a = Account {
            api_url: "https://exe.dev/exec".into(),
            token: "secret-token".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
    }
}
