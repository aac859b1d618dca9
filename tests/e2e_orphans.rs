//! No VM without an owner (issue 11): a `new` that exe.dev completes after the client gave up,
//! sooner or later than the call's cleanup budget, and a delete that was refused. Each ends with
//! zero VMs, and the operator's `orphans` listing matches what the simulator holds. The worker's
//! background reconciler (issue 18, `e2e_reconciler`) deletes such VMs on its own; here the
//! worker is restarted without the token where the later call is the point, which is the rule
//! that then still applies.

mod e2e_support;

use std::path::PathBuf;
use std::time::Duration;

use e2e_support::{eventually, files_below, orphans_command, run_id, Env, EnvOptions};
use serde_json::{json, Value};

/// `timeoutMs` of these tests: the create gives up after 3 s and the cleanup budget is 3 s.
const TIMEOUT_MS: u64 = 3000;

/// A worker restarted without the account's token (it was only in the environment config): its
/// reconciler cannot touch the account's entries until a call brings the token.
async fn restart_without_token(env: &mut Env) {
    env.kill_worker().await;
    env.start_worker(&[]).await;
}

async fn env() -> Env {
    Env::start_with(EnvOptions {
        timeout_ms: TIMEOUT_MS,
        ..EnvOptions::default()
    })
    .await
}

fn statuses(env: &Env, cmd: &str) -> Vec<u16> {
    env.api_calls(cmd).into_iter().map(|(s, _)| s).collect()
}

/// The ledger's entry files in the worker's state directory.
fn ledger_files(env: &Env) -> Vec<PathBuf> {
    files_below(&env.state.path().join("vm-ledger"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// Run the operator command `orphans` with `extra` flags; returns its JSON output.
async fn orphans(env: &Env, extra: &[&str]) -> Value {
    orphans_command(env, extra).await
}

/// `(name, orphan)` of each VM the listing shows as present.
fn present(listing: &Value) -> Vec<(String, bool)> {
    listing["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["present"] == true)
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["orphan"] == true))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_completing_within_the_cleanup_budget_is_deleted_by_the_same_call() {
    let env = env().await;
    // The VM appears 1 s after the client abandoned `new`: inside the 3 s cleanup budget.
    env.sim
        .faults()
        .complete_after_abandon("new", Duration::from_secs(1), 1);
    let resp = env
        .call(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("within")})),
        )
        .await;
    // Found while watched, with the call's deadline spent: adopted and deleted again.
    assert_eq!(resp["error"]["data"]["kind"], "timeout", "{resp}");
    assert_eq!(statuses(&env, "new"), [0]);
    assert_eq!(statuses(&env, "rm"), [200]);
    assert!(env.sim.vm_names().is_empty());
    assert!(ledger_files(&env).is_empty(), "{:?}", ledger_files(&env));
    assert_eq!(present(&orphans(&env, &[]).await), []);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_completing_after_the_cleanup_budget_is_deleted_by_a_later_call() {
    let mut env = env().await;
    // The VM appears 8 s after the client abandoned `new`: after the call has ended.
    env.sim
        .faults()
        .complete_after_abandon("new", Duration::from_secs(8), 1);
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("late")})),
        )
        .await;
    assert_eq!(err["data"]["kind"], "api", "{err}");
    assert_eq!(err["data"]["status"], 0, "{err}");
    assert!(env.sim.vm_names().is_empty(), "not there yet");
    restart_without_token(&mut env).await;

    // The host's ledger holds the name, the API URL and a token fingerprint: never the token.
    let files = ledger_files(&env);
    assert_eq!(files.len(), 1, "{files:?}");
    let entry: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(entry["apiUrl"], env.sim.api_url());
    assert_eq!(entry["reason"], "uncertain-create");
    for f in files_below(env.state.path()) {
        let bytes = std::fs::read(&f).unwrap();
        let token = env.sim.token().as_bytes();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token),
            "the token is in {}",
            f.display()
        );
    }

    // exe.dev finishes the abandoned create: a VM nobody owns.
    assert!(eventually(Duration::from_secs(30), || env.sim.vm_names().len() == 1).await);
    let orphan = env.sim.vm_names()[0].clone();
    assert_eq!(entry["vmName"], orphan);

    // The operator's listing shows exactly what the simulator holds, marked as an orphan, and
    // what the reconciler waits for.
    let listing = orphans(&env, &[]).await;
    assert_eq!(present(&listing), [(orphan.clone(), true)]);
    assert_eq!(listing["pending"][0]["name"], json!(orphan), "{listing}");
    assert_eq!(
        listing["pending"][0]["reason"], "uncertain-create",
        "{listing}"
    );
    assert_eq!(listing["pending"][0]["apiUrl"], json!(env.sim.api_url()));
    assert_eq!(listing["deleted"], json!([]));
    assert_eq!(
        env.sim.vm_names(),
        std::slice::from_ref(&orphan),
        "listing deletes nothing"
    );

    // The next call on the account deletes it before its own work.
    let lease = env.acquire(&run_id("next")).await;
    assert!(!env.sim.vm_names().contains(&orphan));
    assert!(env
        .api_calls("rm")
        .iter()
        .any(|(s, b)| *s == 200 && b.contains(&orphan)));
    assert!(ledger_files(&env).is_empty(), "{:?}", ledger_files(&env));
    env.release(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_release_is_recorded_and_the_operator_deletes_it() {
    let mut env = env().await;
    let lease = env.acquire(&run_id("refused")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let other = env.acquire(&run_id("kept")).await;
    let kept = other["providerLeaseId"].as_str().unwrap().to_string();
    env.sim.faults().fail_command("rm", 403, 1);
    let err = env
        .err(
            "environmentReleaseLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(err["data"]["status"], 403, "{err}");
    restart_without_token(&mut env).await;

    // Listed: both of the provider's VMs, only the refused one as an orphan.
    let listing = orphans(&env, &[]).await;
    let mut want = vec![(vm.clone(), true), (kept.clone(), false)];
    want.sort();
    assert_eq!(present(&listing), want);
    let reason = listing["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == vm)
        .unwrap()["reason"]
        .clone();
    assert_eq!(reason, "failed-delete");

    // `--yes` deletes every orphan and nothing else.
    let done = orphans(&env, &["--yes"]).await;
    assert_eq!(done["deleted"], json!([vm]));
    assert_eq!(env.sim.vm_names(), std::slice::from_ref(&kept));
    assert!(ledger_files(&env).is_empty());
    assert_eq!(present(&orphans(&env, &[]).await), [(kept, false)]);
    env.release(&other).await;
    env.finish().await;
}
