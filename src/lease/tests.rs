use super::*;
use crate::api;
use crate::error::ApiError;
use crate::host::{Connected, HostKeyPolicy, HttpError, LedgerReason};
use crate::testing::FakeHost;
use serde_json::json;

const NEW_OK: &str = r#"{"vm_name":"paperclip-env1-run1","ssh_dest":"paperclip-env1-run1.exe.xyz","https_url":"https://paperclip-env1-run1.exe.xyz","status":"running"}"#;
const PREPARED: &[u8] =
    b"__PAPERCLIP_LEASE__\n/home/exedev\nbash\n/home/exedev/paperclip-workspace\n";

fn ctx(config: Value) -> CallContext {
    CallContext {
        config: config.to_string(),
        environment_id: "env-1".into(),
        company_id: Some("co".into()),
        deadline_ms: 0,
    }
}

fn provider(host: &FakeHost, config: Value) -> Provider<'_> {
    Provider::new(host, &ctx(config)).unwrap()
}

fn default_cfg() -> Value {
    json!({"apiKey": "tok"})
}

fn new_body(config: &Value, vm: &str) -> String {
    api::create_command(&Config::from_json(&config.to_string()).unwrap(), vm)
        .body()
        .to_string()
}

fn refused() -> &'static [u8] {
    b"ssh: connect to host paperclip-env1-run1.exe.xyz port 22: Connection refused\r\n"
}

#[test]
fn acquire_creates_and_prepares_in_one_round_trip() {
    let host = FakeHost::new();
    host.http(200, NEW_OK).ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        host.bodies(),
        vec![new_body(&default_cfg(), "paperclip-env1-run1")]
    );
    assert!(host.bodies()[0]
        .starts_with("new --json --no-email --name='paperclip-env1-run1' --setup-script='"));
    assert_eq!(host.commands(), vec![remote::prepare_command(None)]);
    let req = &host.ssh_calls.borrow()[0];
    assert_eq!(
        req.target,
        SshTarget {
            host: "paperclip-env1-run1.exe.xyz".into(),
            port: 22,
            user: None,
            identity: Identity::Agent,
            host_key_policy: HostKeyPolicy::AcceptNew,
        }
    );
    assert_eq!(req.stdin, None);
    assert_eq!(
        lease.provider_lease_id.as_deref(),
        Some("paperclip-env1-run1")
    );
    assert_eq!(
        Value::Object(lease.metadata),
        json!({
            "provider": "exe-dev",
            "vmName": "paperclip-env1-run1",
            "sshDest": "paperclip-env1-run1.exe.xyz",
            "httpsUrl": "https://paperclip-env1-run1.exe.xyz",
            "shellCommand": "bash",
            "remoteCwd": "/home/exedev/paperclip-workspace",
            "timeoutMs": 300000,
            "reuseLease": false,
            "resumedLease": false,
            "sshHost": "paperclip-env1-run1.exe.xyz",
            "sshPort": 22
        })
    );
    assert_eq!(lease.expires_at, None);
    host.assert_drained();
}

#[test]
fn acquire_with_requested_cwd_and_key_material() {
    let host = FakeHost::new();
    host.http(200, NEW_OK).ssh(
        Some(0),
        b"__PAPERCLIP_LEASE__\n/home/exedev\nsh\n/work/x\n",
        b"",
    );
    let cfg = json!({"apiKey": "tok", "sshPrivateKey": "0a1b2c3d-0000-4000-8000-123456789abc", "strictHostKeyChecking": "yes", "sshPort": 2200});
    let lease = provider(&host, cfg)
        .acquire("run-1", Some("/work/x"))
        .unwrap();
    assert_eq!(
        host.commands(),
        vec![remote::prepare_command(Some("/work/x"))]
    );
    let t = host.ssh_calls.borrow()[0].target.clone();
    assert_eq!(
        t.identity,
        Identity::KeyMaterial("0a1b2c3d-0000-4000-8000-123456789abc".into())
    );
    assert_eq!(t.host_key_policy, HostKeyPolicy::Yes);
    assert_eq!(t.port, 2200);
    assert_eq!(lease.metadata["remoteCwd"], json!("/work/x"));
    assert_eq!(lease.metadata["shellCommand"], json!("sh"));
    assert!(!Value::Object(lease.metadata)
        .to_string()
        .contains("0a1b2c3d"));
}

#[test]
fn create_500_then_lookup_adopts() {
    let host = FakeHost::new();
    host.http(500, "upstream boom")
        .http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        host.bodies(),
        vec![
            new_body(&default_cfg(), "paperclip-env1-run1"),
            "ls --json 'paperclip-env1-run1'".to_string()
        ]
    );
    assert_eq!(
        lease.provider_lease_id.as_deref(),
        Some("paperclip-env1-run1")
    );
    host.assert_drained();
}

#[test]
fn create_timeout_then_lookup_adopts() {
    let host = FakeHost::new();
    host.http_err(HttpError::Timeout)
        .http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(host.bodies().len(), 2);
    assert_eq!(host.bodies()[1], "ls --json 'paperclip-env1-run1'");
    assert_eq!(host.http_calls.borrow()[0].timeout_ms, 29_000);
    assert_eq!(
        lease.provider_lease_id.as_deref(),
        Some("paperclip-env1-run1")
    );
}

#[test]
fn create_failure_with_no_vm_returns_the_create_error_and_creates_nothing_else() {
    let host = FakeHost::new();
    host.http(500, "upstream boom")
        .http_when("ls", 200, "{\"vms\":[]}");
    let err = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Api(ApiError {
            status: 500,
            command: api::create_command(
                &Config::from_json(&default_cfg().to_string()).unwrap(),
                "paperclip-env1-run1"
            )
            .redacted,
            message: "upstream boom".into(),
            hint: Some("exe.dev had a server-side problem; retry later".into()),
            retry_after_ms: None,
        })
    );
    let bodies = host.bodies();
    assert_eq!(
        bodies.iter().filter(|b| b.starts_with("new ")).count(),
        1,
        "new never repeated"
    );
    // A 500 leaves the outcome unknown: the name is watched for the whole cleanup budget...
    assert!(bodies.len() > 2, "{bodies:?}");
    assert!(bodies[1..]
        .iter()
        .all(|b| b == "ls --json 'paperclip-env1-run1'"));
    let waited: u64 = host.sleeps.borrow().iter().sum();
    assert!(
        waited >= CLEANUP_TIMEOUT_MS - orphans::WATCH_POLL_MAX_MS,
        "{waited}"
    );
    assert!(host.ssh_calls.borrow().is_empty());
    // ...and then left in the ledger, owned by nobody, for a later call to delete.
    let ledger = host.ledger.borrow();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].2.name, "paperclip-env1-run1");
    assert_eq!(ledger[0].2.reason, LedgerReason::UncertainCreate);
    assert_eq!(ledger[0].2.hold_ms, 0);
    assert!(!format!("{:?}", host.ledger_names()).contains("tok"));
}

#[test]
fn a_vm_that_appears_while_watched_is_adopted_and_leaves_the_ledger() {
    let host = FakeHost::new();
    host.http_err(HttpError::Connect("reset".into()))
        .http(200, "{\"vms\":[]}")
        .http(200, "{\"vms\":[]}")
        .http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        lease.provider_lease_id.as_deref(),
        Some("paperclip-env1-run1")
    );
    assert_eq!(host.bodies().len(), 4);
    assert_eq!(*host.sleeps.borrow(), [500, 1000]);
    assert!(host.ledger.borrow().is_empty());
    host.assert_drained();
}

#[test]
fn a_refused_create_is_looked_up_once_and_not_recorded() {
    let host = FakeHost::new();
    host.http(422, "{\"error\":\"invalid image\"}")
        .http(200, "{\"vms\":[]}");
    let err = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap_err();
    assert!(matches!(err, ProviderError::Api(e) if e.status == 422));
    assert_eq!(host.bodies().len(), 2);
    assert!(host.ledger.borrow().is_empty());
    host.assert_drained();
}

fn recorded(host: &FakeHost, name: &str, reason: LedgerReason, hold_ms: u64) {
    host.ledger.borrow_mut().push((
        "https://exe.dev/exec".into(),
        "tok".into(),
        crate::host::LedgerEntry::new(name, reason, hold_ms),
        host.now.get(),
        crate::host::Host::wall_ms(host),
    ));
}

#[test]
fn later_calls_delete_recorded_orphans_first() {
    let host = FakeHost::new();
    recorded(&host, "paperclip-gone", LedgerReason::FailedDelete, 0);
    recorded(&host, "paperclip-late", LedgerReason::UncertainCreate, 0);
    recorded(&host, "paperclip-there", LedgerReason::UncertainCreate, 0);
    recorded(
        &host,
        "paperclip-held",
        LedgerReason::UncertainCreate,
        60_000,
    );
    host.http(422, "{\"error\":\"vm not found\"}")
        .http(422, "{\"error\":\"vm not found\"}")
        .http(200, "{}")
        .http(200, NEW_OK)
        .ssh(Some(0), PREPARED, b"");
    provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        host.bodies()[..3],
        [
            "rm --json 'paperclip-gone'",
            "rm --json 'paperclip-late'",
            "rm --json 'paperclip-there'"
        ]
    );
    // Gone after a failed delete: settled. Not there (yet) after an uncertain create: kept
    // until it may no longer appear. Deleted: settled. Held by a live call: untouched.
    assert_eq!(host.ledger_names(), ["paperclip-late", "paperclip-held"]);
    host.assert_drained();

    // Past the horizon, a VM that never appeared is forgotten.
    host.now.set(host.now.get() + orphans::APPEAR_HORIZON_MS);
    host.http(422, "{\"error\":\"vm not found\"}")
        .http(422, "{\"error\":\"vm not found\"}")
        .http(200, "{\"vms\":[]}");
    provider(&host, default_cfg())
        .resume("paperclip-x", &Map::new())
        .unwrap();
    assert!(host.ledger.borrow().is_empty());
}

#[test]
fn a_failed_destroy_is_recorded_and_a_later_one_settles_it() {
    let host = FakeHost::new();
    host.http(
        403,
        "{\"error\":\"command not allowed by token permissions\"}",
    );
    let p = provider(&host, default_cfg());
    p.destroy(Some("paperclip-env1-run1"), &Map::new())
        .unwrap_err();
    let ledger = host.ledger.borrow().clone();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].2.reason, LedgerReason::FailedDelete);
    host.http(200, "{}");
    p.destroy(Some("paperclip-env1-run1"), &Map::new()).unwrap();
    assert!(host.ledger.borrow().is_empty());
    host.assert_drained();
}

#[test]
fn without_a_ledger_the_lifecycle_still_works() {
    let host = FakeHost::new();
    *host.ledger_error.borrow_mut() = Some(crate::host::LedgerError::Unavailable("none".into()));
    host.http(200, NEW_OK).ssh(Some(0), PREPARED, b"");
    provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    host.assert_drained();
}

#[test]
fn list_vms_marks_recorded_orphans_and_skips_foreign_vms() {
    let host = FakeHost::new();
    recorded(
        &host,
        "paperclip-env1-run9",
        LedgerReason::UncertainCreate,
        0,
    );
    recorded(&host, "paperclip-never", LedgerReason::UncertainCreate, 0);
    host.http(
        200,
        r#"{"vms":[{"vm_name":"paperclip-env1-run1","status":"running"},{"vm_name":"paperclip-env1-run9","status":"running"},{"vm_name":"other-vm"}]}"#,
    );
    let list = provider(&host, default_cfg()).list_vms().unwrap();
    assert_eq!(host.bodies(), ["ls --json"]);
    let got: Vec<_> = list
        .iter()
        .map(|l| (l.name.as_str(), l.present, l.orphan))
        .collect();
    assert_eq!(
        got,
        [
            ("paperclip-env1-run1", true, None),
            (
                "paperclip-env1-run9",
                true,
                Some(LedgerReason::UncertainCreate)
            ),
            (
                "paperclip-never",
                false,
                Some(LedgerReason::UncertainCreate)
            ),
        ]
    );
    // Listing deletes nothing.
    assert_eq!(host.ledger_names().len(), 2);
}

#[test]
fn create_ok_without_metadata_falls_back_to_lookup() {
    let host = FakeHost::new();
    host.http(200, "{}")
        .http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        lease.metadata["httpsUrl"],
        json!("https://paperclip-env1-run1.exe.xyz")
    );
    assert_eq!(host.bodies()[1], "ls --json 'paperclip-env1-run1'");

    let host = FakeHost::new();
    host.http(200, "{}")
        .http(200, "{\"vms\":[]}")
        .http(422, "{\"error\":\"vm not found\"}");
    let err = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap_err();
    assert_eq!(host.bodies()[2], "rm --json 'paperclip-env1-run1'");
    host.assert_drained();
    assert!(
        matches!(&err, ProviderError::Api(e) if e.message == "exe.dev did not return VM metadata for paperclip-env1-run1."),
        "{err:?}"
    );
}

#[test]
fn fatal_ssh_failure_deletes_the_vm() {
    let host = FakeHost::new();
    host.http(
        200,
        r#"{"vm_name":"paperclip-env-run","ssh_dest":"paperclip-env-run.exe.xyz"}"#,
    )
    .ssh(
        Some(255),
        b"",
        b"exedev@paperclip-env-run.exe.xyz: Permission denied (publickey).\r\n",
    )
    .http(200, "{}");
    let p = Provider::new(
        &host,
        &CallContext {
            config: default_cfg().to_string(),
            environment_id: "env".into(),
            company_id: None,
            deadline_ms: 0,
        },
    )
    .unwrap();
    let err = p.acquire("run", None).unwrap_err();
    assert_eq!(
        err,
        ProviderError::Ssh("Failed to inspect exe.dev VM paperclip-env-run: exedev@paperclip-env-run.exe.xyz: Permission denied (publickey).".into())
    );
    assert_eq!(host.bodies()[1], "rm --json 'paperclip-env-run'");
    assert_eq!(host.ssh_calls.borrow().len(), 1, "not retried");
    assert_eq!(host.disconnects.borrow().len(), 1);
    host.assert_drained();
}

#[test]
fn onboarding_is_fatal_at_once() {
    let host = FakeHost::new();
    host.http(200, NEW_OK)
        .ssh(
            Some(1),
            b"Please complete registration by running: ssh exe.dev\r\n",
            b"",
        )
        .http(200, "{}");
    let err = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Ssh("Failed to inspect exe.dev VM paperclip-env1-run1: the Paperclip host SSH key is not registered with exe.dev. Complete exe.dev's one-time SSH onboarding on this host by running `ssh exe.dev` and following the email verification prompt, then retry.".into())
    );
    assert_eq!(host.ssh_calls.borrow().len(), 1);
    assert_eq!(host.bodies()[1], "rm --json 'paperclip-env1-run1'");
}

#[test]
fn waits_for_ssh_with_backoff() {
    let host = FakeHost::new();
    host.http(200, NEW_OK)
        .ssh(Some(255), b"", refused())
        .ssh(
            Some(255),
            b"",
            b"kex_exchange_identification: Connection closed by remote host\r\n",
        )
        .ssh_out(SshOutput {
            timed_out: true,
            ..SshOutput::default()
        })
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    assert_eq!(
        lease.metadata["remoteCwd"],
        json!("/home/exedev/paperclip-workspace")
    );
    assert_eq!(*host.sleeps.borrow(), vec![1000, 2000, 4000]);
    assert_eq!(host.ssh_calls.borrow().len(), 4);
    assert!(host
        .commands()
        .iter()
        .all(|c| *c == remote::prepare_command(None)));
    assert_eq!(host.ssh_calls.borrow()[0].timeout_ms, 30_000);
}

#[test]
fn readiness_gives_up_at_the_deadline_and_deletes() {
    let host = FakeHost::new();
    host.http(200, NEW_OK);
    for _ in 0..3 {
        host.ssh(Some(255), b"", refused());
    }
    host.http(200, "{}");
    let err = provider(&host, json!({"apiKey": "tok", "timeoutMs": 4000}))
        .acquire("run-1", None)
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Timeout(m) if m.starts_with("exe.dev VM paperclip-env1-run1 was not reachable over SSH within 4000 ms")),
        "{err:?}"
    );
    assert_eq!(
        host.bodies().last().unwrap(),
        "rm --json 'paperclip-env1-run1'"
    );
    host.assert_drained();
}

#[test]
fn mkdir_failure_is_reported_and_vm_deleted() {
    let host = FakeHost::new();
    host.http(200, NEW_OK)
        .ssh(
            Some(3),
            b"",
            b"mkdir: cannot create directory '/root/x': Permission denied\n",
        )
        .http(200, "{}");
    let err = provider(&host, default_cfg())
        .acquire("run-1", Some("/root/x"))
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::InvalidRequest("Failed to create workspace for exe.dev VM paperclip-env1-run1: mkdir: cannot create directory '/root/x': Permission denied".into())
    );
    assert_eq!(host.bodies()[1], "rm --json 'paperclip-env1-run1'");
}

#[test]
fn ssh_dest_user_prefix_and_ssh_host_user() {
    let p_host = FakeHost::new();
    let p = provider(&p_host, json!({"apiKey": "tok", "sshUser": "root"}));
    let vm =
        VmRecord::from_value(&json!({"vm_name": "bloggy", "ssh_dest": "vm+bloggy@vm.exe.xyz"}))
            .unwrap();
    let t = p.target_for_vm(&vm);
    assert_eq!(
        (t.host.as_str(), t.user.as_deref()),
        ("vm.exe.xyz", Some("vm+bloggy"))
    );
    assert_eq!(t.destination(), "vm+bloggy@vm.exe.xyz");

    let vm = VmRecord::from_value(&json!({"vm_name": "bloggy", "ssh_dest": "vm+bloggy@vm.exe.xyz", "ssh_host": "h.exe.xyz", "ssh_user": "u", "ssh_port": 2222})).unwrap();
    let t = p.target_for_vm(&vm);
    assert_eq!(
        (t.host.as_str(), t.user.as_deref(), t.port),
        ("h.exe.xyz", Some("u"), 2222)
    );

    let vm =
        VmRecord::from_value(&json!({"vm_name": "bloggy", "ssh_dest": "bloggy.exe.xyz"})).unwrap();
    let t = p.target_for_vm(&vm);
    assert_eq!(
        (t.host.as_str(), t.user.as_deref()),
        ("bloggy.exe.xyz", Some("root"))
    );

    let vm = VmRecord::from_value(&json!({"data": {"vm": {"name": "nested"}}})).unwrap();
    let t = p.target_for_vm(&vm);
    assert_eq!(t.host, "nested.exe.xyz");
}

#[test]
fn lease_metadata_records_user_from_ssh_dest() {
    let host = FakeHost::new();
    host.http(200, r#"{"vm_name":"paperclip-env1-run1","ssh_dest":"vm+x@vm.exe.xyz","region":"lon","region_display":"London, UK"}"#)
        .ssh(Some(0), PREPARED, b"");
    let lease = provider(&host, default_cfg())
        .acquire("run-1", None)
        .unwrap();
    let m = &lease.metadata;
    assert_eq!(m["sshDest"], json!("vm+x@vm.exe.xyz"));
    assert_eq!(m["sshHost"], json!("vm.exe.xyz"));
    assert_eq!(m["sshUser"], json!("vm+x"));
    assert_eq!(m["region"], json!("lon"));
    assert_eq!(m["regionDisplay"], json!("London, UK"));
    // A runtime call reaches the same place from the metadata alone.
    let p = provider(&host, json!({"apiKey": "tok", "sshUser": "other"}));
    let t = p.target_for_lease("paperclip-env1-run1", m);
    assert_eq!(t.destination(), "vm+x@vm.exe.xyz");
}

#[test]
fn lease_target_fallbacks() {
    let host = FakeHost::new();
    let p = provider(
        &host,
        json!({"apiKey": "tok", "sshUser": "root", "sshPort": 2022}),
    );
    let t = p.target_for_lease("vm1", &Map::new());
    assert_eq!(
        (t.host.as_str(), t.user.as_deref(), t.port),
        ("vm1.exe.xyz", Some("root"), 2022)
    );
    let meta = json!({"sshDest": "u@d.exe.xyz"})
        .as_object()
        .unwrap()
        .clone();
    let t = p.target_for_lease("vm1", &meta);
    assert_eq!(
        (t.host.as_str(), t.user.as_deref()),
        ("d.exe.xyz", Some("u"))
    );
}

#[test]
fn resume_expired_found_and_transient() {
    let host = FakeHost::new();
    host.http(200, "{\"vms\":[]}");
    let lease = provider(&host, default_cfg())
        .resume("paperclip-env-run", &Map::new())
        .unwrap();
    assert_eq!(lease.provider_lease_id, None);
    assert_eq!(Value::Object(lease.metadata), json!({"expired": true}));
    assert_eq!(host.bodies(), vec!["ls --json 'paperclip-env-run'"]);

    let host = FakeHost::new();
    host.http(500, "{\"error\":\"internal error\"}");
    let err = provider(&host, default_cfg())
        .resume("paperclip-env-run", &Map::new())
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api(e) if e.status == 500),
        "{err:?}"
    );

    let host = FakeHost::new();
    host.http(
        200,
        &format!("{{\"vms\":[{{\"vm_name\":\"other\"}},{NEW_OK}]}}"),
    )
    .ssh(
        Some(0),
        b"__PAPERCLIP_LEASE__\n/home/exedev\nbash\n/work/w\n",
        b"",
    );
    let meta = json!({"remoteCwd": "/work/w"}).as_object().unwrap().clone();
    let lease = provider(&host, default_cfg())
        .resume("paperclip-env1-run1", &meta)
        .unwrap();
    assert_eq!(
        host.commands(),
        vec![remote::prepare_command(Some("/work/w"))]
    );
    assert_eq!(
        lease.provider_lease_id.as_deref(),
        Some("paperclip-env1-run1")
    );
    assert_eq!(lease.metadata["resumedLease"], json!(true));
    assert_eq!(lease.metadata["remoteCwd"], json!("/work/w"));
}

#[test]
fn resume_retries_rate_limits() {
    let host = FakeHost::new();
    host.http(429, "{\"error\":\"rate limit exceeded\"}")
        .http(200, "{\"vms\":[]}");
    let lease = provider(&host, default_cfg())
        .resume("paperclip-env-run", &Map::new())
        .unwrap();
    assert_eq!(lease.provider_lease_id, None);
    assert_eq!(host.bodies().len(), 2);
}

#[test]
fn release_and_destroy() {
    // reuseLease keeps the VM: no calls at all.
    let host = FakeHost::new();
    let r = provider(&host, json!({"apiKey": "tok", "reuseLease": true}))
        .release(Some("paperclip-env-run"), &Map::new(), false)
        .unwrap();
    assert_eq!(r, None);
    assert!(host.bodies().is_empty());

    // No lease id: nothing to do.
    let host = FakeHost::new();
    assert_eq!(
        provider(&host, default_cfg())
            .release(None, &Map::new(), false)
            .unwrap(),
        None
    );

    // Normal release deletes and disconnects.
    let host = FakeHost::new();
    host.http(
        200,
        "{\"vm_name\":\"paperclip-env-run\",\"status\":\"deleted\"}",
    );
    let r = provider(&host, default_cfg())
        .release(Some("paperclip-env-run"), &Map::new(), false)
        .unwrap();
    assert_eq!(
        r,
        Some(Receipt {
            provider_lease_id: "paperclip-env-run".into(),
            state: LeaseState::Destroyed
        })
    );
    assert_eq!(host.bodies(), vec!["rm --json 'paperclip-env-run'"]);
    assert_eq!(
        host.disconnects.borrow()[0].host,
        "paperclip-env-run.exe.xyz"
    );

    // Destroy ignores reuseLease; a VM that is gone is fine (422 "not found", or 404).
    for (status, body) in [
        (
            422,
            "{\"error\":\"vm \\\"paperclip-env-run\\\" not found\"}",
        ),
        (404, ""),
    ] {
        let host = FakeHost::new();
        host.http(status, body);
        let r = provider(&host, json!({"apiKey": "tok", "reuseLease": true}))
            .destroy(Some("paperclip-env-run"), &Map::new())
            .unwrap();
        assert_eq!(r.unwrap().state, LeaseState::Destroyed);
        assert_eq!(host.bodies(), vec!["rm --json 'paperclip-env-run'"]);
    }

    // Other failures propagate.
    let host = FakeHost::new();
    host.http(
        403,
        "{\"error\":\"command not allowed by token permissions\"}",
    );
    let err = provider(&host, default_cfg())
        .destroy(Some("paperclip-env-run"), &Map::new())
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api(e) if e.status == 403 && e.hint.as_deref().unwrap().contains("`rm`"))
    );
    assert!(host.disconnects.borrow().is_empty());
}

#[test]
fn release_reused_lease_with_cancel_stops_marked_work() {
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    let r = provider(&host, json!({"apiKey": "tok", "reuseLease": true}))
        .release(Some("vm1"), &Map::new(), true)
        .unwrap();
    assert_eq!(
        r,
        Some(Receipt {
            provider_lease_id: "vm1".into(),
            state: LeaseState::Stopped
        })
    );
    assert_eq!(
        host.commands(),
        vec![remote::sh_c(&remote::kill_script(None))]
    );
    assert!(host.bodies().is_empty());
}

fn lease_with(meta: Value) -> Lease {
    Lease {
        provider_lease_id: Some("vm1".into()),
        metadata: meta.as_object().unwrap().clone(),
        expires_at: None,
    }
}

#[test]
fn realize_cwd_precedence() {
    let ws = Workspace {
        local_path: Some("/local".into()),
        remote_path: Some("/remote".into()),
        mode: None,
    };
    // The lease created remoteCwd already: no SSH.
    let host = FakeHost::new();
    let r = provider(&host, default_cfg())
        .realize(
            &lease_with(json!({"remoteCwd": "/home/exedev/paperclip-workspace"})),
            &ws,
        )
        .unwrap();
    assert_eq!(r.cwd, "/home/exedev/paperclip-workspace");
    assert_eq!(
        Value::Object(r.metadata),
        json!({"provider": "exe-dev", "remoteCwd": "/home/exedev/paperclip-workspace"})
    );
    assert!(host.ssh_calls.borrow().is_empty());

    // remotePath, created over SSH.
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    let r = provider(&host, default_cfg())
        .realize(&lease_with(json!({})), &ws)
        .unwrap();
    assert_eq!(r.cwd, "/remote");
    assert_eq!(
        host.commands(),
        vec!["sh -lc 'mkdir -p '\"'\"'/remote'\"'\"''"]
    );
    assert_eq!(host.ssh_calls.borrow()[0].target.host, "vm1.exe.xyz");

    // localPath, then the default.
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"").ssh(Some(0), b"", b"");
    let p = provider(&host, default_cfg());
    let r = p
        .realize(
            &lease_with(json!({})),
            &Workspace {
                local_path: Some("/local".into()),
                ..Workspace::default()
            },
        )
        .unwrap();
    assert_eq!(r.cwd, "/local");
    let r = p
        .realize(&lease_with(json!({})), &Workspace::default())
        .unwrap();
    assert_eq!(r.cwd, "/tmp/paperclip-workspace");
    assert_eq!(
        host.commands()[1],
        remote::mkdir_command("/tmp/paperclip-workspace")
    );

    // No lease id: no SSH.
    let host = FakeHost::new();
    let r = provider(&host, default_cfg())
        .realize(&Lease::default(), &Workspace::default())
        .unwrap();
    assert_eq!(r.cwd, "/tmp/paperclip-workspace");
    assert!(host.ssh_calls.borrow().is_empty());

    // mkdir failure is an error.
    let host = FakeHost::new();
    host.ssh(Some(1), b"", b"mkdir: Permission denied\n");
    let err = provider(&host, default_cfg())
        .realize(&lease_with(json!({})), &ws)
        .unwrap_err();
    assert_eq!(
        err,
        ProviderError::Ssh(
            "Failed to create workspace for exe.dev VM vm1: mkdir: Permission denied".into()
        )
    );
}

fn exec_req(meta: Value) -> ExecuteRequest {
    ExecuteRequest {
        lease: lease_with(meta),
        command: "sh".into(),
        args: vec!["-c".into(), "echo 'hi'".into()],
        cwd: None,
        env: vec![("FOO".into(), "b'ar".into())],
        stdin: None,
        timeout_ms: None,
    }
}

const EXEC_ID: &str = "0123456789abcdef";

#[test]
fn execute_exact_remote_command() {
    let host = FakeHost::new();
    host.ssh(Some(0), b"hi\n", b"");
    let mut req = exec_req(json!({"remoteCwd": "/home/exedev/w", "sshDest": "vm1.exe.xyz"}));
    req.stdin = Some(vec![0, 1, 2, 255, b'\n']);
    let r = provider(&host, default_cfg()).execute(req).unwrap();
    let script = format!(
        "if [ -f /etc/profile ]; then . /etc/profile >/dev/null 2>&1 || true; fi && \
         if [ -f \"$HOME/.profile\" ]; then . \"$HOME/.profile\" >/dev/null 2>&1 || true; fi && \
         if [ -f \"$HOME/.bash_profile\" ]; then . \"$HOME/.bash_profile\" >/dev/null 2>&1 || true; elif [ -f \"$HOME/.bashrc\" ]; then . \"$HOME/.bashrc\" >/dev/null 2>&1 || true; fi && \
         if [ -f \"$HOME/.zprofile\" ]; then . \"$HOME/.zprofile\" >/dev/null 2>&1 || true; fi && \
         cd '/home/exedev/w' && export PAPERCLIP_EXEC_ID={EXEC_ID} FOO='b'\"'\"'ar' && \
         exec 'sh' '-c' 'echo '\"'\"'hi'\"'\"''"
    );
    let call = host.ssh_calls.borrow()[0].clone();
    // The script itself: the host runs it with `/bin/sh -c` on the VM (or sends it behind a
    // guard shell on the direct path).
    assert_eq!(call.command, script);
    assert!(call.durable);
    assert_eq!(call.stdin, Some(vec![0, 1, 2, 255, b'\n']));
    assert_eq!(call.timeout_ms, 300_000);
    assert_eq!(call.max_output_bytes, 32 * 1024 * 1024);
    assert!(call.stream_output);
    assert_eq!(r.exit_code, Some(0));
    assert!(!r.timed_out);
    assert_eq!(r.stdout, "hi\n");
    assert_eq!(
        Value::Object(r.metadata),
        json!({"provider": "exe-dev", "vmName": "vm1", "sshDest": "vm1.exe.xyz", "stdoutTruncated": false, "stderrTruncated": false})
    );
}

#[test]
fn execute_cwd_and_timeout_precedence() {
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    let mut req = exec_req(json!({"remoteCwd": "/lease"}));
    req.cwd = Some("/req".into());
    req.timeout_ms = Some(1234);
    req.env.clear();
    provider(&host, json!({"apiKey": "tok", "timeoutMs": 9999}))
        .execute(req)
        .unwrap();
    let call = host.ssh_calls.borrow()[0].clone();
    assert!(
        call.command
            .contains("cd '/req' && export PAPERCLIP_EXEC_ID=0123456789abcdef && exec 'sh'"),
        "{}",
        call.command
    );
    assert_eq!(call.timeout_ms, 1234);

    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    provider(&host, json!({"timeoutMs": 9999}))
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(host.ssh_calls.borrow()[0].timeout_ms, 9999);
}

#[test]
fn the_callers_deadline_bounds_the_budget_the_config_sets() {
    // Paperclip waits 30 s for an execute with no timeoutMs anywhere; the config's default
    // (300 s) would outlive the caller, so the command gets what is left less the margin.
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    let call = CallContext {
        deadline_ms: 30_000,
        ..ctx(json!({"apiKey": "tok"}))
    };
    Provider::new(&host, &call)
        .unwrap()
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(host.ssh_calls.borrow()[0].timeout_ms, 28_000);

    // A deadline past the config's own changes nothing.
    let host = FakeHost::new();
    host.ssh(Some(0), b"", b"");
    let call = CallContext {
        deadline_ms: 39_999,
        ..ctx(json!({"apiKey": "tok", "timeoutMs": 9999}))
    };
    Provider::new(&host, &call)
        .unwrap()
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(host.ssh_calls.borrow()[0].timeout_ms, 9999);
}

#[test]
fn execute_keeps_stderr_verbatim_on_failure() {
    let host = FakeHost::new();
    host.ssh(Some(2), b"partial", b"Permission denied\nreal error\n");
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(r.exit_code, Some(2));
    assert_eq!(r.stderr, "Permission denied\nreal error\n");
    assert_eq!(r.stdout, "partial");

    // Exit 255 from the command itself, as the SSH server reported it, is a result too.
    let host = FakeHost::new();
    host.ssh_out(SshOutput {
        exit_code: Some(255),
        exit_code_from_remote: true,
        stderr: b"tool: fatal\n".to_vec(),
        ..SshOutput::default()
    });
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stderr.as_str()),
        (Some(255), "tool: fatal\n")
    );
    assert!(
        host.ssh_calls.borrow()[0].durable,
        "executes ask for durability"
    );

    // Over a pooled connection, a 255 no SSH server reported means the status never came:
    // the outcome is unknown, so the answer is an error, never a made-up exit code.
    let host = FakeHost::new();
    host.ssh(Some(255), b"line0\n", b"");
    let e = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(
        matches!(&e, ProviderError::Ssh(m) if m.contains("outcome is unknown") && m.contains("6 bytes of stdout")),
        "{e:?}"
    );
}

#[test]
fn execute_ssh_failure_before_the_command_ran_is_an_error() {
    let host = FakeHost::new();
    host.ssh(Some(255), b"", b"Load key \"/tmp/paperclip-x/id_ed25519\": invalid format\r\nuser@vm1.exe.xyz: Permission denied (publickey).\r\n");
    let err = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Ssh(m) if m.starts_with("Failed to execute commands on exe.dev VM vm1: the configured SSH private key isn't an OpenSSH-format private key.")),
        "{err:?}"
    );

    let host = FakeHost::new();
    host.ssh(
        Some(1),
        b"Please complete registration by running: ssh exe.dev\r\n",
        b"",
    );
    let err = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(matches!(&err, ProviderError::Ssh(m) if m.contains("not registered with exe.dev")));

    let host = FakeHost::new();
    host.ssh_err(SshError::Denied("evil.example.com".into()));
    let err = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(matches!(&err, ProviderError::Denied(m) if m.contains("evil.example.com")));
}

#[test]
fn execute_255_reported_by_the_server_is_the_commands_own_result() {
    let host = FakeHost::new();
    let stderr = "ssh: connect to host db port 22: Connection refused\r\n";
    host.ssh_out(SshOutput {
        exit_code: Some(255),
        exit_code_from_remote: true,
        stderr: stderr.as_bytes().to_vec(),
        ..SshOutput::default()
    });
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(r.exit_code, Some(255));
    assert_eq!(r.stderr, stderr);
}

#[test]
fn execute_timeout_kills_the_remote_tree() {
    let host = FakeHost::new();
    host.ssh_out(SshOutput {
        exit_code: None,
        signal: Some("SIGKILL".into()),
        timed_out: true,
        stdout: b"started\n".to_vec(),
        ..SshOutput::default()
    })
    .ssh(Some(0), b"", b"");
    let mut req = exec_req(json!({"sshHost": "h.exe.xyz", "sshUser": "exedev", "sshPort": 22}));
    req.timeout_ms = Some(5000);
    let r = provider(&host, default_cfg()).execute(req).unwrap();
    assert!(r.timed_out);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.signal, None);
    assert_eq!(r.stdout, "started\n");
    let calls = host.ssh_calls.borrow();
    assert_eq!(calls.len(), 2);
    assert!(calls[0]
        .command
        .contains(&format!("PAPERCLIP_EXEC_ID={EXEC_ID}")));
    assert_eq!(
        calls[1].command,
        remote::sh_c(&remote::kill_script(Some(EXEC_ID)))
    );
    assert!(
        calls[1]
            .command
            .contains("grep -qx '\"'\"'PAPERCLIP_EXEC_ID=0123456789abcdef'\"'\"'"),
        "{}",
        calls[1].command
    );
    assert_eq!(calls[1].timeout_ms, 10_000);
    assert_eq!(calls[1].stdin, None);
    assert!(!calls[1].stream_output);
    assert_eq!(calls[1].target.destination(), "exedev@h.exe.xyz");
}

#[test]
fn execute_timeout_tolerates_kill_failure() {
    let host = FakeHost::new();
    host.ssh_out(SshOutput {
        timed_out: true,
        ..SshOutput::default()
    })
    .ssh_err(SshError::Spawn("no ssh".into()));
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert!(r.timed_out);
}

#[test]
fn execute_rejects_invalid_env_key() {
    let host = FakeHost::new();
    let mut req = exec_req(json!({}));
    req.env = vec![
        ("OK".into(), "1".into()),
        ("BAD-KEY".into(), "secret".into()),
    ];
    let err = provider(&host, default_cfg()).execute(req).unwrap_err();
    assert_eq!(
        err,
        ProviderError::InvalidRequest("Invalid exe.dev environment variable key: BAD-KEY".into())
    );
    assert!(host.ssh_calls.borrow().is_empty());
}

#[test]
fn execute_decodes_output_once() {
    let host = FakeHost::new();
    // "é€😀" split anywhere would break a chunked decoder; here it arrives whole.
    let mut stdout = "x".repeat(65_535).into_bytes();
    stdout.extend_from_slice("é€😀".as_bytes());
    host.ssh_out(SshOutput {
        exit_code: Some(0),
        stdout: stdout.clone(),
        stderr: vec![b'a', 0xff, b'b'],
        stdout_truncated: true,
        ..SshOutput::default()
    });
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert_eq!(r.stdout.as_bytes(), stdout.as_slice());
    assert!(r.stdout.ends_with("é€😀"));
    assert_eq!(r.stderr, "a\u{fffd}b");
    assert_eq!(r.metadata["stdoutTruncated"], json!(true));
    assert_eq!(r.metadata["stderrTruncated"], json!(false));
}

#[test]
fn execute_without_lease_id() {
    let host = FakeHost::new();
    let mut req = exec_req(json!({}));
    req.lease.provider_lease_id = None;
    let r = provider(&host, default_cfg()).execute(req).unwrap();
    assert_eq!(r.exit_code, Some(1));
    assert_eq!(r.stderr, "No provider lease ID available for execution.");
}

#[test]
fn probe_success() {
    let host = FakeHost::new();
    host.http(
        200,
        r#"{"vm_name":"paperclip-probe-89abcdef","ssh_dest":"paperclip-probe-89abcdef.exe.xyz"}"#,
    )
    .ssh(Some(255), b"", refused())
    .ssh(Some(0), PREPARED, b"")
    .http(200, "{}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(r.ok, "{r:?}");
    assert_eq!(
        r.summary,
        "Connected to exe.dev VM paperclip-probe-89abcdef."
    );
    let bodies = host.bodies();
    assert!(bodies[0].starts_with("new --json --no-email --name='paperclip-probe-89abcdef' "));
    assert_eq!(bodies[1], "rm --json 'paperclip-probe-89abcdef'");
    let codes: Vec<_> = r
        .diagnostics
        .iter()
        .map(|d| d.code.clone().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec!["create-vm", "ssh-ready", "inspect", "delete-vm"]
    );
    assert!(r.diagnostics.iter().all(|d| d.severity == Severity::Info));
    assert_eq!(r.diagnostics[0].details, Some(json!({"durationMs": 10})));
    assert_eq!(
        r.diagnostics[1].details,
        Some(json!({"durationMs": 1040, "attempts": 2}))
    );
    assert_eq!(r.diagnostics[2].details, Some(json!({"durationMs": 20})));
    assert_eq!(r.diagnostics[3].details, Some(json!({"durationMs": 10})));
    assert_eq!(
        Value::Object(r.metadata),
        json!({
            "provider": "exe-dev",
            "vmName": "paperclip-probe-89abcdef",
            "sshDest": "paperclip-probe-89abcdef.exe.xyz",
            "timeoutMs": 300000,
            "reuseLease": false,
            "remoteCwd": "/home/exedev/paperclip-workspace",
            "shellCommand": "bash"
        })
    );
    assert_eq!(host.disconnects.borrow().len(), 1);
    host.assert_drained();
}

#[test]
fn probe_failure_still_deletes() {
    let host = FakeHost::new();
    host.http(200, r#"{"vm_name":"paperclip-probe-89abcdef"}"#)
        .ssh(Some(255), b"", b"Host key verification failed.\r\n")
        .http(200, "{}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(!r.ok);
    assert_eq!(r.summary, "exe.dev environment probe failed.");
    let codes: Vec<_> = r
        .diagnostics
        .iter()
        .map(|d| (d.code.clone().unwrap(), d.severity))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("create-vm".to_string(), Severity::Info),
            ("ssh-ready".to_string(), Severity::Error),
            ("delete-vm".to_string(), Severity::Info)
        ]
    );
    assert_eq!(host.bodies()[1], "rm --json 'paperclip-probe-89abcdef'");
    assert_eq!(
        r.metadata["error"],
        json!(
            "Failed to inspect exe.dev VM paperclip-probe-89abcdef: Host key verification failed."
        )
    );
    assert_eq!(r.metadata["provider"], json!("exe-dev"));

    // Create failing: the rm is still attempted (the VM may exist), after the name was
    // watched for the cleanup budget; the ledger keeps the name (the VM may still appear).
    let host = FakeHost::new();
    host.http(500, "boom")
        .http_when("ls", 200, "{\"vms\":[]}")
        .http_when("rm", 422, "{\"error\":\"vm not found\"}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(!r.ok);
    let bodies = host.bodies();
    assert_eq!(
        bodies.last().unwrap(),
        "rm --json 'paperclip-probe-89abcdef'"
    );
    assert!(bodies.len() > 3, "{bodies:?}");
    assert!(bodies[1..bodies.len() - 1]
        .iter()
        .all(|b| b == "ls --json 'paperclip-probe-89abcdef'"));
    assert_eq!(host.ledger_names(), ["paperclip-probe-89abcdef"]);
    assert_eq!(r.diagnostics[0].severity, Severity::Error);
    assert_eq!(
        r.diagnostics.last().unwrap().code.as_deref(),
        Some("delete-vm")
    );

    // No API key: a failed probe, not an error, and no rm.
    let host = FakeHost::new();
    let r = run_probe(&host, &ctx(json!({})));
    assert!(!r.ok);
    assert_eq!(
        r.metadata["error"],
        json!("invalid config: exe.dev environments require an API key in config or EXE_API_KEY.")
    );
    assert!(host.bodies().is_empty());

    // Invalid config.
    let r = run_probe(&host, &ctx(json!({"timeoutMs": -1})));
    assert!(!r.ok);
    assert_eq!(r.diagnostics[0].code.as_deref(), Some("config"));
}

#[test]
fn no_secret_reaches_logs_metadata_or_errors() {
    let secrets = [
        "tok-SECRET-1",
        "envval-SECRET-2",
        "prompt-SECRET-3",
        "script-SECRET-4",
        "KEY-SECRET-5",
    ];
    let cfg = json!({
        "apiKey": secrets[0], "env": {"A": secrets[1]}, "prompt": secrets[2],
        "setupScript": secrets[3], "sshPrivateKey": secrets[4]
    });
    let host = FakeHost::new();
    host.http(503, &format!("{{\"error\":\"busy with {}\"}}", secrets[1]))
        .http(200, &format!("{{\"vms\":[{NEW_OK}]}}"))
        .ssh(Some(0), PREPARED, b"");
    let lease = Provider::new(&host, &ctx(cfg.clone()))
        .unwrap()
        .acquire("run-1", None)
        .unwrap();
    let mut seen = format!("{} {:?}", host.log_text(), lease);
    let host2 = FakeHost::new();
    host2.http(401, &format!("{{\"error\":\"bad token {}\"}}", secrets[0]));
    let err = Provider::new(&host2, &ctx(cfg.clone()))
        .unwrap()
        .destroy(Some("vm1"), &Map::new())
        .unwrap_err();
    seen.push_str(&format!("{err} {err:?} {}", host2.log_text()));
    let r = run_probe(
        &FakeHost::new(),
        &ctx(json!({"apiKey": secrets[0], "timeoutMs": 0})),
    );
    seen.push_str(&format!("{r:?}"));
    for s in secrets {
        assert!(!seen.contains(s), "{s} leaked in: {seen}");
    }
    // The key material does reach the SSH host (that is its purpose).
    assert_eq!(
        host.ssh_calls.borrow()[0].target.identity,
        Identity::KeyMaterial(secrets[4].into())
    );
}

#[test]
fn probe_inspect_failure_and_ssh_denied() {
    // SSH works but the workspace cannot be created: ssh-ready ok, inspect failed.
    let host = FakeHost::new();
    host.http(200, r#"{"vm_name":"paperclip-probe-89abcdef"}"#)
        .ssh(Some(3), b"", b"mkdir: read-only file system\n")
        .http(200, "{}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(!r.ok);
    let codes: Vec<_> = r
        .diagnostics
        .iter()
        .map(|d| (d.code.clone().unwrap(), d.severity))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("create-vm".to_string(), Severity::Info),
            ("ssh-ready".to_string(), Severity::Info),
            ("inspect".to_string(), Severity::Error),
            ("delete-vm".to_string(), Severity::Info)
        ]
    );
    assert_eq!(host.disconnects.borrow().len(), 1);

    // The host denies SSH to the VM: the VM is still deleted.
    let host = FakeHost::new();
    host.http(200, r#"{"vm_name":"paperclip-probe-89abcdef"}"#)
        .ssh_err(SshError::Denied("paperclip-probe-89abcdef.exe.xyz".into()))
        .http(200, "{}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(!r.ok);
    assert_eq!(host.bodies()[1], "rm --json 'paperclip-probe-89abcdef'");
    assert!(r.metadata["error"]
        .as_str()
        .unwrap()
        .starts_with("denied by host policy: SSH to paperclip-probe-89abcdef.exe.xyz"));
    host.assert_drained();
}

#[test]
fn probe_reports_vm_already_gone() {
    let host = FakeHost::new();
    host.http(200, r#"{"vm_name":"paperclip-probe-89abcdef"}"#)
        .ssh(Some(0), PREPARED, b"")
        .http(422, "{\"error\":\"vm not found\"}");
    let r = run_probe(&host, &ctx(default_cfg()));
    assert!(r.ok);
    assert_eq!(
        r.diagnostics.last().unwrap().message,
        "exe.dev VM paperclip-probe-89abcdef was already gone."
    );
}

#[test]
fn rm_unknown_command_is_not_gone() {
    let host = FakeHost::new();
    host.http(404, "{\"error\":\"unknown command\"}");
    let err = provider(&host, default_cfg())
        .destroy(Some("vm1"), &Map::new())
        .unwrap_err();
    assert!(matches!(&err, ProviderError::Api(e) if e.status == 404));
}

#[test]
fn resume_treats_ls_not_found_as_expired() {
    let host = FakeHost::new();
    host.http(
        422,
        "{\"error\":\"vm \\\"paperclip-env-run\\\" not found\"}",
    );
    let lease = provider(&host, default_cfg())
        .resume("paperclip-env-run", &Map::new())
        .unwrap();
    assert_eq!(lease.provider_lease_id, None);
    assert_eq!(Value::Object(lease.metadata), json!({"expired": true}));
}

#[test]
fn execute_opens_the_connection_first_and_gives_the_command_the_rest_of_the_time() {
    let host = FakeHost::new();
    host.connect_script
        .borrow_mut()
        .push_back(Ok(Connected::Ready));
    host.ssh(Some(0), b"hi\n", b"");
    let mut req = exec_req(json!({"sshHost": "h.exe.xyz", "sshUser": "exedev", "sshPort": 22}));
    req.timeout_ms = Some(5000);
    let r = provider(&host, default_cfg()).execute(req).unwrap();
    assert_eq!((r.exit_code, r.stdout.as_str()), (Some(0), "hi\n"));
    let connects = host.connects.borrow();
    assert_eq!(connects.len(), 1);
    assert_eq!(connects[0].0.destination(), "exedev@h.exe.xyz");
    assert_eq!(connects[0].1, 5000);
    assert_eq!(host.ssh_calls.borrow()[0].timeout_ms, 5000);
}

#[test]
fn execute_reports_a_failed_connection_without_running_anything() {
    // Refused key: an SSH error with the operator hint, and no command sent.
    let host = FakeHost::new();
    host.connect_script
        .borrow_mut()
        .push_back(Ok(Connected::Failed(SshOutput {
            exit_code: Some(255),
            stderr: b"exedev@vm1.exe.xyz: Permission denied (publickey).\r\n".to_vec(),
            ..SshOutput::default()
        })));
    let err = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Ssh(m) if m.starts_with("Failed to execute commands on exe.dev VM vm1") && m.contains("Permission denied")),
        "{err:?}"
    );
    assert!(host.ssh_calls.borrow().is_empty());

    // A connection that took the whole deadline: a timed-out result, and no kill script
    // (nothing was started).
    let host = FakeHost::new();
    host.connect_script
        .borrow_mut()
        .push_back(Ok(Connected::Failed(SshOutput {
            timed_out: true,
            ..SshOutput::default()
        })));
    let r = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap();
    assert!(r.timed_out);
    assert_eq!((r.exit_code, r.signal.as_deref()), (None, None));
    assert!(host.ssh_calls.borrow().is_empty());

    // A destination the host refuses.
    let host = FakeHost::new();
    host.connect_script
        .borrow_mut()
        .push_back(Err(SshError::Denied("evil.example.com".into())));
    let err = provider(&host, default_cfg())
        .execute(exec_req(json!({})))
        .unwrap_err();
    assert!(matches!(&err, ProviderError::Denied(m) if m.contains("evil.example.com")));
    assert!(host.ssh_calls.borrow().is_empty());
}
