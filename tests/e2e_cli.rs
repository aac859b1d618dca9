//! The operator commands (`validate`, `probe`, `exec`) through the real binary, against the
//! simulator: what an operator runs when a Paperclip run fails.

mod e2e_support;

use std::process::Output;

use e2e_support::{worker_binary, Env};
use serde_json::{json, Value};

/// Run `paperclip-wasm-host <args>` with the simulator's grants (inserted after the
/// subcommand, before any `--`), off the async runtime.
async fn cli(env: &Env, args: Vec<String>) -> Output {
    let mut full = vec![args[0].clone()];
    full.extend([
        "--state-dir".to_string(),
        env.state.path().display().to_string(),
        "--allow-http".to_string(),
        env.sim.api_authority(),
        "--ssh-config".to_string(),
        env.sim.ssh_config_path().display().to_string(),
    ]);
    full.extend(args.into_iter().skip(1));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(worker_binary())
            .args(&full)
            .env("PAPERCLIP_WASM_HOST_LOG", "warn")
            .output()
            .expect("running the CLI")
    })
    .await
    .unwrap()
}

fn write_config(env: &Env, config: &Value) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new_in(env.state.path()).unwrap();
    std::fs::write(f.path(), config.to_string()).unwrap();
    f
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_probe_and_exec_from_the_command_line() {
    let env = Env::start().await;
    let good = write_config(&env, &env.config);
    let cfg_arg = |f: &tempfile::NamedTempFile| f.path().display().to_string();

    // validate: the normalised config on stdout, exit 0.
    let out = cli(
        &env,
        vec!["validate".into(), "--config".into(), cfg_arg(&good)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["normalizedConfig"]["timeoutMs"], 60_000);

    // An invalid config: the seed's error text, exit 1.
    let bad = write_config(&env, &env.config_with(json!({"sshPort": 0})));
    let out = cli(
        &env,
        vec!["validate".into(), "--config".into(), cfg_arg(&bad)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("sshPort must be between 1 and 65535."),
        "{}",
        text(&out.stderr)
    );

    // probe: each step on stderr, the result on stdout, the probe VM gone.
    let out = cli(
        &env,
        vec!["probe".into(), "--config".into(), cfg_arg(&good)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for step in ["create-vm", "ssh-ready", "inspect", "delete-vm"] {
        assert!(stderr.contains(step), "{step} missing from {stderr}");
    }
    assert!(env.sim.vm_names().is_empty());

    // exec in a VM by name: its stdout/stderr verbatim and its exit code.
    let lease = env.acquire("cli-run").await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let out = cli(
        &env,
        vec![
            "exec".into(),
            "--config".into(),
            cfg_arg(&good),
            "--vm".into(),
            vm.clone(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            "echo out; echo err >&2; exit 5".into(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        text(&out.stderr).ends_with("err\n"),
        "{}",
        text(&out.stderr)
    );

    // A token the API refuses: a clear error naming the cause, exit 1, no secret echoed.
    let wrong = write_config(&env, &env.config_with(json!({"apiKey": "wrong-token-123"})));
    let out = cli(
        &env,
        vec!["probe".into(), "--config".into(), cfg_arg(&wrong)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("401"), "{all}");
    assert!(!all.contains("wrong-token-123"), "the token leaked: {all}");
    assert!(!all.contains(env.sim.token()), "the token leaked: {all}");

    env.destroy(&lease).await;
    env.finish().await;
}
