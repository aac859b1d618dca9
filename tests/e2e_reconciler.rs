//! The worker's background reconciler (issue 18): no VM outlives its owner by more than 15 s,
//! with no Paperclip call after the one that created it. Each case measures, on the
//! simulator's clock of VM lifetimes, how long the unowned VM lived past its deadline (its
//! appearance, a lease's `expiresAt`, a release's failed `rm`), prints it and asserts the bound;
//! each ends with zero VMs. And an idle worker makes no API call at all.

mod e2e_support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e_support::{eventually, files_below, orphans_command, run_id, Env, EnvOptions};
use exe_dev_sim::VmLifetime;
use serde_json::{json, Value};

/// `timeoutMs` of these tests: the create gives up after 3 s, the in-call watch lasts 3 s more.
const TIMEOUT_MS: u64 = 3000;
/// The bound: an unowned VM is deleted within this of its deadline.
const BOUND: Duration = Duration::from_secs(15);

async fn env_with(worker_env: Vec<(String, String)>) -> Env {
    Env::start_with(EnvOptions {
        timeout_ms: TIMEOUT_MS,
        worker_env,
        ..EnvOptions::default()
    })
    .await
}

fn ledger_files(env: &Env) -> Vec<PathBuf> {
    files_below(&env.state.path().join("vm-ledger"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// Wait (up to `within`) until the simulator has deleted the VM it created first; its lifetime.
async fn deleted_vm(env: &Env, within: Duration) -> VmLifetime {
    let done = eventually(within, || {
        env.sim
            .vm_lifetimes()
            .first()
            .is_some_and(|l| l.deleted.is_some())
    })
    .await;
    assert!(
        done,
        "the VM was not deleted within {within:?}: {:?}",
        env.sim.vm_lifetimes()
    );
    env.sim.vm_lifetimes()[0].clone()
}

fn lived(l: &VmLifetime) -> Duration {
    l.deleted.unwrap() - l.created
}

/// An acquire whose `new` exe.dev completes `after` the client abandoned it: the call fails,
/// then (no further call) the reconciler deletes the VM once it appears.
async fn late_new_is_deleted_with_no_further_call(after: Duration) {
    let env = env_with(Vec::new()).await;
    env.sim.faults().complete_after_abandon("new", after, 1);
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("late")})),
        )
        .await;
    let failed = Instant::now();
    // "api": no answer to `new`; "timeout": the in-call watch adopted a VM with no time left.
    assert!(
        ["api", "timeout"].contains(&err["data"]["kind"].as_str().unwrap_or("")),
        "{err}"
    );
    let l = deleted_vm(&env, after + Duration::from_secs(40)).await;
    let took = lived(&l);
    println!(
        "new completing {after:?} after the client gave up: the VM appeared {:?} after the acquire \
         failed and was deleted {took:?} after appearing (bound {BOUND:?})",
        l.created.saturating_duration_since(failed)
    );
    assert!(took <= BOUND, "lived {took:?}");
    // Deleted by the reconciler (or, at 3 s, perhaps by the acquire's own watch): one `rm`
    // (logged once its answer is sent, just after the VM is gone).
    let rm_ok = || {
        env.api_calls("rm")
            .iter()
            .filter(|(s, _)| *s == 200)
            .count()
    };
    assert!(eventually(Duration::from_secs(5), || rm_ok() == 1).await);
    assert_eq!(rm_ok(), 1);
    assert!(eventually(Duration::from_secs(5), || ledger_files(&env).is_empty()).await);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_completing_3s_after_the_client_gave_up() {
    late_new_is_deleted_with_no_further_call(Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_completing_8s_after_the_client_gave_up() {
    late_new_is_deleted_with_no_further_call(Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_completing_40s_after_the_client_gave_up() {
    late_new_is_deleted_with_no_further_call(Duration::from_secs(40)).await;
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_with_requested_expiry_is_deleted_when_it_passes() {
    let env = env_with(Vec::new()).await;
    let (start_wall, start) = (wall_ms(), Instant::now());
    let expires_ms = start_wall + 3_000;
    let requested = paperclip_exe_dev::timestamp::format_iso8601_ms(expires_ms);
    let lease = env
        .ok(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("expiring"), "requestedExpiresAt": requested})),
        )
        .await;
    // At or before the requested time (exactly it), and in the metadata for a later resume.
    assert_eq!(lease["expiresAt"], json!(requested), "{lease}");
    assert_eq!(lease["metadata"]["expiresAt"], json!(requested), "{lease}");
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let files = ledger_files(&env);
    assert_eq!(files.len(), 1, "the deadline is on disk: {files:?}");
    let entry: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(entry["reason"], "lease-expiry");
    assert_eq!(entry["dueAtMs"], json!(expires_ms));

    let l = deleted_vm(&env, Duration::from_secs(30)).await;
    let deadline = start + Duration::from_millis(expires_ms - start_wall);
    let late = l.deleted.unwrap().saturating_duration_since(deadline);
    let early = deadline.saturating_duration_since(l.deleted.unwrap());
    println!("lease with requestedExpiresAt 3 s ahead: deleted {late:?} after its expiresAt (bound {BOUND:?})");
    assert!(early.is_zero(), "deleted {early:?} before its expiry");
    assert!(late <= BOUND, "deleted {late:?} after its expiry");
    assert_eq!(l.name, vm);

    // Resume of the expired lease answers `expired`.
    let resumed = env
        .ok(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(resumed["providerLeaseId"], Value::Null, "{resumed}");
    assert_eq!(resumed["metadata"]["expired"], true, "{resumed}");
    assert!(ledger_files(&env).is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_rm_fails_twice_is_retried_until_it_works() {
    let env = env_with(Vec::new()).await;
    let lease = env.acquire(&run_id("refused")).await;
    // 500 is not retried within a call: the release fails, the reconciler takes over.
    env.sim.faults().fail_command("rm", 500, 2);
    let err = env
        .err(
            "environmentReleaseLease",
            env.params(json!({
                "providerLeaseId": lease["providerLeaseId"],
                "leaseMetadata": lease["metadata"],
            })),
        )
        .await;
    let failed = Instant::now();
    assert_eq!(err["data"]["status"], 500, "{err}");
    let l = deleted_vm(&env, Duration::from_secs(30)).await;
    let took = l.deleted.unwrap().saturating_duration_since(failed);
    // The `rm` is logged once its answer is sent, just after the VM is gone.
    let rm_statuses = || -> Vec<u16> { env.api_calls("rm").into_iter().map(|(s, _)| s).collect() };
    assert!(eventually(Duration::from_secs(5), || rm_statuses().len() == 3).await);
    let statuses = rm_statuses();
    println!("rm failing twice: statuses {statuses:?}, deleted {took:?} after the failed release (bound {BOUND:?})");
    assert_eq!(statuses, [500, 500, 200]);
    assert!(took <= BOUND, "{took:?}");
    assert!(eventually(Duration::from_secs(5), || ledger_files(&env).is_empty()).await);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_keeps_failing_degrades_health_and_is_listed_until_it_works() {
    let env = env_with(Vec::new()).await;
    let lease = env.acquire(&run_id("stuck")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let health = env.ok("health", json!({})).await;
    assert_eq!(health["status"], "ok", "{health}");
    // The release and four retries fail (1 + 2 + 4 + 8 s of backoff), then `rm` works.
    env.sim.faults().fail_command("rm", 500, 6);
    env.err(
        "environmentReleaseLease",
        env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
    )
    .await;
    let failed = Instant::now();
    let mut degraded = Value::Null;
    let seen = eventually_async(Duration::from_secs(40), async || {
        degraded = env.ok("health", json!({})).await;
        degraded["status"] == "degraded"
    })
    .await;
    assert!(seen, "health never degraded: {degraded}");
    let message = degraded["message"].as_str().unwrap().to_string();
    println!(
        "health while rm keeps failing ({:?} after the release): {message}",
        failed.elapsed()
    );
    assert!(
        message.contains(&vm) && message.contains("500"),
        "{message}"
    );
    assert!(!message.contains(env.sim.token()));

    // The operator sees what the reconciler waits for: the VM, why, since when, the next try.
    let listing = orphans_command(&env, &[]).await;
    let pending = &listing["pending"][0];
    println!("orphans while rm keeps failing: {pending}");
    assert_eq!(pending["name"], json!(vm), "{listing}");
    assert_eq!(pending["reason"], "failed-delete");
    assert!(pending["attempts"].as_u64().unwrap() >= 5, "{pending}");
    assert!(
        pending["lastError"].as_str().unwrap().contains("500"),
        "{pending}"
    );
    let time = |k: &str| {
        paperclip_exe_dev::timestamp::parse_iso8601_ms(pending[k].as_str().unwrap()).unwrap()
    };
    assert!(
        time("since") <= wall_ms() && time("nextTry") >= time("since"),
        "{pending}"
    );

    let l = deleted_vm(&env, Duration::from_secs(60)).await;
    println!(
        "rm failing 6 times: deleted {:?} after the failed release",
        l.deleted.unwrap().saturating_duration_since(failed)
    );
    assert!(
        eventually_async(Duration::from_secs(10), async || {
            env.ok("health", json!({})).await["status"] == "ok"
        })
        .await
    );
    env.finish().await;
}

/// Poll an async condition every 200 ms until it holds or `within` passes.
async fn eventually_async(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_while_an_entry_is_pending_resumes_it() {
    // The token reaches the new worker only as EXE_API_KEY (as when it is set for the plugin).
    let mut env = env_with(Vec::new()).await;
    env.sim
        .faults()
        .complete_after_abandon("new", Duration::from_secs(12), 1);
    env.err(
        "environmentAcquireLease",
        env.params(json!({"runId": run_id("restart")})),
    )
    .await;
    assert_eq!(ledger_files(&env).len(), 1);
    env.kill_worker().await;
    let restarted = Instant::now();
    env.start_worker(&[("EXE_API_KEY".into(), env.sim.token().into())])
        .await;
    // No Paperclip call after `initialize`: the new worker resumes the entry on its own.
    let l = deleted_vm(&env, Duration::from_secs(45)).await;
    let took = lived(&l);
    println!(
        "worker killed and restarted while an entry was pending: the VM appeared {:?} after the \
         restart and was deleted {took:?} after appearing (bound {BOUND:?})",
        l.created.saturating_duration_since(restarted)
    );
    assert!(l.created > restarted, "the VM appeared after the restart");
    assert!(took <= BOUND, "{took:?}");
    assert!(eventually(Duration::from_secs(5), || ledger_files(&env).is_empty()).await);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_answering_429_is_retried_no_sooner_than_retry_after() {
    let env = env_with(Vec::new()).await;
    env.sim
        .faults()
        .complete_after_abandon("new", Duration::from_secs(6), 1);
    env.err(
        "environmentAcquireLease",
        env.params(json!({"runId": run_id("limited")})),
    )
    .await;
    // From now on (the reconciler's work), three `ls` answer 429 with Retry-After: 2.
    let before = env.sim.api_log().len();
    env.sim.faults().rate_limit_command("ls", 2, 3);
    let l = deleted_vm(&env, Duration::from_secs(40)).await;
    let took = lived(&l);
    let calls: Vec<_> = env.sim.api_log()[before..]
        .iter()
        .filter(|c| c.command == "ls")
        .cloned()
        .collect();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        3,
        "{statuses:?}"
    );
    let after_429: Vec<Duration> = calls
        .windows(2)
        .filter(|w| w[0].status == 429)
        .map(|w| w[1].at.unwrap() - w[0].at.unwrap())
        .collect();
    println!(
        "ls answering 429 (Retry-After 2 s) 3 times: statuses {statuses:?}, the next ls came \
         {after_429:?} after each 429; the VM was deleted {took:?} after appearing (bound {BOUND:?})"
    );
    assert!(
        after_429.iter().all(|d| *d >= Duration::from_secs(2)),
        "{after_429:?}"
    );
    assert!(took <= BOUND, "{took:?}");
    assert!(eventually(Duration::from_secs(5), || ledger_files(&env).is_empty()).await);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_with_an_empty_ledger_makes_no_api_call() {
    let env = env_with(Vec::new()).await;
    // A lease comes and goes: the ledger is empty again afterwards.
    let lease = env.acquire(&run_id("idle")).await;
    env.release(&lease).await;
    assert!(ledger_files(&env).is_empty());
    let before = env.sim.api_log().len();
    // The claim is about a 60 s window of idleness, so the window is the measurement.
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let extra: Vec<String> = env.sim.api_log()[before..]
        .iter()
        .map(|c| c.body.clone())
        .collect();
    println!(
        "idle worker, empty ledger: {} API requests in {window:?} (before: {before})",
        extra.len()
    );
    assert!(extra.is_empty(), "{extra:?}");
    env.finish().await;
}
