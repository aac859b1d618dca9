//! An execute past its `timeoutMs` answers promptly and leaves no remote process behind.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{eventually, logs_of, processes_with_exec_id, run_id, Env};
use serde_json::{json, Value};

/// Issue 5: `timedOut` within a second of the deadline, and no remote process left. (One test,
/// so nothing else in this binary competes for the CPU while the answer time is measured.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_prompt_and_kills_the_remote_tree() {
    timeout_case(Duration::from_millis(1500 + 1000)).await;
}

/// `sleep 30` with a background grandchild, `timeoutMs` 1500; the answer must come by
/// `answer_by` after the call started.
async fn timeout_case(answer_by: Duration) {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("timeout")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    // The (quick) setup script has finished: the VM runs nothing.
    assert!(
        eventually(Duration::from_secs(10), || env.sim.vm_process_count(&vm)
            == Some(0))
        .await,
        "setup still running: {:?}",
        env.sim.vm_process_count(&vm)
    );
    env.take_notifications();

    // A command with a background grandchild; both would run for 30 s.
    let params = env.exec_params(
        &lease,
        "sh",
        &[
            "-c",
            "(sleep 30; echo late) & echo started; sleep 30; echo never",
        ],
        json!({"timeoutMs": 1500}),
    );
    let inv = params["paperclipInvocation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let x = env.ok("environmentExecute", params).await;
    let took = started.elapsed();
    assert_eq!(x["timedOut"], true, "{x}");
    assert_eq!(x["exitCode"], Value::Null, "{x}");
    assert_eq!(x["stdout"], "started\n", "{x}");
    assert!(
        took >= Duration::from_millis(1500),
        "answered before the deadline: {took:?}"
    );
    println!("timed-out execute answered after {took:?}");
    assert!(
        took <= answer_by,
        "answered {took:?} after the call started (deadline 1.5 s, limit {answer_by:?})"
    );

    // The execution's marker (from the worker's own log line) is on no process any more.
    let notes = env.take_notifications();
    let exec_id = logs_of(&notes, &inv)
        .into_iter()
        .find(|n| n["params"]["message"] == "executing on exe.dev VM")
        .and_then(|n| n["params"]["meta"]["execId"].as_str())
        .expect("the execute logged its execId")
        .to_string();
    assert_eq!(exec_id.len(), 16);
    assert!(
        eventually(Duration::from_secs(2), || processes_with_exec_id(&exec_id)
            .is_empty())
        .await,
        "processes of the timed-out command survive: {:?}",
        processes_with_exec_id(&exec_id)
    );
    // The simulator agrees: no process group of any session is left in the VM but the
    // connection's serving VM agent (which stays for the next execute).
    let leftover = || {
        env.sim
            .vm_process_groups(&vm)
            .unwrap_or_default()
            .into_iter()
            .filter(|pg| !is_serving_agent(*pg))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(Duration::from_secs(2), || leftover().is_empty()).await,
        "VM still runs process groups {:?}",
        leftover()
    );
    // And from inside the VM: no `sleep 30` of that execution (scan /proc for the marker).
    let scan = format!(
        "for d in /proc/[0-9]*; do tr '\\0' '\\n' < \"$d/environ\" 2>/dev/null | grep -qx 'PAPERCLIP_EXEC_ID={exec_id}' && echo \"$d\"; done; true"
    );
    let x = env.sh(&lease, &scan).await;
    assert_eq!(x["exitCode"], 0);
    assert_eq!(x["stdout"], "", "{x}");

    // The lease is still usable.
    let x = env.sh(&lease, "echo alive").await;
    assert_eq!(x["stdout"], "alive\n");
    env.destroy(&lease).await;
    env.finish().await;
}

/// True when `pid` is a serving VM agent (`…/paperclip-exe-dev/agent-<digest> serve`).
fn is_serving_agent(pid: i32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    matches!(args.as_slice(), [program, b"serve"]
        if String::from_utf8_lossy(program).contains("/.cache/paperclip-exe-dev/agent-"))
}
