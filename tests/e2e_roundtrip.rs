//! Exactness of what goes in and comes out of `environmentExecute`: command, args, env and cwd
//! with shell metacharacters (property test), large stdout/stderr with multi-byte UTF-8, large
//! stdin, stderr on failure, and Paperclip's workspace-restore pattern (35 × 3 MiB through
//! base64). Everything that moves bytes runs on loopback and over the simulator's link model
//! (added round trip, bandwidth cap), where output trailing the exit status is the rule.

mod e2e_support;

use e2e_support::{
    eventually, live_output, repeats, run_id, Env, EnvOptions, LINK_30MS_100MBIT, LINK_60MS_50MBIT,
};
use exe_dev_sim::LinkModel;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// Characters a shell would love to interpret, plus non-ASCII.
const POOL: &[&str] = &[
    "'", "\"", "$", "$(id)", "`id`", "(", ")", "*", "?", "[a]", "{b,c}", "~", "!", "#", ";", "&",
    "|", "<", ">", "\\", "\\n", " ", "  ", "\t", "\n", "%s", "%", "-", "--x", "=", "é", "€",
    "日本", "😀", "\u{202e}", "a", "b", "Z", "0", "9", "_", ".",
];

fn weird(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(POOL), 1..max).prop_map(|v| v.concat())
}

/// A path component: no `/`, not `.`/`..`, not too long.
fn component() -> impl Strategy<Value = String> {
    weird(12).prop_filter("a usable file name", |s| {
        !s.contains('/') && s != "." && s != ".." && s.len() < 200
    })
}

/// The program every case runs: it reports `$0`, its logical cwd, two env values and its
/// arguments, NUL-separated, so nothing can hide in a separator.
const REPORTER: &str = "#!/bin/sh\n\
d=$(pwd; printf x); d=${d%x}; d=${d%?}\n\
printf '%s\\0' \"$0\" \"$d\" \"$V1\" \"$V2\" \"$@\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_args_env_cwd_round_trip_exactly() {
    command_args_env_cwd(None, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_args_env_cwd_round_trip_exactly_over_30ms_100mbit() {
    command_args_env_cwd(LINK_30MS_100MBIT, 12).await;
}

async fn command_args_env_cwd(link: Option<LinkModel>, cases: u32) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("prop")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let home = env.sim.vm_home(&vm).unwrap();
    let base = home.join("cases");
    let handle = tokio::runtime::Handle::current();

    let strategy = (
        component(),
        component(),
        prop::collection::vec(weird(10), 0..5),
        weird(16),
        weird(16),
    );
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    });
    // Fixed cases first (a command containing `=` once ran as an `env` assignment), then
    // random ones.
    let fixed = [
        (
            "it's $(x) `y` *",
            "a=b c",
            vec!["--", "$HOME", "\n", ""],
            "'\"",
            "日本😀\n",
        ),
        ("-n", "-x=1", vec!["-e"], "", " "),
    ];
    for (i, (dir, name, args, v1, v2)) in fixed.into_iter().enumerate() {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let cwd = base.join(format!("fixed{i}")).join(dir);
        if let Err(e) = check_case(&env, &lease, cwd.to_str().unwrap(), name, &args, v1, v2).await {
            panic!("fixed case {i}: {e}");
        }
    }
    let counter = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&strategy, |(dir, name, args, v1, v2)| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cwd = base.join(format!("{n}")).join(&dir);
        tokio::task::block_in_place(|| {
            handle.block_on(check_case(
                &env,
                &lease,
                cwd.to_str().unwrap(),
                &name,
                &args,
                &v1,
                &v2,
            ))
        })
        .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("round trip failed: {e}");
    }
    env.destroy(&lease).await;
    env.finish().await;
}

/// Create `cwd` and the reporter program `name` in it, run `./name args…` there with `V1`/`V2`
/// in its environment, and compare what it saw with what was sent.
async fn check_case(
    env: &Env,
    lease: &Value,
    cwd: &str,
    name: &str,
    args: &[String],
    v1: &str,
    v2: &str,
) -> Result<(), String> {
    let setup = env
        .exec(
            lease,
            "sh",
            &[
                "-c",
                "mkdir -p -- \"$1\" && cat > \"$1/$2\" && chmod +x \"$1/$2\"",
                "sh",
                cwd,
                name,
            ],
            json!({"stdin": REPORTER}),
        )
        .await;
    if setup["exitCode"] != 0 {
        return Err(format!("setup failed: {setup}"));
    }
    let command = format!("./{name}");
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let x = env
        .exec(
            lease,
            &command,
            &arg_refs,
            json!({"cwd": cwd, "env": {"V1": v1, "V2": v2}}),
        )
        .await;
    let mut expected = String::new();
    for part in [command.as_str(), cwd, v1, v2]
        .into_iter()
        .chain(arg_refs.iter().copied())
    {
        expected.push_str(part);
        expected.push('\0');
    }
    if x["exitCode"] != 0 || x["stderr"] != "" || x["stdout"] != expected.as_str() {
        return Err(format!(
            "command {command:?} args {args:?} cwd {cwd:?} V1 {v1:?} V2 {v2:?}: expected stdout {expected:?}, got {x}"
        ));
    }
    Ok(())
}

/// `lines` repetitions of `unit + "\n"`, generated remotely by `yes | head -n`.
fn repeated(unit: &str, lines: usize) -> String {
    format!("{unit}\n").repeat(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_byte_exact() {
    large_output(None, repeats(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_byte_exact_over_30ms_100mbit() {
    large_output(LINK_30MS_100MBIT, repeats(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_output_is_byte_exact_over_60ms_50mbit() {
    large_output(LINK_60MS_50MBIT, repeats(1)).await;
}

/// 1 MiB on both streams at once and 20 MiB on each, `times` times: every byte, live chunks
/// equal to the result.
async fn large_output(link: Option<LinkModel>, times: usize) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("big")).await;
    for _ in 0..times {
        large_output_once(&env, &lease).await;
    }
    env.destroy(&lease).await;
    env.finish().await;
}

async fn large_output_once(env: &Env, lease: &Value) {
    // 11-byte lines ("a" + 2-byte + 3-byte + 4-byte + "\n"): chunk boundaries of any power of
    // two fall inside multi-byte characters.
    let unit = "aé€😀";
    let line_bytes = unit.len() + 1;
    assert_eq!(line_bytes, 11);

    // 1 MiB on both streams at once, interleaved; live chunks equal the final output.
    let lines_1m = (1 << 20) / line_bytes + 1;
    let params = env.exec_params(
        lease,
        "sh",
        &[
            "-c",
            "yes \"$1\" | head -n \"$2\" & yes \"$1\" | head -n \"$2\" >&2; wait",
            "sh",
            unit,
            &lines_1m.to_string(),
        ],
        json!({}),
    );
    let inv = params["paperclipInvocation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.take_notifications();
    let x = env.ok("environmentExecute", params).await;
    let expected = repeated(unit, lines_1m);
    assert!(expected.len() >= 1 << 20);
    assert_eq!(x["exitCode"], 0);
    assert_eq!(x["stdout"].as_str().unwrap().len(), expected.len());
    assert!(x["stdout"] == expected.as_str(), "stdout differs");
    assert!(x["stderr"] == expected.as_str(), "stderr differs");
    assert_eq!(x["metadata"]["stdoutTruncated"], false);
    let notes = env.take_notifications();
    let (out, err) = live_output(&notes, &inv);
    assert!(out == expected, "streamed stdout differs");
    assert!(err == expected, "streamed stderr differs");

    // 20 MiB on stdout, then 20 MiB on stderr with a non-zero exit; live chunks equal the
    // result here too.
    let lines_20m = (20 << 20) / line_bytes + 1;
    let expected = repeated(unit, lines_20m);
    assert!(expected.len() >= 20 << 20);
    let params = env.exec_params(
        lease,
        "sh",
        &[
            "-c",
            "yes \"$1\" | head -n \"$2\"",
            "sh",
            unit,
            &lines_20m.to_string(),
        ],
        json!({}),
    );
    let inv = params["paperclipInvocation"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    env.take_notifications();
    let x = env.ok("environmentExecute", params).await;
    assert_eq!(x["exitCode"], 0);
    assert_eq!(x["stdout"].as_str().unwrap().len(), expected.len());
    assert!(x["stdout"] == expected.as_str(), "20 MiB stdout differs");
    assert_eq!(x["stderr"], "");
    let (out, err) = live_output(&env.take_notifications(), &inv);
    assert!(out == expected, "streamed 20 MiB stdout differs");
    assert_eq!(err, "");
    let x = env
        .exec(
            lease,
            "sh",
            &[
                "-c",
                "yes \"$1\" | head -n \"$2\" >&2; exit 9",
                "sh",
                unit,
                &lines_20m.to_string(),
            ],
            json!({}),
        )
        .await;
    assert_eq!(x["exitCode"], 9);
    assert_eq!(x["stdout"], "");
    assert_eq!(x["stderr"].as_str().unwrap().len(), expected.len());
    assert!(x["stderr"] == expected.as_str(), "20 MiB stderr differs");
    env.take_notifications();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_stderr_round_trip() {
    stdin_and_stderr(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_stderr_round_trip_over_30ms_100mbit() {
    stdin_and_stderr(LINK_30MS_100MBIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_and_stderr_round_trip_over_60ms_50mbit() {
    stdin_and_stderr(LINK_60MS_50MBIT).await;
}

async fn stdin_and_stderr(link: Option<LinkModel>) {
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("stdin")).await;

    // 8 MiB of stdin with multi-byte characters, echoed back by `cat` and counted by `wc -c`.
    let unit = "stdin ü€😀 \"'$`\\\n";
    let mut input = unit.repeat((8 << 20) / unit.len() + 1);
    while input.len() > 8 << 20 {
        input.pop();
    }
    assert!(input.len() >= (8 << 20) - 4);
    let x = env.exec(&lease, "cat", &[], json!({"stdin": input})).await;
    assert_eq!(x["exitCode"], 0);
    assert_eq!(x["stdout"].as_str().unwrap().len(), input.len());
    assert!(x["stdout"] == input.as_str(), "stdin did not round-trip");
    let x = env
        .exec(&lease, "wc", &["-c"], json!({"stdin": input}))
        .await;
    assert_eq!(
        x["stdout"].as_str().unwrap().trim(),
        input.len().to_string()
    );
    // Empty stdin is an empty stream, not a hang.
    let x = env.exec(&lease, "wc", &["-c"], json!({"stdin": ""})).await;
    assert_eq!(x["stdout"].as_str().unwrap().trim(), "0");

    // stderr verbatim on a non-zero exit, stdout kept too.
    let msg = "fatal: ‘quoted’ \"x\" $HOME `id` *\n\tsecond line\r\nno newline at end";
    let x = env
        .exec(
            &lease,
            "sh",
            &[
                "-c",
                "printf 'partial out'; printf '%s' \"$1\" >&2; exit 42",
                "sh",
                msg,
            ],
            json!({}),
        )
        .await;
    assert_eq!(x["exitCode"], 42);
    assert_eq!(x["timedOut"], false);
    assert_eq!(x["stdout"], "partial out");
    assert_eq!(x["stderr"], msg);
    // A command that does not exist: the shell's own error, exit 127.
    let x = env
        .exec(&lease, "no-such-command-e2e", &[], json!({}))
        .await;
    assert_eq!(x["exitCode"], 127, "{x}");
    assert!(
        x["stderr"]
            .as_str()
            .unwrap()
            .contains("no-such-command-e2e"),
        "{x}"
    );
    // A command's own 255 with ssh-like stderr is its result, not an SSH failure: the status
    // came from the SSH server over the shared connection.
    let fake = "ssh: connect to host db port 22: Connection refused";
    let x: Value = env
        .sh(&lease, &format!("echo '{fake}' >&2; exit 255"))
        .await;
    assert_eq!(x["exitCode"], 255, "{x}");
    assert_eq!(x["stderr"], format!("{fake}\n"), "{x}");
    // The same after the pooled connection died: the execute opens a new one before the
    // command, so the command's status is still known to be its own.
    assert_eq!(env.kill_ssh_masters(), 1, "one pooled connection");
    assert!(
        eventually(std::time::Duration::from_secs(5), || env
            .ssh_masters()
            .is_empty())
        .await,
        "the master did not die"
    );
    let x: Value = env
        .sh(&lease, &format!("echo '{fake}' >&2; exit 255"))
        .await;
    assert_eq!(x["exitCode"], 255, "{x}");
    assert_eq!(x["stderr"], format!("{fake}\n"), "{x}");
    // A command killed by a signal: the remote shell's 128+9, not a timeout, and no shell
    // job report in its stderr.
    let x: Value = env.sh(&lease, "kill -9 $$").await;
    assert_eq!(x["exitCode"], 137, "{x}");
    assert_eq!(x["timedOut"], false, "{x}");
    assert_eq!(x["stdout"], "", "{x}");
    assert_eq!(x["stderr"], "", "{x}");
    env.destroy(&lease).await;
    env.finish().await;
}

/// Paperclip's workspace restore without native sync (`paperclip-host.md`, SyncOut fallback):
/// `wc -c`, then one `dd bs=3MiB skip=i count=1 | base64` execute per chunk, decoded on the
/// host. A 105 MiB archive is read back in 35 chunks, `times` times; every chunk must decode to
/// exactly the archive's bytes at its offset.
async fn restore_replay(link: Option<LinkModel>, times: usize) {
    use base64::Engine as _;
    const CHUNK: usize = 3 << 20;
    const CHUNKS: usize = 35;
    let env = Env::start_with(EnvOptions::over(link)).await;
    let lease = env.acquire(&run_id("restore")).await;
    let vm = lease["providerLeaseId"].as_str().unwrap().to_string();
    let x = env
        .sh(
            &lease,
            &format!(
                "head -c {} /dev/urandom > \"$HOME/archive.tar\"",
                CHUNK * CHUNKS
            ),
        )
        .await;
    assert_eq!(x["exitCode"], 0, "{x}");
    // The VM's home is on this machine: the archive's bytes are the reference.
    let archive = std::fs::read(env.sim.vm_home(&vm).unwrap().join("archive.tar")).unwrap();
    assert_eq!(archive.len(), CHUNK * CHUNKS);
    let mut lost = Vec::new();
    for run in 0..times {
        let x = env.sh(&lease, "wc -c < \"$HOME/archive.tar\"").await;
        assert_eq!(
            x["stdout"].as_str().unwrap().trim(),
            archive.len().to_string()
        );
        for i in 0..CHUNKS {
            let x = env
                .sh(
                    &lease,
                    &format!(
                        "dd if=\"$HOME/archive.tar\" bs={CHUNK} skip={i} count=1 2>/dev/null \
                         | base64"
                    ),
                )
                .await;
            assert_eq!(x["exitCode"], 0, "chunk {i}: {x:.200}");
            let text: String = x["stdout"]
                .as_str()
                .unwrap()
                .chars()
                .filter(|c| !c.is_ascii_whitespace())
                .collect();
            let want = &archive[i * CHUNK..(i + 1) * CHUNK];
            // A short answer may not even be valid base64: count it lost either way.
            match base64::engine::general_purpose::STANDARD.decode(&text) {
                Ok(decoded) if decoded == want => {}
                Ok(decoded) => lost.push((run, i, want.len() - decoded.len().min(want.len()))),
                Err(_) => lost.push((run, i, want.len() - (text.len() / 4 * 3).min(want.len()))),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} chunks came back wrong (run, chunk, bytes missing): {lost:?}",
        lost.len(),
        times * CHUNKS
    );
    env.destroy(&lease).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replay_is_byte_exact() {
    restore_replay(None, repeats(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replay_is_byte_exact_over_30ms_100mbit() {
    restore_replay(LINK_30MS_100MBIT, repeats(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_replay_is_byte_exact_over_60ms_50mbit() {
    restore_replay(LINK_60MS_50MBIT, repeats(1)).await;
}

/// A command killed by a signal is reported with the shell convention, `128 + n` and no
/// `signal`, on the shared connection and on spawned clients alike; a command's own `exit 255`
/// is its result. (With `ssh:`-like stderr too, only the shared connection can tell it from an
/// SSH failure: `stdin_and_stderr_round_trip` checks that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signalled_commands_exit_128_plus_n_on_both_ssh_paths() {
    for worker_args in [vec![], vec!["--no-ssh-connection-reuse".to_string()]] {
        let env = Env::start_with(EnvOptions {
            worker_args: worker_args.clone(),
            ..EnvOptions::default()
        })
        .await;
        let lease = env.acquire(&run_id("signals")).await;
        for (script, code) in [
            ("echo before; kill -TERM $$", 143),
            ("echo before; kill -KILL $$", 137),
            ("echo before; kill -INT $$", 130),
            ("echo before; echo 'fatal: own' >&2; exit 255", 255),
        ] {
            let x = env.sh(&lease, script).await;
            let what = format!("{script} with {worker_args:?}: {x}");
            assert_eq!(x["exitCode"], code, "{what}");
            assert!(x.get("signal").is_none_or(Value::is_null), "{what}");
            assert_eq!(x["timedOut"], false, "{what}");
            assert_eq!(x["stdout"], "before\n", "{what}");
            let stderr = if code == 255 { "fatal: own\n" } else { "" };
            assert_eq!(x["stderr"], stderr, "{what}");
        }
        env.destroy(&lease).await;
        env.finish().await;
    }
}
