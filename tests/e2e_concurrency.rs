//! 8 leases × 8 concurrent executes: 64 calls in flight through one worker at the same time.

mod e2e_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e_support::{live_output, run_id, Env, Merged};
use serde_json::{json, Value};
use tokio::task::JoinSet;

const LEASES: usize = 8;
const PER_LEASE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_leases_times_eight_concurrent_executes() {
    let env = Arc::new(Env::start().await);

    // Acquire the 8 leases concurrently too.
    let mut acquires = JoinSet::new();
    for i in 0..LEASES {
        let env = env.clone();
        acquires.spawn(async move { (i, env.acquire(&run_id(&format!("conc{i}"))).await) });
    }
    let mut leases: Vec<(usize, Value)> = acquires.join_all().await;
    leases.sort_by_key(|(i, _)| *i);
    let mut names: Vec<String> = leases
        .iter()
        .map(|(_, l)| l["providerLeaseId"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), LEASES);
    assert_eq!(env.sim.vm_names(), names);
    env.take_notifications();

    // A barrier on this machine (the simulated VMs are local processes): every execute checks
    // in, then waits (up to 30 s) until all 64 have, so they must all be running at once.
    let barrier = tempfile::tempdir().unwrap();
    let script = "touch \"$BARRIER/$TOKEN\"; i=0; \
        while [ \"$(ls \"$BARRIER\" | wc -l)\" -lt \"$ALL\" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
        printf '%s|%s|%s|%s\\n' \"$TOKEN\" \"$1\" \"$(ls \"$BARRIER\" | wc -l)\" \"$(basename \"$HOME\")\"; \
        printf '%s' \"$TOKEN\" >&2";
    let started = Instant::now();
    let mut calls = JoinSet::new();
    for (i, lease) in &leases {
        for j in 0..PER_LEASE {
            let token = format!("tok-{i}-{j}-{}", e2e_support::unique());
            let arg = format!("arg {i}/{j} ü");
            let params = env
                .exec_params(lease, "sh", &["-c", script, "sh", &arg], json!({}))
                .merged(json!({
                    "env": {
                        "TOKEN": token,
                        "BARRIER": barrier.path(),
                        "ALL": (LEASES * PER_LEASE).to_string(),
                    },
                }));
            let env = env.clone();
            let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
            calls.spawn(async move {
                let inv = params["paperclipInvocation"]["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let x = env.ok("environmentExecute", params).await;
                (vm, token, arg, inv, x)
            });
        }
    }
    let results = calls.join_all().await;
    let took = started.elapsed();
    assert_eq!(results.len(), LEASES * PER_LEASE);
    let notes = env.take_notifications();
    for (vm, token, arg, inv, x) in &results {
        assert_eq!(x["exitCode"], 0, "{x}");
        assert_eq!(x["timedOut"], false, "{x}");
        // Its own token and argument, all 64 checked in, and run in its own lease's VM.
        let vm_dir = env
            .sim
            .vm_home(vm)
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(vm_dir, *vm);
        assert_eq!(
            x["stdout"],
            format!("{token}|{arg}|{}|home\n", LEASES * PER_LEASE),
            "{x}"
        );
        assert_eq!(x["stderr"], token.as_str());
        assert_eq!(x["metadata"]["vmName"], vm.as_str());
        // Live output is attributed to the right invocation.
        let (out, err) = live_output(&notes, inv);
        assert_eq!(out, x["stdout"].as_str().unwrap());
        assert_eq!(err, *token);
    }
    assert!(took < Duration::from_secs(60), "64 executes took {took:?}");

    // Release all 8 concurrently.
    let mut releases = JoinSet::new();
    for (_, lease) in leases {
        let env = env.clone();
        releases.spawn(async move { env.release(&lease).await });
    }
    for r in releases.join_all().await {
        assert_eq!(r["state"], "destroyed", "{r}");
    }
    let env = Arc::try_unwrap(env).ok().expect("no other references");
    env.finish().await;
}
