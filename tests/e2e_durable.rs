//! Durable executions through the real worker: a command outlives its SSH connection. Each
//! fault hits a running execute; the result must still be the command's own (every byte once,
//! in order, its exit code), the live `execute.log` chunks must add up to it, and the lease must
//! run the next command normally. On loopback and over the 30 ms / 100 Mbit/s link model.

mod e2e_support;

use std::time::{Duration, Instant};

use e2e_support::{eventually, live_output, run_id, Env, EnvOptions, LINK_30MS_100MBIT};
use exe_dev_sim::LinkModel;
use serde_json::{json, Value};

/// The streaming command: 18 lines over 9 s, then `finished` on stderr and exit 7.
const STREAMING: &str = "i=0; while [ $i -lt 18 ]; do echo line$i; i=$((i+1)); sleep 0.5; done; \
                         echo finished >&2; exit 7";

fn streaming_stdout() -> String {
    (0..18).map(|i| format!("line{i}\n")).collect()
}

/// What breaks the connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The host's end dies (its master connection is killed), as when a laptop's network goes.
    KillMaster,
}

fn fire(env: &Env, fault: Fault) {
    match fault {
        Fault::KillMaster => assert!(env.kill_ssh_masters() >= 1, "no master to kill"),
    }
}

/// Run `params` as an execute and fire `fault` `after` into it; returns the result (or error
/// envelope) and how long the call took.
async fn execute_with_fault(
    env: &Env,
    params: Value,
    after: Duration,
    fault: Fault,
) -> (Value, Duration) {
    let started = Instant::now();
    let call = env.call("environmentExecute", params);
    let strike = async {
        tokio::time::sleep(after).await;
        fire(env, fault);
    };
    let (resp, ()) = tokio::join!(call, strike);
    (resp, started.elapsed())
}

fn invocation(params: &Value) -> String {
    params["paperclipInvocation"]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The run directories the agent keeps on the VM (none once every result was delivered).
fn spools(env: &Env, lease: &Value) -> Vec<String> {
    let home = env
        .sim
        .vm_home(lease["providerLeaseId"].as_str().unwrap())
        .expect("the VM exists");
    std::fs::read_dir(home.join(".cache/paperclip-exe-dev/runs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

async fn streaming_survives(link: Option<LinkModel>, fault: Fault) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("durable")).await;
    let params = env.exec_params(&lease, "sh", &["-c", STREAMING], json!({}));
    let inv = invocation(&params);
    let (resp, took) = execute_with_fault(&env, params, Duration::from_millis(2500), fault).await;
    eprintln!("{fault:?} over {link:?}: the execute answered after {took:?}");
    let result = &resp["result"];
    assert!(resp.get("error").is_none(), "{resp}");
    assert_eq!(result["stdout"], streaming_stdout(), "{resp}");
    assert_eq!(result["stderr"], "finished\n", "{resp}");
    assert_eq!(result["exitCode"], 7, "{resp}");
    assert_eq!(result["timedOut"], false, "{resp}");
    let (live_out, live_err) = live_output(&env.take_notifications(), &inv);
    assert_eq!(live_out, streaming_stdout(), "live stdout chunks");
    assert_eq!(live_err, "finished\n", "live stderr chunks");

    let next = env.sh(&lease, "echo next; exit 3").await;
    assert_eq!(
        (next["stdout"].as_str(), next["exitCode"].as_i64()),
        (Some("next\n"), Some(3))
    );
    assert!(
        eventually(Duration::from_secs(5), || spools(&env, &lease).is_empty()).await,
        "spools left on the VM: {:?}",
        spools(&env, &lease)
    );
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_command_survives_a_killed_connection() {
    streaming_survives(None, Fault::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_command_survives_a_killed_connection_over_30ms_100mbit() {
    streaming_survives(LINK_30MS_100MBIT, Fault::KillMaster).await;
}

/// The agent is uploaded once and executes run through it; a command's own `exit 255` with
/// ssh-like stderr stays its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executes_run_through_the_vm_agent() {
    let env = Env::start().await;
    let lease = env.acquire(&run_id("agent")).await;
    let own = env
        .sh(
            &lease,
            "echo 'ssh: connect to host x port 22: Connection refused' >&2; exit 255",
        )
        .await;
    assert_eq!(own["exitCode"], 255, "{own}");
    let home = env
        .sim
        .vm_home(lease["providerLeaseId"].as_str().unwrap())
        .unwrap();
    let agents: Vec<_> = std::fs::read_dir(home.join(".cache/paperclip-exe-dev"))
        .expect("the agent's directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("agent-"))
        .collect();
    assert_eq!(agents.len(), 1, "{agents:?}");
    // The run went through it: its marker is in the command's environment.
    let marked = env
        .sh(&lease, "printf %s \"${PAPERCLIP_AGENT_RUN:-none}\"")
        .await;
    assert_eq!(
        marked["stdout"].as_str().map(str::len),
        Some(16),
        "{marked}"
    );
    env.destroy(&lease).await;
    env.finish().await;
}

/// Without connection sharing there is no agent: commands run as they always did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpooled_connections_take_the_direct_path() {
    let env = Env::start_with(EnvOptions {
        worker_args: vec!["--no-ssh-connection-reuse".into()],
        ..EnvOptions::default()
    })
    .await;
    let lease = env.acquire(&run_id("direct")).await;
    let r = env
        .sh(&lease, "printf %s \"${PAPERCLIP_AGENT_RUN:-none}\"; exit 4")
        .await;
    assert_eq!(
        (r["stdout"].as_str(), r["exitCode"].as_i64()),
        (Some("none"), Some(4)),
        "{r}"
    );
    env.destroy(&lease).await;
    env.finish().await;
}
