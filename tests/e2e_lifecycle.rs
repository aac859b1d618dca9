//! Every provider method through the real worker binary, against the simulator.

mod e2e_support;

use std::time::Duration;

use e2e_support::{live_output, run_id, Env};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_method_through_the_worker() {
    let env = Env::start().await;

    // initialize announced every method (checked in Env::start); validate: good and bad config.
    let v = env
        .ok(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": env.config}),
        )
        .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(v["normalizedConfig"]["apiUrl"], env.sim.api_url());
    assert_eq!(v["normalizedConfig"]["timeoutMs"], 60_000);
    let bad = env
        .ok(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": env.config_with(json!({"env": {"1BAD": "x"}}))}),
        )
        .await;
    assert_eq!(bad["ok"], false, "{bad}");
    assert!(bad["errors"][0].as_str().unwrap().contains("1BAD"), "{bad}");
    assert!(bad.get("normalizedConfig").is_none(), "{bad}");

    // probe: create, SSH, inspect, delete.
    let probe = env.ok("environmentProbe", env.params(json!({}))).await;
    assert_eq!(probe["ok"], true, "{probe}");
    let probe_vm = probe["metadata"]["vmName"].as_str().unwrap().to_string();
    assert!(probe_vm.starts_with("paperclip-probe-"), "{probe}");
    assert_eq!(
        probe["summary"],
        format!("Connected to exe.dev VM {probe_vm}.")
    );
    let codes: Vec<&str> = probe["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["create-vm", "ssh-ready", "inspect", "delete-vm"]);
    assert!(probe["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["severity"] == "info"));
    assert!(env.sim.vm_names().is_empty(), "the probe VM is deleted");
    assert_eq!(env.api_calls("rm").len(), 1);

    // acquire
    let lease = env.acquire(&run_id("life")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    assert_eq!(env.sim.vm_names(), vec![vm.clone()]);
    let home = env.sim.vm_home(&vm).unwrap();
    let remote_cwd = home.join("paperclip-workspace");
    let meta = &lease["metadata"];
    assert_eq!(meta["provider"], "exe-dev");
    assert_eq!(meta["vmName"], vm);
    assert_eq!(meta["sshDest"], format!("{vm}.exe.xyz"));
    assert_eq!(meta["remoteCwd"], remote_cwd.to_str().unwrap());
    assert_eq!(meta["resumedLease"], false);
    assert_eq!(meta["reuseLease"], false);
    assert!(meta["shellCommand"] == "bash" || meta["shellCommand"] == "sh");
    assert!(remote_cwd.is_dir(), "acquire created the workspace");
    let new_body = &env.api_calls("new")[1].1;
    assert!(new_body.contains(&format!("--name='{vm}'")), "{new_body}");

    // realize: the lease's cwd; and, for a lease without one, the workspace's remotePath
    // (created over SSH).
    let r = env
        .ok(
            "environmentRealizeWorkspace",
            env.params(json!({"lease": lease, "workspace": {"localPath": "/host/ws"}})),
        )
        .await;
    assert_eq!(r["cwd"], remote_cwd.to_str().unwrap());
    assert_eq!(r["metadata"]["remoteCwd"], remote_cwd.to_str().unwrap());
    let other = home.join("other ws/it's");
    let mut bare = lease.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("remoteCwd");
    let r = env
        .ok(
            "environmentRealizeWorkspace",
            env.params(json!({"lease": bare, "workspace": {"remotePath": other}})),
        )
        .await;
    assert_eq!(r["cwd"], other.to_str().unwrap());
    assert!(other.is_dir(), "realize created {}", other.display());

    // execute: default cwd is the lease's, stdout/stderr/exit code.
    let x = env
        .sh(
            &lease,
            "pwd; echo to-stderr >&2; printf '%s' \"$PAPERCLIP_EXEC_ID\" | wc -c; exit 3",
        )
        .await;
    assert_eq!(
        x["stdout"],
        format!("{}\n16\n", remote_cwd.display()),
        "{x}"
    );
    assert_eq!(x["stderr"], "to-stderr\n");
    assert_eq!(x["exitCode"], 3);
    assert_eq!(x["timedOut"], false);
    assert_eq!(x["metadata"]["vmName"], vm);
    // explicit cwd, stdin
    let x = env
        .exec(
            &lease,
            "sh",
            &["-c", "pwd; cat"],
            json!({"cwd": other, "stdin": "from stdin\n"}),
        )
        .await;
    assert_eq!(
        x["stdout"],
        format!("{}\nfrom stdin\n", other.display()),
        "{x}"
    );
    assert_eq!(x["exitCode"], 0);
    // A lease without a VM does not run anything.
    let x = env
        .exec(&json!({"providerLeaseId": null}), "true", &[], json!({}))
        .await;
    assert_eq!(x["exitCode"], 1);
    assert_eq!(x["stderr"], "No provider lease ID available for execution.");

    // resume while present
    let resumed = env
        .ok(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(resumed["providerLeaseId"], vm);
    assert_eq!(resumed["metadata"]["resumedLease"], true);
    assert_eq!(
        resumed["metadata"]["remoteCwd"],
        remote_cwd.to_str().unwrap()
    );

    // release (reuseLease false) destroys
    let receipt = env.release(&lease).await;
    assert_eq!(
        receipt,
        json!({"providerLeaseId": vm, "state": "destroyed"})
    );
    assert!(env.sim.vm_names().is_empty());
    assert!(!home.exists());

    // resume after the VM is gone
    let gone = env
        .ok(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(gone["providerLeaseId"], Value::Null, "{gone}");
    assert_eq!(gone["metadata"]["expired"], true, "{gone}");

    // destroy of an already-gone VM is fine
    let receipt = env.destroy(&lease).await;
    assert_eq!(
        receipt,
        json!({"providerLeaseId": vm, "state": "destroyed"})
    );
    // release/destroy without a lease id: nothing to do
    for m in ["environmentReleaseLease", "environmentDestroyLease"] {
        let r = env
            .ok(m, env.params(json!({"providerLeaseId": null})))
            .await;
        assert_eq!(r, Value::Null, "{m}");
    }
    // health
    let h = env.ok("health", json!({})).await;
    assert_eq!(h["status"], "ok", "{h}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_output_streams_execute_log() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("live")).await;
    env.take_notifications();
    let params = env.exec_params(
        &lease,
        "sh",
        &[
            "-c",
            "i=0; while [ $i -lt 5 ]; do echo \"out $i é€\"; echo \"err $i\" >&2; sleep 0.2; i=$((i+1)); done; yes 'ü😀x' | head -n 40000",
        ],
        json!({}),
    );
    let invocation = params["paperclipInvocation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The first chunk must arrive while the command still runs (live, not at the end).
    let mut first_live = None;
    let mut kept: Vec<Value> = Vec::new();
    let started = std::time::Instant::now();
    let resp = {
        let call = env.worker().call("environmentExecute", params);
        tokio::pin!(call);
        loop {
            tokio::select! {
                r = &mut call => break r.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if first_live.is_none() {
                        let notes = env.take_notifications();
                        if notes.iter().any(|n| n["method"] == "execute.log") {
                            first_live = Some(started.elapsed());
                        }
                        // keep them for the comparison below
                        kept.extend(notes);
                    }
                }
            }
        }
    };
    let total = started.elapsed();
    let x = &resp["result"];
    assert_eq!(x["exitCode"], 0, "{resp}");
    let mut expected_out = String::new();
    for i in 0..5 {
        expected_out.push_str(&format!("out {i} é€\n"));
    }
    expected_out.push_str(&"ü😀x\n".repeat(40_000));
    assert_eq!(x["stdout"].as_str().unwrap(), expected_out);
    assert_eq!(x["stderr"], "err 0\nerr 1\nerr 2\nerr 3\nerr 4\n");
    let first_live = first_live.expect("execute.log arrived before the result");
    assert!(
        first_live + Duration::from_millis(500) < total,
        "first chunk at {first_live:?}, result at {total:?}"
    );
    let mut notes = kept;
    notes.extend(env.take_notifications());
    let (out, err) = live_output(&notes, &invocation);
    assert_eq!(out, expected_out, "streamed stdout equals the final stdout");
    assert_eq!(err, x["stderr"].as_str().unwrap());
    // every chunk carries the invocation id and is a reasonable size
    for n in notes.iter().filter(|n| n["method"] == "execute.log") {
        assert_eq!(n["paperclipInvocationId"], invocation);
        assert!(n["params"]["chunk"].as_str().unwrap().chars().count() <= 1_000_000);
    }
    env.destroy(&lease).await;
    env.finish().await;
}

/// The leak check has teeth: a scenario that leaves a VM behind fails its test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "VMs leaked")]
async fn a_test_that_leaves_a_vm_fails() {
    let env = Env::start().await;
    env.acquire(&run_id("leak")).await;
    env.finish().await;
}
