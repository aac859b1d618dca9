//! The reconciler's decisions and lease expiry, against the fake host.

use super::*;
use crate::host::{Account, LedgerEntry, LedgerReason, LogLevel};
use crate::lease::{CallContext, Provider};
use crate::testing::{FakeHost, WALL_EPOCH_MS};
use crate::timestamp::format_iso8601_ms;
use serde_json::json;

const URL: &str = "https://exe.dev/exec";
const NEW_OK: &str = r#"{"vm_name":"paperclip-env1-run1","ssh_dest":"paperclip-env1-run1.exe.xyz","status":"running"}"#;
const PREPARED: &[u8] =
    b"__PAPERCLIP_LEASE__\n/home/exedev\nbash\n/home/exedev/paperclip-workspace\n";

fn account() -> Account {
    Account {
        api_url: URL.into(),
        token: "tok".into(),
    }
}

fn record(host: &FakeHost, entry: LedgerEntry) {
    use crate::host::Host;
    host.ledger_put(&account(), &entry).unwrap();
}

fn reconcile(host: &FakeHost) -> ReconcileReport {
    Provider::for_account(host, &account(), 20_000)
        .unwrap()
        .reconcile()
        .unwrap()
}

fn entry(host: &FakeHost, name: &str) -> Option<LedgerEntry> {
    host.ledger
        .borrow()
        .iter()
        .find(|(_, _, e, _, _)| e.name == name)
        .map(|(_, _, e, _, _)| e.clone())
}

fn listing(names: &[&str]) -> String {
    let vms: Vec<_> = names.iter().map(|n| json!({"vm_name": n})).collect();
    json!({ "vms": vms }).to_string()
}

fn wall(host: &FakeHost) -> u64 {
    WALL_EPOCH_MS + host.now.get()
}

#[test]
fn an_empty_ledger_costs_no_api_call() {
    let host = FakeHost::new();
    let r = reconcile(&host);
    assert_eq!(r, ReconcileReport::default());
    assert!(host.bodies().is_empty());
}

#[test]
fn one_listing_per_round_then_the_present_vms_are_deleted_and_the_rest_scheduled() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry::new("paperclip-appeared", LedgerReason::UncertainCreate, 0),
    );
    record(
        &host,
        LedgerEntry::new("paperclip-notyet", LedgerReason::UncertainCreate, 0),
    );
    record(
        &host,
        LedgerEntry::new("paperclip-refused", LedgerReason::FailedDelete, 0),
    );
    record(
        &host,
        LedgerEntry::new("paperclip-gone", LedgerReason::FailedDelete, 0),
    );
    record(
        &host,
        LedgerEntry::new("paperclip-held", LedgerReason::UncertainCreate, 60_000),
    );
    host.http(
        200,
        &listing(&["paperclip-appeared", "paperclip-refused", "other-vm"]),
    )
    .http(200, "{}")
    .http(200, "{}");
    let r = reconcile(&host);
    assert_eq!(
        host.bodies(),
        [
            "ls --json",
            "rm --json 'paperclip-appeared'",
            "rm --json 'paperclip-refused'"
        ]
    );
    assert_eq!(r.deleted, ["paperclip-appeared", "paperclip-refused"]);
    // Not there yet: looked for again in a second. Gone after a failed delete: settled.
    // Held by a live call: untouched, due when the hold ends.
    assert_eq!(host.ledger_names(), ["paperclip-held", "paperclip-notyet"]);
    let notyet = entry(&host, "paperclip-notyet").unwrap();
    assert_eq!((notyet.attempts, notyet.last_error), (1, None));
    // Due a second after it was looked for (one `rm` of 10 ms ago): the next round.
    assert_eq!(notyet.due_at_ms, wall(&host) - 10 + WATCH_BASE_MS);
    assert_eq!(r.pending, 2);
    assert_eq!(r.next_in_ms, Some(WATCH_BASE_MS - 10));
    assert_eq!(r.trouble, None);
    host.assert_drained();
}

#[test]
fn entries_not_due_wait_and_the_report_says_until_when() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry {
            due_at_ms: wall(&host) + 7_000,
            ..LedgerEntry::new("paperclip-lease", LedgerReason::LeaseExpiry, 0)
        },
    );
    let r = reconcile(&host);
    assert!(host.bodies().is_empty());
    assert_eq!((r.pending, r.next_in_ms), (1, Some(7_000)));
    // Once due, the expired lease's VM is deleted.
    host.now.set(host.now.get() + 7_000);
    host.http(200, &listing(&["paperclip-lease"]))
        .http(200, "{}");
    let r = reconcile(&host);
    assert_eq!(r.deleted, ["paperclip-lease"]);
    assert_eq!((r.pending, r.next_in_ms), (0, None));
    assert!(host.ledger_names().is_empty());
}

#[test]
fn failed_deletes_back_off_and_become_trouble_with_the_vm_name() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry::new("paperclip-stuck", LedgerReason::FailedDelete, 0),
    );
    let mut waits = Vec::new();
    for _ in 0..TROUBLE_AFTER_ATTEMPTS {
        host.http(200, &listing(&["paperclip-stuck"])).http(
            403,
            r#"{"error":"command not allowed by token permissions"}"#,
        );
        let r = reconcile(&host);
        assert!(r.deleted.is_empty());
        let wait = r.next_in_ms.unwrap();
        waits.push(wait);
        host.now.set(host.now.get() + wait);
    }
    assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 16_000]);
    let e = entry(&host, "paperclip-stuck").unwrap();
    assert_eq!(e.attempts, TROUBLE_AFTER_ATTEMPTS);
    assert!(e.last_error.as_deref().unwrap().contains("403"), "{e:?}");
    // The fifth failure is an error naming the VM, and the report carries it for `health`.
    let logs = host.logs.borrow();
    let (level, _, fields) = logs
        .iter()
        .rev()
        .find(|(_, m, _)| m.contains("could not settle"))
        .unwrap();
    assert_eq!(*level, LogLevel::Error);
    assert!(fields.contains(&("vmName".into(), "paperclip-stuck".into())));
    drop(logs);
    host.http(200, &listing(&["paperclip-stuck"])).http(
        403,
        r#"{"error":"command not allowed by token permissions"}"#,
    );
    let r = reconcile(&host);
    let trouble = r.trouble.unwrap();
    assert!(
        trouble.contains("paperclip-stuck") && trouble.contains("6 tries"),
        "{trouble}"
    );
    assert!(!host.log_text().contains("tok\""), "{}", host.log_text());
    // And once `rm` works again, it is deleted.
    host.now.set(host.now.get() + r.next_in_ms.unwrap());
    host.http(200, &listing(&["paperclip-stuck"]))
        .http(200, "{}");
    assert_eq!(reconcile(&host).deleted, ["paperclip-stuck"]);
    assert!(host.ledger_names().is_empty());
}

#[test]
fn retry_after_is_honoured_in_the_call_and_beyond_it() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry::new("paperclip-late", LedgerReason::UncertainCreate, 0),
    );
    // A 429 with Retry-After 3 s: the listing is asked again no sooner than that.
    host.http_retry_after(429, r#"{"error":"rate limit exceeded"}"#, 3_000)
        .http(200, &listing(&["paperclip-late"]))
        .http(200, "{}");
    let r = reconcile(&host);
    assert_eq!(r.deleted, ["paperclip-late"]);
    assert_eq!(*host.sleeps.borrow(), [3_000]);
    // A Retry-After longer than the call's budget schedules the next round after it.
    record(
        &host,
        LedgerEntry::new("paperclip-later", LedgerReason::UncertainCreate, 0),
    );
    host.http_retry_after(429, r#"{"error":"rate limit exceeded"}"#, 45_000);
    let r = reconcile(&host);
    assert!(r.deleted.is_empty());
    assert_eq!(r.next_in_ms, Some(45_000));
    let e = entry(&host, "paperclip-later").unwrap();
    assert!(e.last_error.unwrap().contains("429"));
}

#[test]
fn an_uncertain_create_is_forgotten_once_it_can_no_longer_appear() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry::new("paperclip-never", LedgerReason::UncertainCreate, 0),
    );
    host.now
        .set(host.now.get() + crate::lease::orphans::APPEAR_HORIZON_MS);
    host.http(200, &listing(&[]));
    let r = reconcile(&host);
    assert_eq!((r.pending, r.next_in_ms), (0, None));
}

#[test]
fn the_reconciler_needs_the_ledgers_own_url_spelling() {
    let host = FakeHost::new();
    let odd = Account {
        api_url: "https://exe.dev".into(),
        token: "tok".into(),
    };
    assert!(Provider::for_account(&host, &odd, 1_000).is_err());
}

fn acquire_ctx() -> CallContext {
    CallContext {
        config: json!({"apiKey": "tok"}).to_string(),
        environment_id: "env-1".into(),
        company_id: None,
        deadline_ms: 0,
    }
}

#[test]
fn a_lease_with_requested_expiry_is_recorded_and_returned_with_it() {
    let host = FakeHost::new();
    let until = format_iso8601_ms(wall(&host) + 300_000);
    host.http(200, NEW_OK).ssh(Some(0), PREPARED, b"");
    let p = Provider::new(&host, &acquire_ctx()).unwrap();
    let lease = p.acquire_until("run-1", None, Some(&until)).unwrap();
    assert_eq!(lease.expires_at.as_deref(), Some(until.as_str()));
    assert_eq!(lease.metadata["expiresAt"], json!(until));
    let e = entry(&host, "paperclip-env1-run1").unwrap();
    assert_eq!(e.reason, LedgerReason::LeaseExpiry);
    assert_eq!(
        e.due_at_ms,
        crate::timestamp::parse_iso8601_ms(&until).unwrap()
    );

    // Resume before the expiry: the lease, still with it.
    host.http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let again = p.resume("paperclip-env1-run1", &lease.metadata).unwrap();
    assert_eq!(again.expires_at.as_deref(), Some(until.as_str()));

    // After it: the VM is deleted and the answer is `expired`.
    host.now.set(host.now.get() + 300_000);
    host.http(200, "{}");
    let gone = p.resume("paperclip-env1-run1", &lease.metadata).unwrap();
    assert_eq!(gone.provider_lease_id, None);
    assert_eq!(gone.metadata["expired"], json!(true));
    assert_eq!(
        host.bodies().last().unwrap(),
        "rm --json 'paperclip-env1-run1'"
    );
    assert!(host.ledger_names().is_empty());
    host.assert_drained();
}

#[test]
fn a_requested_expiry_that_is_malformed_or_past_creates_nothing() {
    let host = FakeHost::new();
    let p = Provider::new(&host, &acquire_ctx()).unwrap();
    let past = format_iso8601_ms(wall(&host) - 1);
    for bad in ["tomorrow", "2026-12-01T10:00:00", past.as_str()] {
        let e = p.acquire_until("run-1", None, Some(bad)).unwrap_err();
        assert!(
            matches!(e, ProviderError::InvalidRequest(_)),
            "{bad}: {e:?}"
        );
    }
    assert!(host.bodies().is_empty());
}

#[test]
fn without_a_ledger_an_expiry_is_refused_and_the_vm_deleted() {
    let host = FakeHost::new();
    *host.ledger_error.borrow_mut() = Some(crate::host::LedgerError::Unavailable("none".into()));
    let until = format_iso8601_ms(wall(&host) + 300_000);
    host.http(200, NEW_OK)
        .ssh(Some(0), PREPARED, b"")
        .http(200, "{}");
    let p = Provider::new(&host, &acquire_ctx()).unwrap();
    let e = p.acquire_until("run-1", None, Some(&until)).unwrap_err();
    assert!(
        e.to_string()
            .contains("requestedExpiresAt cannot be honoured"),
        "{e}"
    );
    assert_eq!(
        host.bodies().last().unwrap(),
        "rm --json 'paperclip-env1-run1'"
    );
    host.assert_drained();
}

#[test]
fn an_in_call_sweep_leaves_a_lease_before_its_expiry_alone() {
    let host = FakeHost::new();
    record(
        &host,
        LedgerEntry {
            due_at_ms: wall(&host) + 60_000,
            ..LedgerEntry::new("paperclip-leased", LedgerReason::LeaseExpiry, 0)
        },
    );
    host.http(200, NEW_OK).ssh(Some(0), PREPARED, b"");
    Provider::new(&host, &acquire_ctx())
        .unwrap()
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(host.bodies().len(), 1, "{:?}", host.bodies());
    assert_eq!(host.ledger_names(), ["paperclip-leased"]);
}
