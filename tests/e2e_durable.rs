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
    /// Every live connection is reset (RST), as when a NAT entry expires.
    Reset,
    /// Every live connection goes silent: no byte passes either way, nothing is closed.
    Silence,
}

fn fire(env: &Env, fault: Fault) {
    match fault {
        Fault::KillMaster => assert!(env.kill_ssh_masters() >= 1, "no master to kill"),
        Fault::Reset => assert!(env.sim.reset_ssh_connections() >= 1, "nothing to reset"),
        Fault::Silence => assert!(env.sim.silence_ssh_connections() >= 1, "nothing to silence"),
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

macro_rules! on_both_links {
    ($($name:ident => $body:expr;)*) => {
        mod loopback {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let link: Option<LinkModel> = None;
                    ($body)(link).await;
                }
            )*
        }
        mod over_30ms_100mbit {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    ($body)(LINK_30MS_100MBIT).await;
                }
            )*
        }
    };
}

on_both_links! {
    streaming_survives_a_killed_master => |link| streaming_survives(link, Fault::KillMaster);
    streaming_survives_a_reset => |link| streaming_survives(link, Fault::Reset);
    streaming_survives_silence => |link| streaming_survives(link, Fault::Silence);
    stdin_of_8_mib_is_delivered_once_across_a_reset => |link| stdin_survives(link, Fault::Reset);
    stdin_of_8_mib_is_delivered_once_across_silence => |link| stdin_survives(link, Fault::Silence);
    output_of_40_mib_survives_a_reset => |link| big_output_survives(link, Fault::Reset);
    output_of_40_mib_survives_silence => |link| big_output_survives(link, Fault::Silence);
    a_timeout_while_the_connection_is_down_leaves_nothing_running => timeout_while_down;
    a_vm_deleted_mid_command_is_an_error_within_the_budget => vm_deleted_mid_command;
}

/// 8 MiB of stdin (Paperclip's fallback chunk size), with the connection broken while it is
/// sent (over the link) or while the command runs (loopback): the command runs once and reads
/// every byte once.
async fn stdin_survives(link: Option<LinkModel>, fault: Fault) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("stdin")).await;
    let stdin: String = (0..8 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let script =
        "echo \"ran ${PAPERCLIP_AGENT_RUN:+durably}\" >> \"$HOME/ran\"; cksum; sleep 1; echo done";
    let expected_sum = {
        use std::io::Write as _;
        let mut c = std::process::Command::new("cksum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
    };
    // The agent is installed by the first execute: this one, so the fault below hits the
    // upload of stdin itself (0.7 s over the link) rather than the agent's.
    assert_eq!(env.sh(&lease, "true").await["exitCode"], 0);
    let params = env.exec_params(&lease, "sh", &["-c", script], json!({"stdin": stdin}));
    let at = if link.is_some() { 300 } else { 500 };
    let (resp, took) = execute_with_fault(&env, params, Duration::from_millis(at), fault).await;
    eprintln!("stdin, {fault:?} over {link:?}: answered after {took:?}");
    assert!(resp.get("error").is_none(), "{resp}");
    let r = &resp["result"];
    assert_eq!(r["stdout"], format!("{expected_sum}done\n"), "{r}");
    assert_eq!(r["exitCode"], 0);
    let home = env
        .sim
        .vm_home(lease["providerLeaseId"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(home.join("ran")).unwrap(),
        "ran durably\n",
        "ran exactly once, through the agent"
    );
    env.destroy(&lease).await;
    env.finish().await;
}

/// 40 MiB of output (past the 32 MiB cap): the first 32 MiB arrive exactly once, in order, the
/// truncation is reported, and the live chunks equal the result.
async fn big_output_survives(link: Option<LinkModel>, fault: Fault) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("big")).await;
    let params = env.exec_params(
        &lease,
        "sh",
        &[
            "-c",
            "yes abcdefghijklmno | head -c 41943040; echo tail >&2",
        ],
        json!({}),
    );
    let inv = invocation(&params);
    let at = if link.is_some() { 1000 } else { 150 };
    let (resp, took) = execute_with_fault(&env, params, Duration::from_millis(at), fault).await;
    eprintln!("40 MiB, {fault:?} over {link:?}: answered after {took:?}");
    assert!(
        resp.get("error").is_none(),
        "{}",
        &resp.to_string()[..500.min(resp.to_string().len())]
    );
    let r = &resp["result"];
    let cap = 32 << 20;
    let expected: String = "abcdefghijklmno\n".repeat(cap / 16 + 1)[..cap].to_string();
    let got = r["stdout"].as_str().unwrap();
    assert_eq!(got.len(), cap, "stdout length");
    assert!(
        got == expected,
        "stdout differs from the first 32 MiB of the stream"
    );
    assert_eq!(r["stderr"], "tail\n");
    assert_eq!(r["exitCode"], 0);
    assert_eq!(r["metadata"]["stdoutTruncated"], true);
    let (live_out, live_err) = live_output(&env.take_notifications(), &inv);
    assert!(
        live_out == expected,
        "live chunks ({} bytes) differ from the result",
        live_out.len()
    );
    assert_eq!(live_err, "tail\n");
    env.destroy(&lease).await;
    env.finish().await;
}

/// The deadline passes while the connection is silent: the VM side ends the command's tree at
/// its deadline, the host collects the timed-out result after reconnecting, nothing runs on.
async fn timeout_while_down(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("tdown")).await;
    let script =
        "sleep 60 & echo $! > \"$HOME/child\"; echo $$ > \"$HOME/parent\"; echo started; wait";
    let params = env.exec_params(&lease, "sh", &["-c", script], json!({"timeoutMs": 3000}));
    let (resp, took) =
        execute_with_fault(&env, params, Duration::from_millis(1000), Fault::Silence).await;
    eprintln!("timeout while silent over {link:?}: answered after {took:?}");
    assert!(resp.get("error").is_none(), "{resp}");
    let r = &resp["result"];
    assert_eq!(r["timedOut"], true, "{r}");
    assert_eq!(r["stdout"], "started\n", "{r}");
    assert!(r["exitCode"].is_null(), "{r}");
    let home = env
        .sim
        .vm_home(lease["providerLeaseId"].as_str().unwrap())
        .unwrap();
    for f in ["child", "parent"] {
        let pid: i32 = std::fs::read_to_string(home.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signal 0 only checks for existence.
        let alive = || unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid);
        assert!(
            eventually(Duration::from_secs(3), || !alive()).await,
            "{f} {pid} still runs"
        );
    }
    let next = env.sh(&lease, "echo next").await;
    assert_eq!(next["stdout"], "next\n");
    env.destroy(&lease).await;
    env.finish().await;
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// The VM is deleted while a command runs: no result is made up; the error says what is known
/// and arrives once the deadline (plus the host's grace to collect a result) has passed.
async fn vm_deleted_mid_command(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("gone")).await;
    let params = env.exec_params(&lease, "sh", &["-c", STREAMING], json!({"timeoutMs": 4000}));
    let started = Instant::now();
    let call = env.call("environmentExecute", params);
    let delete = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        env.destroy(&lease).await
    };
    let (resp, receipt) = tokio::join!(call, delete);
    let took = started.elapsed();
    eprintln!("VM deleted over {link:?}: the execute answered after {took:?}: {resp}");
    assert_eq!(receipt["state"], "destroyed");
    let message = resp["error"]["message"].as_str().unwrap_or_default();
    assert!(
        resp.get("result").is_none(),
        "never a made-up result: {resp}"
    );
    assert!(message.contains("may still be running"), "{resp}");
    assert!(message.contains("reconnecting was tried"), "{resp}");
    assert!(took < Duration::from_secs(4 + 10 + 5), "{took:?}");
    env.finish().await;
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

/// Executes over a live connection share one serving agent: one agent session for the
/// connection, none per execute, serial and 32 at once, each with its own bytes and exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executes_share_one_serving_agent_per_connection() {
    let env = Env::start_with(EnvOptions::over(LINK_30MS_100MBIT)).await;
    let lease = env.acquire(&run_id("serve")).await;
    for i in 0..5 {
        let r = env
            .sh(&lease, &format!("printf 'n{i}\\377'; exit {i}"))
            .await;
        assert_eq!(r["exitCode"], i, "{r}");
        assert_eq!(r["stdout"], format!("n{i}\u{fffd}"), "{r}");
    }
    let scripts: Vec<String> = (0..32)
        .map(|i| {
            format!(
                "head -c {} /dev/zero | tr '\\0' x; echo e{i} >&2; exit {}",
                1000 * i,
                i % 7
            )
        })
        .collect();
    let results =
        paperclip_test_support::harness::join_all(scripts.iter().map(|s| env.sh(&lease, s))).await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["stdout"].as_str().map(str::len), Some(1000 * i), "{i}");
        assert_eq!(r["stderr"], format!("e{i}\n"), "{i}");
        assert_eq!(r["exitCode"], i % 7, "{i}");
    }
    // Sessions that started the agent (the upload's session is not one; the log holds the
    // sessions that ended, so the one still serving may not be there yet).
    let agent_sessions: Vec<String> = env
        .sim
        .ssh_log()
        .into_iter()
        .filter_map(|c| c.command)
        .filter(|c| c.starts_with("exec \"$HOME/.cache/paperclip-exe-dev/agent-"))
        .collect();
    let per_execute = agent_sessions
        .iter()
        .filter(|c| !c.ends_with("\" serve"))
        .count();
    assert_eq!(per_execute, 0, "no session per execute: {agent_sessions:?}");
    // At most: the serving agent tried before the upload (it was not there yet), and this one.
    assert!(agent_sessions.len() <= 2, "{agent_sessions:?}");
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
    // The login shell gets `sh -c '<script>'`, as before durable executes: the script never
    // depends on what the login shell is.
    let sent = env
        .sim
        .ssh_log()
        .into_iter()
        .filter_map(|c| c.command)
        .find(|c| c.contains("PAPERCLIP_AGENT_RUN:-none"))
        .expect("the execute reached the VM");
    assert!(sent.starts_with("sh -c '"), "{sent}");
    env.destroy(&lease).await;
    env.finish().await;
}
