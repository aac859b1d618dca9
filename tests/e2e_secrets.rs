//! Secret hygiene: the API token, the SSH private key and secret env values never show up in
//! anything the worker emits or leaves behind.

mod e2e_support;

use std::time::Duration;

use e2e_support::{entries_below, eventually, files_below, run_id, Env, EnvOptions};
use exe_dev_sim::ANY;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak() {
    let tmp_parent = tempfile::tempdir().unwrap();
    let tmpdir = tmp_parent.path().join("worker-tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let stderr_path = tmp_parent.path().join("worker.stderr");
    let exec_secret = format!("exec-secret-{}", e2e_support::unique());
    let vm_env_secret = format!("vm-env-secret-{}", e2e_support::unique());

    let env = Env::start_with(EnvOptions {
        stderr_file: Some(stderr_path.clone()),
        worker_env: vec![("TMPDIR".to_string(), tmpdir.display().to_string())],
        // As chatty as an operator could make it (but not the JIT compiler's own tracing).
        log_filter: Some("debug,cranelift=info,wasmtime=info".to_string()),
        config_extra: json!({"env": {"DB_PASSWORD": vm_env_secret}}),
        ..EnvOptions::default()
    })
    .await;
    let token = env.sim.token().to_string();
    let key = env.sim.client_key_pem();
    // The key's base64 body lines: any one of them showing up is a leak.
    let key_lines: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_string)
        .collect();
    assert!(!key_lines.is_empty());
    let mut secrets = vec![token.clone(), exec_secret.clone(), vm_env_secret.clone()];
    secrets.extend(key_lines);

    // Everything that comes back on stdout is collected here.
    let mut seen: Vec<Value> = Vec::new();

    // validate: Paperclip sends secret refs (UUIDs) once they exist; they are echoed, never
    // resolved.
    let refs = env.config_with(json!({
        "apiKey": "4d34fa65-1111-4222-8333-444455556666",
        "sshPrivateKey": "5e45ab76-1111-4222-8333-444455556666",
    }));
    let v = env
        .ok(
            "environmentValidateConfig",
            json!({"driverKey": "exe-dev", "config": refs}),
        )
        .await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        v["normalizedConfig"]["apiKey"],
        "4d34fa65-1111-4222-8333-444455556666"
    );
    // `env` is not a secret-ref field: validate echoes it (Paperclip stores the normalized
    // config), so the VM env secret is only checked everywhere else.
    let validate_text = v.to_string();
    assert!(validate_text.contains(&vm_env_secret));
    for s in [&token, &key] {
        assert!(!validate_text.contains(s.as_str()));
    }

    let probe = env.ok("environmentProbe", env.params(json!({}))).await;
    assert_eq!(probe["ok"], true, "{probe}");
    seen.push(probe);

    let lease = env.acquire(&run_id("secrets")).await;
    seen.push(lease.clone());
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    seen.push(
        env.ok(
            "environmentRealizeWorkspace",
            env.params(json!({"lease": lease, "workspace": {}})),
        )
        .await,
    );
    // The secret reaches the command (its length is printed), but is never echoed.
    let x = env
        .exec(
            &lease,
            "sh",
            &[
                "-c",
                "printf %s \"$SECRET_VALUE\" | wc -c; echo failing >&2; exit 3",
            ],
            json!({"env": {"SECRET_VALUE": exec_secret}}),
        )
        .await;
    assert_eq!(
        x["stdout"].as_str().unwrap().trim(),
        exec_secret.len().to_string()
    );
    assert_eq!(x["exitCode"], 3);
    seen.push(x);
    // A timed-out execute (kill path) with the secret in its environment.
    let x = env
        .exec(
            &lease,
            "sleep",
            &["10"],
            json!({"env": {"SECRET_VALUE": exec_secret}, "timeoutMs": 500}),
        )
        .await;
    assert_eq!(x["timedOut"], true);
    seen.push(x);

    // Error paths: API errors (the body even quotes the token back), SSH failures.
    env.sim.faults().fail_command_with_body(
        "ls",
        500,
        &json!({"error": format!("upstream rejected bearer {token}")}).to_string(),
        1,
    );
    let resp = env
        .call(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await;
    assert!(resp["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream rejected bearer [REDACTED]"));
    seen.push(resp);
    env.sim.faults().set_onboarding(ANY, true);
    let resp = env
        .call(
            "environmentAcquireLease",
            env.params(json!({"runId": run_id("secrets-onb")})),
        )
        .await;
    assert!(resp.get("error").is_some(), "{resp}");
    seen.push(resp);
    env.sim.faults().set_onboarding(ANY, false);
    let bad_key = env.config_with(json!({"sshPrivateKey": format!("{}\n", key.replace("OPENSSH PRIVATE KEY", "RSA PRIVATE KEY"))}));
    let resp = env
        .call(
            "environmentExecute",
            env.params_with_config(&bad_key, json!({"lease": lease, "command": "true"})),
        )
        .await;
    seen.push(resp);
    let wrong_token = env.config_with(json!({"apiKey": format!("{token}-wrong")}));
    let resp = env
        .call(
            "environmentProbe",
            env.params_with_config(&wrong_token, json!({})),
        )
        .await;
    seen.push(resp);

    seen.push(
        env.ok(
            "environmentResumeLease",
            env.params(json!({"providerLeaseId": vm, "leaseMetadata": lease["metadata"]})),
        )
        .await,
    );
    seen.push(env.release(&lease).await);
    // SSH to the deleted VM fails: an error message built from ssh's own output.
    let resp = env
        .call(
            "environmentExecute",
            env.exec_params(
                &lease,
                "sh",
                &["-c", "true"],
                json!({"env": {"SECRET_VALUE": exec_secret}}),
            ),
        )
        .await;
    assert_eq!(resp["error"]["data"]["kind"], "ssh", "{resp}");
    seen.push(resp);

    // Everything the worker sent: responses and notifications (logs, live output).
    let notes = env.take_notifications();
    assert!(
        notes.iter().any(|n| n["method"] == "log"),
        "log notifications were emitted"
    );
    let stdout_text: String = seen
        .iter()
        .chain(notes.iter())
        .map(|v| v.to_string() + "\n")
        .collect();
    let state_dir = env.state.path().to_path_buf();
    let state_files = files_below(&state_dir);
    env.finish().await;

    // stderr is complete once the worker exited.
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        stderr.contains("ssh exec") && stderr.contains("HTTP request"),
        "the worker logged at debug level: {} bytes",
        stderr.len()
    );
    // Guest logs go to Paperclip as notifications only: Paperclip records a worker's stderr as
    // warnings, so a copy there would turn every info line into one.
    assert!(
        notes
            .iter()
            .any(|n| n["method"] == "log" && n["params"]["message"] == "exe.dev API call"),
        "guest logs reach Paperclip"
    );
    assert!(
        !stderr.contains(" guest: "),
        "guest logs are not repeated on stderr"
    );
    for s in &secrets {
        let line = stdout_text.lines().find(|l| l.contains(s.as_str()));
        assert!(
            line.is_none(),
            "secret {s:?} on the worker's stdout: {line:?}"
        );
        assert!(
            !stderr.contains(s.as_str()),
            "secret {s:?} in the worker's stderr"
        );
        for f in &state_files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret {s:?} in {}",
                f.display()
            );
        }
    }
    // Pasted keys live in TMPDIR only while ssh runs.
    let left_nothing = eventually(Duration::from_secs(5), || entries_below(&tmpdir).is_empty());
    assert!(
        left_nothing.await,
        "files left in TMPDIR: {:?}",
        entries_below(&tmpdir)
    );
}

/// With no log settings (as Paperclip starts it), a worker that has nothing to warn about writes
/// nothing on stderr: Paperclip records every stderr line of a worker as a warning. Guest logs
/// still arrive, as `log` notifications.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_logging_keeps_stderr_for_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("worker.stderr");
    let env = Env::start_with(EnvOptions {
        stderr_file: Some(stderr_path.clone()),
        log_filter: None,
        ..EnvOptions::default()
    })
    .await;
    let lease = env.acquire(&run_id("quiet")).await;
    let x = env.sh(&lease, "echo out; echo err >&2").await;
    assert_eq!(
        (x["exitCode"].as_i64(), x["stdout"].as_str()),
        (Some(0), Some("out\n"))
    );
    env.destroy(&lease).await;
    let notes = env.take_notifications();
    assert!(
        notes.iter().any(|n| n["method"] == "log"),
        "guest logs arrive as notifications"
    );
    env.finish().await;
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(stderr, "", "the worker wrote to stderr");
}
