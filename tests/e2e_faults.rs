//! exe.dev API and SSH faults, each with its expected result and zero leaked VMs.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{eventually, run_id, Env, EnvOptions};
use exe_dev_sim::{SimOptions, ANY};
use serde_json::{json, Value};

fn message(err: &Value) -> &str {
    err["message"].as_str().unwrap_or_default()
}

fn statuses(env: &Env, cmd: &str) -> Vec<u16> {
    env.api_calls(cmd).into_iter().map(|(s, _)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_500_fails_cleanly() {
    // A short timeout: a 500 leaves the outcome unknown, so the name is watched for the cleanup
    // budget (min(timeoutMs, 20 s)) before the call gives up.
    let env = Env::start_with(EnvOptions {
        timeout_ms: 4000,
        ..EnvOptions::default()
    })
    .await;
    env.sim.faults().fail_command("new", 500, 1);
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("n500")})),
        )
        .await;
    assert_eq!(err["data"]["kind"], "api", "{err}");
    assert_eq!(err["data"]["status"], 500, "{err}");
    assert!(
        message(&err).starts_with("exe.dev API command failed (500) for: new --json"),
        "{err}"
    );
    assert!(message(&err).contains("internal error"), "{err}");
    assert!(
        message(&err).contains("exe.dev had a server-side problem"),
        "{err}"
    );
    // Not retried blindly; looked up until the cleanup budget was spent (nothing there).
    assert_eq!(statuses(&env, "new"), [500]);
    let ls = statuses(&env, "ls");
    assert!(ls.len() > 1 && ls.iter().all(|s| *s == 200), "{ls:?}");
    assert!(env.sim.vm_names().is_empty());

    // The probe reports the same as a failed step and still tries to delete.
    env.sim.faults().fail_command("new", 500, 1);
    let probe = env.ok("environmentProbe", env.params(json!({}))).await;
    assert_eq!(probe["ok"], false, "{probe}");
    assert_eq!(probe["diagnostics"][0]["code"], "create-vm");
    assert_eq!(probe["diagnostics"][0]["severity"], "error");
    assert!(
        probe["metadata"]["error"]
            .as_str()
            .unwrap()
            .contains("(500)"),
        "{probe}"
    );
    let last = probe["diagnostics"].as_array().unwrap().last().unwrap();
    assert_eq!(last["code"], "delete-vm", "{probe}");
    assert!(
        last["message"].as_str().unwrap().contains("already gone"),
        "{probe}"
    );

    // The next acquire works normally.
    let lease = env.acquire(&run_id("n500-ok")).await;
    env.release(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_response_lost_after_create_adopts_the_vm() {
    let env = Env::start().await;
    // The connection drops after the VM was created.
    env.sim.faults().lose_response("new", 1);
    let lease = env.acquire(&run_id("lost")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    assert_eq!(env.sim.vm_names(), vec![vm.clone()]);
    assert_eq!(statuses(&env, "new"), [0]);
    assert_eq!(statuses(&env, "ls"), [200]);
    let x = env.sh(&lease, "echo adopted").await;
    assert_eq!(x["stdout"], "adopted\n");

    // A proxy answers 500 after the VM was created: adopted too.
    env.sim.faults().lose_response_with_status("new", 500, 1);
    let lease2 = env.acquire(&run_id("lost500")).await;
    let vm2 = lease2["providerLeaseId"].as_str().unwrap().to_string();
    assert_eq!(statuses(&env, "new"), [0, 500]);
    let mut names = vec![vm.clone(), vm2.clone()];
    names.sort();
    assert_eq!(env.sim.vm_names(), names);

    assert_eq!(env.release(&lease).await["state"], "destroyed");
    assert_eq!(env.release(&lease2).await["state"], "destroyed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_new_past_the_client_timeout_leaves_nothing() {
    let env = Env::start_with(EnvOptions {
        timeout_ms: 3000,
        ..EnvOptions::default()
    })
    .await;
    // `new` takes effect at once, but its answer comes after the client gave up.
    env.sim
        .faults()
        .delay_command("new", Duration::from_secs(6));
    let started = Instant::now();
    let resp = env
        .call(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("slow")})),
        )
        .await;
    let took = started.elapsed();
    env.sim.faults().delay_command("new", Duration::ZERO);
    assert!(
        took < Duration::from_secs(8),
        "acquire took {took:?} with timeoutMs 3000"
    );
    // The VM was adopted by name, but the deadline was spent: it is deleted again.
    let err = &resp["error"];
    assert_eq!(err["data"]["kind"], "timeout", "{resp}");
    let name = env.api_calls("ls")[0]
        .1
        .trim_start_matches("ls --json ")
        .trim_matches('\'')
        .to_string();
    assert!(message(err).contains(&name), "{resp}");
    assert_eq!(statuses(&env, "rm"), [200], "the adopted VM was removed");
    assert!(env.sim.vm_names().is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_503_and_429_are_retried_rm_429_too() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("retry")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let resume = || env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]}));
    let ls_before = env.api_calls("ls").len();
    env.sim.faults().fail_command("ls", 503, 2);
    let r = env.ok("environmentResumeLease", resume()).await;
    assert_eq!(r["providerLeaseId"], vm, "{r}");
    assert_eq!(statuses(&env, "ls")[ls_before..], [503, 503, 200]);

    env.sim.faults().fail_command("ls", 429, 1);
    let r = env.ok("environmentResumeLease", resume()).await;
    assert_eq!(r["providerLeaseId"], vm, "{r}");
    assert_eq!(statuses(&env, "ls")[ls_before + 3..], [429, 200]);

    // `new` is not idempotent: a 429 is not retried (and nothing was created).
    env.sim.faults().fail_command("new", 429, 1);
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("new429")})),
        )
        .await;
    assert_eq!(err["data"]["status"], 429, "{err}");
    assert!(message(&err).contains("rate-limited"), "{err}");
    assert_eq!(statuses(&env, "new"), [200, 429]);

    // rm 429 twice, then it works.
    env.sim.faults().fail_command("rm", 429, 2);
    let receipt = env.destroy(&lease).await;
    assert_eq!(
        receipt,
        json!({"providerLeaseId": vm, "state": "destroyed"})
    );
    assert_eq!(statuses(&env, "rm"), [429, 429, 200]);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_401_names_the_token() {
    let env = Env::start().await;
    let wrong = env.config_with(json!({"apiKey": "exe1.not-the-right-token"}));
    let err = env
        .err(
            "environmentAcquireLease",
            env.params_with_config(&wrong, json!({"runId": run_id("401")})),
        )
        .await;
    assert_eq!(err["data"]["status"], 401, "{err}");
    assert!(message(&err).contains("invalid token"), "{err}");
    assert!(
        message(&err).contains("the API token is invalid or expired"),
        "{err}"
    );
    assert!(message(&err).contains("apiKey"), "{err}");
    assert!(!message(&err).contains("not-the-right-token"), "{err}");
    let probe = env
        .ok(
            "environmentProbe",
            env.params_with_config(&wrong, json!({})),
        )
        .await;
    assert_eq!(probe["ok"], false);
    assert!(
        probe["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("API token is invalid"),
        "{probe}"
    );
    assert!(env.api_calls("new").iter().all(|(s, _)| *s == 401));
    assert!(env.sim.vm_names().is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_403_names_rm_and_the_token_cmds() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("403")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    env.sim.faults().fail_command("rm", 403, 1);
    let err = env
        .err(
            "environmentReleaseLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert_eq!(err["data"]["status"], 403, "{err}");
    assert_eq!(err["data"]["command"], format!("rm --json '{vm}'"), "{err}");
    assert!(message(&err).contains("`rm`"), "{err}");
    assert!(
        message(&err).contains("the token's cmds do not include `rm`"),
        "{err}"
    );
    assert_eq!(statuses(&env, "rm"), [403], "403 is not retried");
    assert_eq!(
        env.sim.vm_names(),
        vec![vm.clone()],
        "the VM is still there"
    );
    // With a token that may `rm`, the VM goes away.
    let receipt = env.destroy(&lease).await;
    assert_eq!(
        receipt,
        json!({"providerLeaseId": vm, "state": "destroyed"})
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_rm_permission_is_reported() {
    // A token with exe.dev's default permissions (no `rm`): the simulator's own 403.
    let sim = SimOptions {
        allowed_cmds: Some(vec!["new".into(), "ls".into(), "whoami".into()]),
        ..SimOptions::default()
    };
    let env = Env::start_with(EnvOptions {
        sim,
        ..EnvOptions::default()
    })
    .await;
    // Destroying a VM that does not exist still needs `rm`.
    let err = env
        .err(
            "environmentDestroyLease",
            env.params(json!({"providerLeaseId": "paperclip-never-created"})),
        )
        .await;
    assert_eq!(err["data"]["status"], 403, "{err}");
    assert!(
        message(&err).contains("the token's cmds do not include `rm`"),
        "{err}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_refused_is_retried_until_ready() {
    let env = Env::start().await;
    // The first two connections are closed before the SSH handshake.
    env.sim.faults().drop_ssh(ANY, 2);
    let started = Instant::now();
    let lease = env.acquire(&run_id("drop")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried with backoff"
    );
    let x = env.sh(&lease, "echo reachable").await;
    assert_eq!(x["stdout"], "reachable\n");
    // A dropped connection (the pooled one is cut too): the command never ran, so the
    // execute is an error, not a result; the next one reconnects.
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    env.sim.faults().drop_ssh(&vm, 1);
    // Once the pooled connection has seen the cut, the execute's reconnect is the connection
    // that is dropped. (Racing the cut instead fails the execute too, but the dropped
    // connection would then be the next execute's.)
    assert!(
        eventually(Duration::from_secs(10), || env.ssh_masters().is_empty()).await,
        "the pooled connection survived the cut"
    );
    let err = env
        .err(
            "environmentExecute",
            env.exec_params(&lease, "sh", &["-c", "echo hi"], json!({})),
        )
        .await;
    assert_eq!(err["data"]["kind"], "ssh", "{err}");
    assert!(
        message(&err).starts_with(&format!("Failed to execute commands on exe.dev VM {vm}: ")),
        "{err}"
    );
    let x = env.sh(&lease, "echo again").await;
    assert_eq!(x["stdout"], "again\n");
    // Once the VM is gone, SSH to it is refused: an execute is an error, not a result.
    assert_eq!(env.release(&lease).await["state"], "destroyed");
    let err = env
        .err(
            "environmentExecute",
            env.exec_params(&lease, "sh", &["-c", "echo hi"], json!({})),
        )
        .await;
    assert_eq!(err["data"]["kind"], "ssh", "{err}");
    assert!(
        message(&err).starts_with(&format!("Failed to execute commands on exe.dev VM {vm}: ")),
        "{err}"
    );

    // A VM that refuses connections for 2 s: acquire waits for it.
    env.sim
        .faults()
        .set_ssh_ready_delay(Some(Duration::from_secs(2)));
    let started = Instant::now();
    let lease = env.acquire(&run_id("slowboot")).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(env.release(&lease).await["state"], "destroyed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_never_ready_times_out_and_removes_the_vm() {
    let env = Env::start_with(EnvOptions {
        timeout_ms: 4000,
        ..EnvOptions::default()
    })
    .await;
    env.sim
        .faults()
        .set_ssh_ready_delay(Some(Duration::from_secs(600)));
    let started = Instant::now();
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("never")})),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(err["data"]["kind"], "timeout", "{err}");
    assert!(
        message(&err).contains("was not reachable over SSH within 4000 ms"),
        "{err}"
    );
    let name = env.api_calls("rm")[0]
        .1
        .trim_start_matches("rm --json ")
        .trim_matches('\'')
        .to_string();
    // (Through the simulator's gateway a refused VM port shows as a closed connection.)
    assert!(
        message(&err).contains(&format!("Failed to inspect exe.dev VM {name}: ")),
        "{err}"
    );
    assert_eq!(statuses(&env, "rm"), [200]);
    assert!(env.sim.vm_names().is_empty());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_marker_tells_the_operator_and_removes_the_vm() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("onb-ok")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();

    env.sim.faults().set_onboarding(ANY, true);
    // acquire: fatal at once (no retries), and the new VM is deleted.
    let started = Instant::now();
    let err = env
        .err(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("onb")})),
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err["data"]["kind"], "ssh", "{err}");
    assert!(
        message(&err).contains("not registered with exe.dev"),
        "{err}"
    );
    assert!(message(&err).contains("running `ssh exe.dev`"), "{err}");
    assert_eq!(env.sim.vm_names(), vec![vm.clone()], "only the first VM");
    assert_eq!(statuses(&env, "rm"), [200]);

    // execute on an existing lease: an error naming the fix, not the marker as output.
    let err = env
        .err(
            "environmentExecute",
            env.exec_params(&lease, "sh", &["-c", "echo hi"], json!({})),
        )
        .await;
    assert!(message(&err).contains("running `ssh exe.dev`"), "{err}");
    assert!(
        message(&err).starts_with(&format!("Failed to execute commands on exe.dev VM {vm}")),
        "{err}"
    );
    // probe: failed, and its VM deleted.
    let probe = env.ok("environmentProbe", env.params(json!({}))).await;
    assert_eq!(probe["ok"], false);
    assert!(
        probe["metadata"]["error"]
            .as_str()
            .unwrap()
            .contains("`ssh exe.dev`"),
        "{probe}"
    );
    assert_eq!(env.sim.vm_names(), vec![vm.clone()]);

    env.sim.faults().set_onboarding(ANY, false);
    assert_eq!(env.destroy(&lease).await["state"], "destroyed");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_url_the_host_refuses_is_caught_at_validate_and_both_errors_name_the_remedy() {
    let env = Env::start().await;
    // The worker allows the simulator's authority (`--allow-http`), not this one.
    let refused = "http://127.0.0.1:9/exec";
    let remedy = r#"add "--allow-http", "127.0.0.1:9" to the JSON array in bin/worker-args.json of the installed plugin package"#;

    let config = env.config_with(json!({"apiUrl": refused}));
    let v = env
        .ok(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": config}),
        )
        .await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v.get("normalizedConfig").is_none(), "{v}");
    let first = v["errors"][0].as_str().unwrap();
    assert!(
        first.starts_with("apiUrl http://127.0.0.1:9/exec is not allowed"),
        "{v}"
    );
    assert!(first.contains(remedy), "{v}");
    assert!(!first.contains(env.sim.token()), "{v}");

    // The saved config (from before the host's policy changed, say) fails at runtime with the
    // same remedy, before any connection is made.
    let err = env
        .err(
            "environmentAcquireLease",
            env.params_with_config(&config, json!({"runId": run_id("refused")})),
        )
        .await;
    assert_eq!(err["data"]["kind"], "denied", "{err}");
    assert!(message(&err).contains(remedy), "{err}");
    assert!(
        err["data"]["remedy"].as_str().unwrap().contains(remedy),
        "{err}"
    );
    assert!(!message(&err).contains(env.sim.token()), "{err}");

    // The allowed authority validates as before.
    let v = env
        .ok(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": env.config}),
        )
        .await;
    assert_eq!(v["ok"], true, "{v}");
    env.finish().await;
}
