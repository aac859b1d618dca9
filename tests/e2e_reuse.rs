//! `reuseLease`: release keeps the VM, `cancelActiveWork` stops its running work, destroy
//! removes it.
//!
//! Alone in its own test binary: cancelling active work kills every process carrying an
//! execution marker in the "VM", and the simulator's VMs share this machine's `/proc`, so it
//! would also end executions of tests running next to it.

mod e2e_support;

use std::time::Duration;

use e2e_support::{eventually, run_id, Env, EnvOptions};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_lease_release_keeps_the_vm_then_destroy() {
    let env = Env::start_with(EnvOptions {
        config_extra: json!({"reuseLease": true}),
        ..EnvOptions::default()
    })
    .await;
    let lease = env.acquire(&run_id("reuse")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    assert_eq!(lease["metadata"]["reuseLease"], true);

    // plain release: VM kept, no receipt
    assert_eq!(env.release(&lease).await, Value::Null);
    assert_eq!(env.sim.vm_names(), vec![vm.clone()]);
    let x = env.sh(&lease, "echo still-here").await;
    assert_eq!(x["stdout"], "still-here\n");

    // release with cancelActiveWork stops running work but keeps the VM
    let sleeper = env.exec_params(&lease, "sh", &["-c", "echo started; sleep 30"], json!({}));
    let running = env.worker().call("environmentExecute", sleeper);
    let release = async {
        // Once the command has printed, it is running: release then has work to cancel.
        let mut started = false;
        assert!(
            eventually(Duration::from_secs(30), || {
                started |= env.take_notifications().iter().any(|n| {
                    n["method"] == "execute.log"
                        && n["params"]["chunk"]
                            .as_str()
                            .is_some_and(|c| c.contains("started"))
                });
                started
            })
            .await,
            "the command never started"
        );
        env.ok(
            "environmentReleaseLease",
            env.params(json!({
                "providerLeaseId": vm,
                "leaseMetadata": lease["metadata"],
                "cancelActiveWork": true,
            })),
        )
        .await
    };
    let started = std::time::Instant::now();
    let (ran, receipt) = tokio::join!(running, release);
    let ran = ran.unwrap();
    assert_eq!(receipt, json!({"providerLeaseId": vm, "state": "stopped"}));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the running command was stopped"
    );
    let ran = &ran["result"];
    assert_eq!(ran["stdout"], "started\n", "{ran}");
    assert_ne!(ran["exitCode"], 0, "{ran}");
    assert_eq!(env.sim.vm_names(), vec![vm.clone()]);

    // resume works on the kept VM, then destroy removes it
    let resumed = env
        .ok(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(resumed["providerLeaseId"], vm);
    let receipt = env.destroy(&resumed).await;
    assert_eq!(
        receipt,
        json!({"providerLeaseId": vm, "state": "destroyed"})
    );
    assert!(eventually(Duration::from_secs(2), || env.sim.vm_names().is_empty()).await);
    env.finish().await;
}
