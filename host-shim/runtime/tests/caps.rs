//! Library-level tests of the HTTP and SSH capabilities: policy enforcement before any
//! connection or spawn, key-file hygiene, process-group kills, byte-exact large I/O.
//!
//! SSH is exercised with a fake `ssh` (a shell script) that records its argv, environment and
//! key file, then runs the "remote" command locally with `sh -c`, like a remote shell would.

use std::fs;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use paperclip_wasm_runtime::caps::http::{HttpLimits, PolicyHttpHooks};
use paperclip_wasm_runtime::caps::ssh::{
    Connected, HostKeyPolicy, Identity, SshError, SshRequest, SshRunner, SshSettings, SshTarget,
    StreamKind,
};
use paperclip_wasm_runtime::policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpHooks};

const FAKE_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\r\nb3BlbnNzaC1rZXktdjEAAAAAsecretKEYmaterialXYZ\r\n-----END OPENSSH PRIVATE KEY-----";

fn manifest() -> serde_json::Value {
    serde_json::json!({
        "x-wasm-host": {"http": ["https://exe.dev:443"], "ssh": ["*.exe.xyz"]}
    })
}

fn policy(http_flags: &[&str]) -> Arc<Policy> {
    let flags: Vec<String> = http_flags.iter().map(|s| s.to_string()).collect();
    Arc::new(Policy::from_manifest(&manifest(), &flags, &[]).unwrap())
}

// ---------------------------------------------------------------------------------------------
// HTTP

fn empty_body() -> WasiBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn send(
    hooks: &mut PolicyHttpHooks,
    uri: &str,
) -> Result<http::Response<WasiBody>, HttpError> {
    let req = http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("authorization", "Bearer sekrit-token")
        .body(empty_body())
        .unwrap();
    let fut = hooks.send_request(req, None, Box::new(async { Ok(()) }));
    let (resp, io) = Pin::from(fut).await?;
    // The connection task must be driven for the body to stream (wasmtime spawns it too).
    tokio::spawn(Pin::from(io));
    Ok(resp)
}

/// Serve one connection: read the request head, write `response`, close.
fn serve_once(listener: TcpListener, response: Vec<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        for part in response {
            if sock.write_all(&part).await.is_err() {
                return;
            }
        }
        let _ = sock.shutdown().await;
    })
}

#[tokio::test]
async fn denied_http_authority_is_refused_before_any_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Only exe.dev and a *different* loopback port are allowed.
    let mut hooks = PolicyHttpHooks::new(
        policy(&[&format!("127.0.0.1:{}", port.wrapping_add(1))]),
        HttpLimits::default(),
    );
    for uri in [
        format!("http://127.0.0.1:{port}/exec"),
        format!("https://127.0.0.1:{port}/exec"),
        format!("http://localhost:{port}/exec"),
        format!("http://user@127.0.0.1:{port}/exec"),
    ] {
        let err = send(&mut hooks, &uri).await.unwrap_err();
        assert!(
            matches!(err, HttpError::HttpRequestDenied),
            "{uri}: expected HttpRequestDenied, got {err:?}"
        );
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(
        accepted.is_err(),
        "the listener must never see a connection"
    );
}

#[tokio::test]
async fn allowed_loopback_http_round_trip() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_once(
        listener,
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello".to_vec()],
    );
    let mut hooks = PolicyHttpHooks::new(
        policy(&[&format!("127.0.0.1:{port}")]),
        HttpLimits::default(),
    );
    let resp = send(&mut hooks, &format!("http://127.0.0.1:{port}/exec"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    server.await.unwrap();
}

#[tokio::test]
async fn streamed_response_body_over_the_cap_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let chunk = vec![b'x'; 1024 * 1024];
    let mut parts = vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec()];
    for _ in 0..3 {
        let mut p = format!("{:x}\r\n", chunk.len()).into_bytes();
        p.extend_from_slice(&chunk);
        p.extend_from_slice(b"\r\n");
        parts.push(p);
    }
    parts.push(b"0\r\n\r\n".to_vec());
    let server = serve_once(listener, parts);
    let limits = HttpLimits {
        max_response_bytes: 2 * 1024 * 1024,
        ..HttpLimits::default()
    };
    let mut hooks = PolicyHttpHooks::new(policy(&[&format!("127.0.0.1:{port}")]), limits);
    let resp = send(&mut hooks, &format!("http://127.0.0.1:{port}/big"))
        .await
        .unwrap();
    let err = resp.into_body().collect().await.unwrap_err();
    assert!(
        matches!(err, HttpError::HttpResponseBodySize(_)),
        "got {err:?}"
    );
    server.abort();
}

#[tokio::test]
async fn declared_response_body_over_the_cap_fails_early() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_once(
        listener,
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n".to_vec()],
    );
    let mut hooks = PolicyHttpHooks::new(
        policy(&[&format!("127.0.0.1:{port}")]),
        HttpLimits::default(),
    );
    let err = send(&mut hooks, &format!("http://127.0.0.1:{port}/big"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HttpError::HttpResponseBodySize(Some(999999999))),
        "got {err:?}"
    );
    server.abort();
}

#[tokio::test]
async fn silent_upstream_hits_the_total_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, never answers.
    let server = tokio::spawn(async move {
        let (_sock, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let limits = HttpLimits {
        total_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    };
    let mut hooks = PolicyHttpHooks::new(policy(&[&format!("127.0.0.1:{port}")]), limits);
    let started = Instant::now();
    let err = send(&mut hooks, &format!("http://127.0.0.1:{port}/slow"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(err, HttpError::ConnectionReadTimeout),
        "got {err:?}"
    );
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// SSH

/// A temp workspace with a fake `ssh` script, a state dir and a private temp root.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("rec");
        fs::create_dir(&rec).unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        let script = format!(
            r#"#!/bin/sh
[ "$1" = "--probe" ] && exit 0
REC='{rec}'
printf '%s\0' "$@" > "$REC/argv"
env > "$REC/env"
prev=""
for a in "$@"; do
  if [ "$prev" = "-i" ]; then
    stat -c '%a' "$a" > "$REC/keymode"
    stat -c '%a' "$(dirname "$a")" > "$REC/dirmode"
    cp "$a" "$REC/keycopy"
  fi
  prev="$a"
done
for last; do :; done
exec /bin/sh -c "$last"
"#,
            rec = rec.display()
        );
        let ssh = dir.path().join("ssh");
        fs::write(&ssh, script).unwrap();
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o755)).unwrap();
        // Another test thread may fork while our write fd is open ("text file busy"); wait
        // until the script is executable for real.
        for _ in 0..100 {
            match std::process::Command::new(&ssh).arg("--probe").status() {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("fake ssh: {e}"),
            }
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn settings(&self) -> SshSettings {
        let mut s = SshSettings::new(self.path("state"));
        s.ssh_binary = self.path("ssh");
        s.temp_root = Some(self.path("tmp"));
        s
    }

    fn runner(&self) -> Arc<SshRunner> {
        Arc::new(SshRunner::new(self.settings(), policy(&[])).unwrap())
    }

    fn rec(&self, name: &str) -> Option<Vec<u8>> {
        fs::read(self.path("rec").join(name)).ok()
    }

    fn argv(&self) -> Vec<String> {
        let raw = self.rec("argv").expect("fake ssh ran");
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect()
    }

    fn temp_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }
}

fn target(host: &str, identity: Identity) -> SshTarget {
    SshTarget {
        host: host.into(),
        port: 2222,
        user: Some("exedev".into()),
        identity,
        host_key_policy: HostKeyPolicy::AcceptNew,
    }
}

fn exec(command: &str, identity: Identity) -> SshRequest {
    SshRequest {
        target: target("vm1.exe.xyz", identity),
        command: command.into(),
        stdin: None,
        timeout_ms: 20_000,
        max_output_bytes: 64 * 1024 * 1024,
        stream_output: false,
        durable: false,
    }
}

/// True once `pid` is gone or a zombie (a killed orphan may wait for its reaper).
fn is_dead(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_dead(pid: i32) -> bool {
    for _ in 0..100 {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn read_pid(path: &Path) -> i32 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

async fn wait_for_file(path: &Path) {
    for _ in 0..250 {
        if fs::metadata(path).map(|m| m.len() > 0).unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test]
async fn ssh_to_a_host_outside_the_policy_is_denied_without_spawning() {
    let fake = Fake::new();
    let runner = fake.runner();
    let mut req = exec("true", Identity::KeyMaterial(FAKE_KEY.into()));
    req.target.host = "evil.example.com".into();
    let err = runner.exec(req, None).await.unwrap_err();
    assert_eq!(err, SshError::Denied("evil.example.com".into()));
    assert!(err.to_string().contains("evil.example.com"));

    // Syntax tricks are refused as invalid requests, also before anything runs.
    for host in [
        "evil.com#.exe.xyz",
        "-oProxyCommand=touch.exe.xyz",
        "vm1.exe.xyz -v",
        "vm1.exe.xyz\n",
        "",
    ] {
        let mut req = exec("true", Identity::Agent);
        req.target.host = host.into();
        let err = runner.exec(req, None).await.unwrap_err();
        assert!(
            matches!(err, SshError::InvalidRequest(_)),
            "{host:?}: {err:?}"
        );
    }
    for user in ["-oProxyCommand=x", "a b", "a@b", ""] {
        let mut req = exec("true", Identity::Agent);
        req.target.user = Some(user.into());
        let err = runner.exec(req, None).await.unwrap_err();
        assert!(
            matches!(err, SshError::InvalidRequest(_)),
            "{user:?}: {err:?}"
        );
    }
    let mut req = exec("true", Identity::KeyFile("relative/key".into()));
    req.target.port = 22;
    assert!(matches!(
        runner.exec(req, None).await,
        Err(SshError::InvalidRequest(_))
    ));
    assert!(matches!(
        runner.exec(exec("  ", Identity::Agent), None).await,
        Err(SshError::InvalidRequest(_))
    ));
    assert!(
        fake.rec("argv").is_none(),
        "ssh must never have been spawned"
    );
    assert!(fake.temp_entries().is_empty());
}

#[tokio::test]
async fn argv_is_exact_and_carries_no_key_material() {
    let fake = Fake::new();
    let runner = fake.runner();
    let out = runner
        .exec(
            exec("echo hi", Identity::KeyMaterial(FAKE_KEY.into())),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout, b"hi\n");
    assert!(!out.timed_out);

    let argv = fake.argv();
    let i = argv.iter().position(|a| a == "-i").expect("-i present");
    let key_path = PathBuf::from(&argv[i + 1]);
    assert!(key_path.starts_with(fake.path("tmp")), "{key_path:?}");
    let known_hosts = fake.path("state").join("known_hosts");
    // Connection sharing: one control socket per target, named by a keyed hash, in the state
    // dir's private `cm` directory.
    let control = argv
        .iter()
        .find_map(|a| a.strip_prefix("ControlPath="))
        .expect("ControlPath present")
        .to_string();
    let control_dir = fake.path("state").join("cm");
    let name = Path::new(&control).strip_prefix(&control_dir).unwrap();
    assert_eq!(name.as_os_str().len(), 16, "{control}");
    let expected: Vec<String> = [
        "-F",
        "/dev/null",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o",
        "ConnectTimeout=15",
        "-o",
        "ServerAliveInterval=2",
        "-o",
        "ServerAliveCountMax=2",
        "-o",
        "ForwardAgent=no",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ControlMaster=auto",
        "-o",
        &format!("ControlPath={control}"),
        "-o",
        "ControlPersist=120",
        "-p",
        "2222",
        "-i",
        &key_path.display().to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "exedev@vm1.exe.xyz",
        "--",
        "echo hi",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(argv, expected);
    let raw_argv = fake.rec("argv").unwrap();
    assert!(!String::from_utf8_lossy(&raw_argv).contains("secretKEYmaterial"));

    // The key was private while in use, normalised to LF with a trailing newline, and is gone.
    assert_eq!(fake.rec("keymode").unwrap(), b"600\n");
    assert_eq!(fake.rec("dirmode").unwrap(), b"700\n");
    let copied = String::from_utf8(fake.rec("keycopy").unwrap()).unwrap();
    assert_eq!(copied, FAKE_KEY.replace("\r\n", "\n") + "\n");
    assert!(!key_path.exists());
    assert!(fake.temp_entries().is_empty());

    // A minimal environment: nothing from the host process leaks.
    let env = String::from_utf8(fake.rec("env").unwrap()).unwrap();
    for line in env.lines() {
        let key = line.split('=').next().unwrap();
        assert!(
            ["PATH", "HOME", "PWD", "SHLVL", "_", "OLDPWD"].contains(&key),
            "unexpected env var {key} in the ssh child"
        );
        assert!(!line.contains("secretKEYmaterial"));
    }
    assert!(env.contains(&format!("HOME={}", fake.path("state").display())));
    let state_mode = fs::metadata(fake.path("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o700);
}

#[tokio::test]
async fn key_file_agent_config_and_host_key_policy_variants() {
    let fake = Fake::new();
    let mut settings = fake.settings();
    let cfg = fake.path("ssh_config");
    fs::write(&cfg, "").unwrap();
    settings.ssh_config = Some(cfg.clone());
    let runner = SshRunner::new(settings, policy(&[])).unwrap();

    let mut req = exec("true", Identity::KeyFile("/etc/keys/id_ed25519".into()));
    req.target.host_key_policy = HostKeyPolicy::Yes;
    req.target.user = None;
    runner.exec(req, None).await.unwrap();
    let argv = fake.argv();
    assert_eq!(argv[..2], ["-F".to_string(), cfg.display().to_string()]);
    assert!(argv.contains(&"StrictHostKeyChecking=yes".to_string()));
    let i = argv.iter().position(|a| a == "-i").unwrap();
    assert_eq!(argv[i + 1], "/etc/keys/id_ed25519");
    assert_eq!(argv[i + 3], "IdentitiesOnly=yes");
    assert_eq!(argv[argv.len() - 3..], ["vm1.exe.xyz", "--", "true"]);

    let mut req = exec("true", Identity::Agent);
    req.target.host_key_policy = HostKeyPolicy::No;
    runner.exec(req, None).await.unwrap();
    let argv = fake.argv();
    assert!(!argv.contains(&"-i".to_string()));
    assert!(!argv.contains(&"IdentitiesOnly=yes".to_string()));
    assert!(argv.contains(&"StrictHostKeyChecking=no".to_string()));
    // `no` never writes unverified keys into the trusted known_hosts file.
    assert!(argv.contains(&"UserKnownHostsFile=/dev/null".to_string()));
}

#[tokio::test]
async fn a_command_that_looks_like_an_option_stays_a_command() {
    let fake = Fake::new();
    let runner = fake.runner();
    let out = runner
        .exec(exec("-oProxyCommand=false", Identity::Agent), None)
        .await
        .unwrap();
    let argv = fake.argv();
    assert_eq!(argv[argv.len() - 2..], ["--", "-oProxyCommand=false"]);
    // (the fake then runs it through `sh -c`, which fails harmlessly)
    assert_ne!(out.exit_code, Some(0));
}

#[tokio::test]
async fn failing_call_leaves_no_key_file_and_reports_exit_code() {
    let fake = Fake::new();
    let runner = fake.runner();
    let out = runner
        .exec(
            exec(
                "echo 'Permission denied (publickey).' >&2; exit 255",
                Identity::KeyMaterial(FAKE_KEY.into()),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(255));
    assert_eq!(out.signal, None);
    assert_eq!(out.stderr, b"Permission denied (publickey).\n");
    assert!(
        fake.rec("keycopy").is_some(),
        "the key existed during the call"
    );
    assert!(fake.temp_entries().is_empty());

    // Spawn failure (no such binary) also cleans up.
    let mut settings = fake.settings();
    settings.ssh_binary = fake.path("no-such-ssh");
    let runner = SshRunner::new(settings, policy(&[])).unwrap();
    let err = runner
        .exec(exec("true", Identity::KeyMaterial(FAKE_KEY.into())), None)
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::Spawn(_)), "{err:?}");
    assert!(!err.to_string().contains("secretKEYmaterial"));
    assert!(fake.temp_entries().is_empty());
}

#[tokio::test]
async fn signal_death_is_reported_by_name() {
    let fake = Fake::new();
    let out = fake
        .runner()
        .exec(exec("kill -TERM $$", Identity::Agent), None)
        .await
        .unwrap();
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal.as_deref(), Some("SIGTERM"));
    assert!(!out.timed_out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group_and_removes_the_key() {
    let fake = Fake::new();
    let gc = fake.path("rec").join("grandchild.pid");
    let child = fake.path("rec").join("child.pid");
    let mut req = exec(
        &format!(
            "echo $$ > {}; sleep 300 & echo $! > {}; echo started; wait",
            child.display(),
            gc.display()
        ),
        Identity::KeyMaterial(FAKE_KEY.into()),
    );
    req.timeout_ms = 700;
    let started = Instant::now();
    let out = fake.runner().exec(req, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(out.timed_out);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal.as_deref(), Some("SIGKILL"));
    assert_eq!(
        out.stdout, b"started\n",
        "output before the deadline is kept"
    );
    assert!(wait_dead(read_pid(&child)).await, "ssh (child) survived");
    assert!(wait_dead(read_pid(&gc)).await, "grandchild survived");
    assert!(fake.temp_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_holding_the_pipes_after_exit_is_killed() {
    let fake = Fake::new();
    let gc = fake.path("rec").join("grandchild.pid");
    let req = exec(
        &format!("sleep 300 & echo $! > {}; echo done; exit 3", gc.display()),
        Identity::Agent,
    );
    let started = Instant::now();
    let out = fake.runner().exec(req, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.exit_code, Some(3));
    assert!(!out.timed_out);
    assert_eq!(out.stdout, b"done\n");
    assert!(wait_dead(read_pid(&gc)).await, "helper survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_call_kills_the_group_and_removes_the_key() {
    let fake = Fake::new();
    let gc = fake.path("rec").join("grandchild.pid");
    let req = exec(
        &format!("sleep 300 & echo $! > {}; wait", gc.display()),
        Identity::KeyMaterial(FAKE_KEY.into()),
    );
    let runner = fake.runner();
    {
        let call = runner.exec(req, None);
        tokio::pin!(call);
        tokio::select! {
            _ = &mut call => panic!("the call must still be running"),
            () = wait_for_file(&gc) => {}
        }
        // `call` is dropped here, mid-flight.
    }
    assert!(
        wait_dead(read_pid(&gc)).await,
        "grandchild survived the drop"
    );
    assert!(fake.temp_entries().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_in_the_chunk_callback_still_cleans_up() {
    let fake = Fake::new();
    let gc = fake.path("rec").join("grandchild.pid");
    let req = exec(
        &format!(
            "sleep 300 & echo $! > {}; sleep 0.2; echo boom; wait",
            gc.display()
        ),
        Identity::KeyMaterial(FAKE_KEY.into()),
    );
    let runner = fake.runner();
    let task = tokio::spawn(async move {
        runner
            .exec(
                req,
                Some(Box::new(|_kind: StreamKind, _chunk: &[u8]| {
                    panic!("callback failure")
                })),
            )
            .await
    });
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    assert!(
        wait_dead(read_pid(&gc)).await,
        "grandchild survived the panic"
    );
    assert!(fake.temp_entries().is_empty());
}

/// Deterministic pseudo-random bytes (xorshift), so mismatches are not hidden by repetition.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_stdin_echoes_back_byte_exact_without_deadlock() {
    let fake = Fake::new();
    let data = pattern(8 * 1024 * 1024, 0x9E37_79B9_7F4A_7C15);
    let mut req = exec("cat", Identity::Agent);
    req.stdin = Some(data.clone());
    req.timeout_ms = 60_000;
    let out = fake.runner().exec(req, None).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(!out.timed_out);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "stdout differs from stdin");
    assert!(!out.stdout_truncated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mib_stdout_with_concurrent_stdin_is_byte_exact_and_streamed() {
    let fake = Fake::new();
    let out_data = pattern(20 * 1024 * 1024, 42);
    let in_data = pattern(8 * 1024 * 1024, 7);
    let data_file = fake.path("rec").join("out.bin");
    let stdin_copy = fake.path("rec").join("stdin.bin");
    fs::write(&data_file, &out_data).unwrap();
    // Writes 20 MiB to stdout while reading 8 MiB of stdin, plus some stderr.
    let mut req = exec(
        &format!(
            "cat {} & cat > {}; wait; printf 'warn\\n' >&2",
            data_file.display(),
            stdin_copy.display()
        ),
        Identity::Agent,
    );
    req.stdin = Some(in_data.clone());
    req.timeout_ms = 60_000;
    let streamed = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let sink = streamed.clone();
    let out = fake
        .runner()
        .exec(
            req,
            Some(Box::new(move |kind, chunk| {
                let mut s = sink.lock().unwrap();
                match kind {
                    StreamKind::Stdout => s.0.extend_from_slice(chunk),
                    StreamKind::Stderr => s.1.extend_from_slice(chunk),
                }
            })),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout.len(), out_data.len());
    assert!(out.stdout == out_data, "stdout differs");
    assert_eq!(out.stderr, b"warn\n");
    assert!(fs::read(&stdin_copy).unwrap() == in_data, "stdin differs");
    let s = streamed.lock().unwrap();
    assert!(s.0 == out.stdout, "streamed stdout differs");
    assert_eq!(s.1, out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_is_dropped_and_flagged_while_draining() {
    let fake = Fake::new();
    let mut req = exec(
        "head -c 3000000 /dev/zero; head -c 10 /dev/zero >&2; echo tail",
        Identity::Agent,
    );
    req.max_output_bytes = 1024 * 1024;
    let chunks = Arc::new(Mutex::new(0usize));
    let counter = chunks.clone();
    let out = fake
        .runner()
        .exec(
            req,
            Some(Box::new(move |kind, chunk| {
                if kind == StreamKind::Stdout {
                    *counter.lock().unwrap() += chunk.len();
                }
            })),
        )
        .await
        .unwrap();
    // The writer was never blocked or SIGPIPEd: it finished and exited 0.
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(out.stdout.len(), 1024 * 1024);
    assert!(out.stdout_truncated);
    assert_eq!(out.stderr.len(), 10);
    assert!(!out.stderr_truncated);
    assert_eq!(*chunks.lock().unwrap(), 1024 * 1024);
}

#[tokio::test]
async fn disconnect_is_a_harmless_no_op() {
    let fake = Fake::new();
    fake.runner()
        .disconnect(&target("vm1.exe.xyz", Identity::Agent))
        .await;
    assert!(fake.rec("argv").is_none());
}

/// The lead's bindgen `Host` impl needs a `Send` future.
fn _assert_send<F: Future + Send>(_: F) {}

#[allow(dead_code)]
fn exec_future_is_send(runner: &SshRunner) {
    _assert_send(runner.exec(exec("true", Identity::Agent), None));
}

/// With the real OpenSSH client: our argv is accepted (no unknown option), a refused connection
/// is exit 255 with ssh's own message, and an option-looking command is never parsed as one.
#[tokio::test]
async fn real_openssh_accepts_the_argv_and_never_parses_the_command_as_options() {
    if !ssh_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let mut settings = SshSettings::new(dir.path().join("state"));
    settings.ssh_binary = "/usr/bin/ssh".into();
    settings.temp_root = Some(dir.path().to_path_buf());
    let policy = Policy::from_manifest(&manifest(), &[], &["127.0.0.1".to_string()]).unwrap();
    let runner = SshRunner::new(settings, Arc::new(policy)).unwrap();
    let mut req = exec(
        &format!("-oProxyCommand=touch {}", marker.display()),
        Identity::KeyMaterial(FAKE_KEY.into()),
    );
    req.target.host = "127.0.0.1".into();
    // Port 1: nothing listens there, the connection is refused at once.
    req.target.port = 1;
    let out = runner.exec(req, None).await.unwrap();
    assert_eq!(out.exit_code, Some(255));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("port 1"), "unexpected ssh stderr: {stderr}");
    assert!(!stderr.contains("Bad configuration option"), "{stderr}");
    assert!(!marker.exists(), "the command was parsed as an ssh option");
}

/// End to end with the real OpenSSH client against the exe.dev simulator: the VM is created
/// through the HTTP hooks (allowed loopback), then commands run through [`SshRunner`] with a
/// pasted key, the simulator's `--ssh-config` and the state dir's `known_hosts`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_ssh_through_the_simulator() {
    use exe_dev_sim::{SimOptions, Simulator};
    if !ssh_available() {
        return;
    }
    let sim = Simulator::start(SimOptions::with_token("caps-token"))
        .await
        .unwrap();

    // Create the VM through the policy hooks, like the component does.
    let created = create_sim_vm(&sim, "caps-token", "capsvm").await;
    assert_eq!(created["vm_name"], "capsvm");

    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("tmp")).unwrap();
    let mut settings = SshSettings::new(dir.path().join("state"));
    settings.ssh_binary = "/usr/bin/ssh".into();
    settings.ssh_config = Some(sim.ssh_config_path());
    settings.temp_root = Some(dir.path().join("tmp"));
    let runner = SshRunner::new(settings, policy(&[])).unwrap();
    let request = |command: &str, host_key_policy| SshRequest {
        target: SshTarget {
            host: "capsvm.exe.xyz".into(),
            port: 22,
            user: Some("exedev".into()),
            identity: Identity::KeyMaterial(sim.client_key_pem()),
            host_key_policy,
        },
        command: command.into(),
        stdin: None,
        timeout_ms: 60_000,
        max_output_bytes: 64 * 1024 * 1024,
        stream_output: false,
        durable: false,
    };

    // First contact: accept-new records the key, and says nothing about it on stderr.
    let out = runner
        .exec(
            request("echo hi; echo err >&2", HostKeyPolicy::AcceptNew),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice(), out.stderr.as_slice()),
        (Some(0), &b"hi\n"[..], &b"err\n"[..]),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let known = fs::read_to_string(runner.known_hosts_path()).unwrap();
    assert!(known.contains("capsvm.exe.xyz"), "{known}");

    // Now the key is known, `yes` works; the remote exit code comes back.
    let out = runner
        .exec(request("exit 7", HostKeyPolicy::Yes), None)
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(7));

    // Byte-exact stdin -> stdout over a real SSH channel.
    let data = pattern(8 * 1024 * 1024, 99);
    let mut req = request("cat", HostKeyPolicy::Yes);
    req.stdin = Some(data.clone());
    let out = runner.exec(req, None).await.unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.stdout == data, "stdout differs from stdin over ssh");

    // Deadline: the local client (and its ProxyJump helper) is killed.
    let mut req = request("sleep 30", HostKeyPolicy::Yes);
    req.timeout_ms = 1_500;
    let started = Instant::now();
    let out = runner.exec(req, None).await.unwrap();
    assert!(out.timed_out);
    assert!(started.elapsed() < Duration::from_secs(10));

    assert!(
        fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "a temp key survived"
    );
    sim.shutdown().await;
}

/// The `ssh: <control path> [mux]` master processes alive for `dir`.
fn masters_in(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(&needle) && c.contains("[mux]")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// `ssh -O exit` returns once the master has accepted the request; the process itself ends a
/// moment later. True when no master for `dir` is left within 3 s.
async fn gone_soon(dir: &Path) -> bool {
    for _ in 0..60 {
        if masters_in(dir).is_empty() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_replaced_when_dead_and_closed() {
    use exe_dev_sim::{SimOptions, Simulator};
    if !ssh_available() {
        return;
    }
    let sim = Simulator::start(SimOptions::with_token("cm-token"))
        .await
        .unwrap();
    create_sim_vm(&sim, "cm-token", "reusevm").await;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut settings = SshSettings::new(&state);
    settings.ssh_binary = "/usr/bin/ssh".into();
    settings.ssh_config = Some(sim.ssh_config_path());
    let runner = SshRunner::new(settings, policy(&[])).unwrap();
    let target = SshTarget {
        host: "reusevm.exe.xyz".into(),
        port: 22,
        user: Some("exedev".into()),
        identity: Identity::KeyMaterial(sim.client_key_pem()),
        host_key_policy: HostKeyPolicy::AcceptNew,
    };
    let request = |command: &str| SshRequest {
        target: target.clone(),
        command: command.into(),
        stdin: None,
        timeout_ms: 60_000,
        max_output_bytes: 1 << 20,
        stream_output: false,
        durable: false,
    };
    let cm = state.join("cm");

    // The first call leaves one master; later and concurrent calls share it.
    let out = runner.exec(request("echo one"), None).await.unwrap();
    assert_eq!(out.stdout, b"one\n");
    let first = masters_in(&cm);
    assert_eq!(first.len(), 1, "one master after the first call");
    let calls = (0..8).map(|i| runner.exec(request(&format!("echo {i}")), None));
    for (i, out) in paperclip_test_support::harness::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(out.unwrap().stdout, format!("{i}\n").into_bytes());
    }
    assert_eq!(
        masters_in(&cm),
        first,
        "concurrent calls reuse the same master"
    );

    // A master that died is replaced on the next call, transparently.
    // SAFETY: plain kill(2) of a process this test observed.
    unsafe {
        libc::kill(first[0] as i32, libc::SIGKILL);
    }
    assert!(
        wait_dead(first[0] as i32).await,
        "the master survived SIGKILL"
    );
    let out = runner.exec(request("echo again"), None).await.unwrap();
    assert_eq!(out.stdout, b"again\n");
    let second = masters_in(&cm);
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);

    // A timed-out call's group kill does not take the shared master with it.
    let mut slow = request("sleep 30");
    slow.timeout_ms = 500;
    assert!(runner.exec(slow, None).await.unwrap().timed_out);
    assert_eq!(
        masters_in(&cm),
        second,
        "the master survives a timed-out call"
    );

    // disconnect (release/destroy) closes it; close_all closes whatever is left.
    runner.disconnect(&target).await;
    assert!(gone_soon(&cm).await, "disconnect closed the master");
    runner.exec(request("true"), None).await.unwrap();
    assert_eq!(masters_in(&cm).len(), 1);
    runner.close_all().await;
    assert!(gone_soon(&cm).await, "close_all closed the master");
    sim.shutdown().await;
}

/// Commands to a target whose master is up are sent to the master's control socket directly:
/// no `ssh` process is started for them, and what comes back is what a spawned client gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_a_live_master_start_no_ssh_client() {
    use exe_dev_sim::{SimOptions, Simulator};
    if !ssh_available() {
        return;
    }
    let sim = Simulator::start(SimOptions::with_token("mux-token"))
        .await
        .unwrap();
    create_sim_vm(&sim, "mux-token", "muxvm").await;

    let dir = tempfile::tempdir().unwrap();
    // An `ssh` that notes every start, then is the real client.
    let starts = dir.path().join("starts");
    let wrapper = dir.path().join("ssh");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho x >> '{}'\nexec /usr/bin/ssh \"$@\"\n",
            starts.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let started = || {
        fs::read_to_string(&starts)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let runner_with = |reuse: bool, name: &str| {
        let mut settings = SshSettings::new(dir.path().join(name));
        settings.ssh_binary = wrapper.clone();
        settings.ssh_config = Some(sim.ssh_config_path());
        settings.reuse_connections = reuse;
        SshRunner::new(settings, policy(&[])).unwrap()
    };
    let runner = runner_with(true, "state");
    let target = SshTarget {
        host: "muxvm.exe.xyz".into(),
        port: 22,
        user: Some("exedev".into()),
        identity: Identity::KeyMaterial(sim.client_key_pem()),
        host_key_policy: HostKeyPolicy::AcceptNew,
    };
    let request = |command: &str| SshRequest {
        target: target.clone(),
        command: command.into(),
        stdin: None,
        timeout_ms: 60_000,
        max_output_bytes: 1 << 20,
        stream_output: false,
        durable: false,
    };

    // The first call starts the client that becomes the master.
    let out = runner.exec(request("echo one"), None).await.unwrap();
    assert_eq!(out.stdout, b"one\n");
    assert_eq!(started(), 1);
    assert!(
        !out.exit_code_from_remote,
        "a spawned client's status may be its own"
    );

    // Exit codes, both streams byte-exact and apart, stdin, live chunks: no new process.
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let seen = chunks.clone();
    let mut req = request("cat; printf 'e\\0rr' >&2; exit 7");
    let data = pattern(3 * 1024 * 1024 + 5, 7);
    req.stdin = Some(data.clone());
    req.max_output_bytes = 8 << 20;
    let out = runner
        .exec(
            req,
            Some(Box::new(move |kind, chunk: &[u8]| {
                seen.lock().unwrap().push((kind, chunk.len()));
            })),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(7));
    assert!(out.exit_code_from_remote, "the server reported this status");
    assert_eq!(out.signal, None);
    assert!(
        out.stdout == data,
        "stdout ({} bytes) differs from stdin ({} bytes); first difference at {:?}",
        out.stdout.len(),
        data.len(),
        out.stdout.iter().zip(&data).position(|(a, b)| a != b)
    );
    assert_eq!(out.stderr, b"e\0rr");
    let streamed: usize = chunks
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k == StreamKind::Stdout)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(streamed, data.len(), "every stdout byte was streamed live");
    // The output cap holds on this path too.
    let mut req = request("head -c 5000 /dev/zero");
    req.max_output_bytes = 1000;
    let out = runner.exec(req, None).await.unwrap();
    assert_eq!((out.stdout.len(), out.stdout_truncated), (1000, true));
    // Eight at once share the master as well.
    let calls = (0..8).map(|i| runner.exec(request(&format!("echo {i}")), None));
    for (i, out) in paperclip_test_support::harness::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(out.unwrap().stdout, format!("{i}\n").into_bytes());
    }
    assert_eq!(started(), 1, "no ssh client was started after the master");

    // A deadline ends the call (the master closes the channel) and leaves the master up.
    let mut slow = request("echo before; sleep 30");
    slow.timeout_ms = 500;
    let t = Instant::now();
    let out = runner.exec(slow, None).await.unwrap();
    assert!(out.timed_out && out.exit_code.is_none() && out.signal.is_none());
    assert_eq!(out.stdout, b"before\n");
    assert!(t.elapsed() < Duration::from_secs(5));
    let out = runner.exec(request("echo after"), None).await.unwrap();
    assert_eq!(out.stdout, b"after\n");
    assert_eq!(started(), 1);

    // A remote shell killed by a signal gives no exit status: 255, as the client reports it.
    let shared = runner.exec(request("kill -9 $$"), None).await.unwrap();
    let direct = runner_with(false, "direct")
        .exec(request("kill -9 $$"), None)
        .await
        .unwrap();
    assert_eq!(shared.exit_code, Some(255));
    assert!(!shared.exit_code_from_remote, "no status came back");
    assert_eq!(shared.exit_code, direct.exit_code);
    assert_eq!(started(), 2, "only the comparison run started a client");

    // A dead master: the next call starts a client again, which replaces it.
    let cm = dir.path().join("state").join("cm");
    let masters = masters_in(&cm);
    assert_eq!(masters.len(), 1);
    // SAFETY: plain kill(2) of a process this test observed.
    unsafe {
        libc::kill(masters[0] as i32, libc::SIGKILL);
    }
    assert!(
        wait_dead(masters[0] as i32).await,
        "the master survived SIGKILL"
    );
    let out = runner.exec(request("echo replaced"), None).await.unwrap();
    assert_eq!(out.stdout, b"replaced\n");
    assert_eq!(started(), 3);
    runner.exec(request("true"), None).await.unwrap();
    assert_eq!(started(), 3, "the new master is used directly again");

    runner.close_all().await;
    assert!(gone_soon(&cm).await);

    // `connect` opens the master without running anything of the caller's; the command after
    // it takes the shared path, so its status is known to be its own.
    let before = started(); // `close_all` ran `ssh -O exit` through the wrapper too
    assert_eq!(
        runner.connect(&target, 30_000).await.unwrap(),
        Connected::Ready
    );
    assert_eq!(started(), before + 1);
    assert_eq!(
        runner.connect(&target, 30_000).await.unwrap(),
        Connected::Ready,
        "an open connection is reused"
    );
    assert_eq!(started(), before + 1);
    let out = runner
        .exec(request("echo own >&2; exit 255"), None)
        .await
        .unwrap();
    assert_eq!(
        (
            out.exit_code,
            out.exit_code_from_remote,
            out.stderr.as_slice()
        ),
        (Some(255), true, &b"own\n"[..])
    );
    assert_eq!(started(), before + 1);
    // A connection that cannot be opened says why (here: an unknown host key under `yes`).
    let mut strict = target.clone();
    strict.host_key_policy = HostKeyPolicy::Yes;
    let fresh = runner_with(true, "strict");
    match fresh.connect(&strict, 30_000).await.unwrap() {
        Connected::Failed(out) => {
            assert_eq!(out.exit_code, Some(255));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("Host key verification failed"), "{err}");
        }
        other => panic!("expected a failed connection, got {other:?}"),
    }
    // Connections that are not pooled: nothing to open.
    assert_eq!(
        runner_with(false, "unpooled")
            .connect(&target, 30_000)
            .await
            .unwrap(),
        Connected::Unpooled
    );
    runner.close_all().await;
    sim.shutdown().await;
}

/// `new --json --name=<name>` on the simulator through the policy hooks, as the component
/// sends it; returns the created VM's JSON.
async fn create_sim_vm(sim: &exe_dev_sim::Simulator, token: &str, name: &str) -> serde_json::Value {
    let mut hooks = PolicyHttpHooks::new(policy(&[&sim.api_authority()]), HttpLimits::default());
    let body = http_body_util::Full::new(Bytes::from(format!("new --json --name={name}")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = http::Request::builder()
        .method("POST")
        .uri(sim.api_url())
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .unwrap();
    let (resp, io) = Pin::from(hooks.send_request(req, None, Box::new(async { Ok(()) })))
        .await
        .unwrap();
    tokio::spawn(Pin::from(io));
    assert_eq!(resp.status(), 200);
    let created = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&created).unwrap()
}

/// The output of `seq 1 n`, as the remote prints it.
fn seq_output(n: u32) -> Vec<u8> {
    (1..=n)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// Output still on its way when the exit status arrives is delivered in full. With a reader
/// slower than the remote command, the SSH server's `exit-status` reaches the master while up to
/// a channel window of output is still queued in the master (or on the wire); the call must go
/// on reading until the streams end. Checked on the shared-connection path (the regression:
/// releasing the master's control connection at the exit message made it discard that queue)
/// and on spawned clients (with and without connection sharing), on loopback and over a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_trailing_the_exit_status_is_never_lost() {
    use exe_dev_sim::{LinkModel, SimOptions, Simulator};
    if !ssh_available() {
        return;
    }
    for link in [None, Some(LinkModel::new(30, 100))] {
        let sim = Simulator::start(SimOptions {
            link,
            ..SimOptions::with_token("tail-token")
        })
        .await
        .unwrap();
        create_sim_vm(&sim, "tail-token", "tailvm").await;
        let dir = tempfile::tempdir().unwrap();
        let runner_with = |reuse: bool, name: &str| {
            let mut settings = SshSettings::new(dir.path().join(name));
            settings.ssh_binary = "/usr/bin/ssh".into();
            settings.ssh_config = Some(sim.ssh_config_path());
            settings.reuse_connections = reuse;
            SshRunner::new(settings, policy(&[])).unwrap()
        };
        let request = |command: &str| SshRequest {
            target: SshTarget {
                host: "tailvm.exe.xyz".into(),
                port: 22,
                user: Some("exedev".into()),
                identity: Identity::KeyMaterial(sim.client_key_pem()),
                host_key_policy: HostKeyPolicy::AcceptNew,
            },
            command: command.into(),
            stdin: None,
            timeout_ms: 120_000,
            max_output_bytes: 64 << 20,
            stream_output: false,
            durable: false,
        };
        // ~4.9 MiB on stdout, and a tail on stderr written after it.
        let n = 700_000;
        let expected = seq_output(n);
        let command = format!("seq 1 {n}; echo tail >&2");
        let pooled = runner_with(true, "pooled");
        let unpooled = runner_with(false, "unpooled");
        // pooled: the first call spawns the client that becomes the master; the next two go
        // over the master's control socket.
        for (runner, path, slow) in [
            (&pooled, "spawned, becoming the master", false),
            (&pooled, "shared connection", false),
            (&pooled, "shared connection, slow reader", true),
            (&unpooled, "spawned, no sharing", false),
            (&unpooled, "spawned, no sharing, slow reader", true),
        ] {
            let chunks = Arc::new(Mutex::new(Vec::<u8>::new()));
            let sink = chunks.clone();
            // A slow consumer (3 ms per chunk) keeps the remote far ahead of the reader.
            let on_chunk = Box::new(move |kind: StreamKind, chunk: &[u8]| {
                if kind == StreamKind::Stdout {
                    sink.lock().unwrap().extend_from_slice(chunk);
                }
                if slow {
                    std::thread::sleep(Duration::from_millis(3));
                }
            });
            let out = runner
                .exec(request(&command), Some(on_chunk))
                .await
                .unwrap();
            let what = format!("{path}, link {link:?}");
            assert_eq!(out.exit_code, Some(0), "{what}");
            assert!(!out.timed_out && !out.stdout_truncated, "{what}");
            assert_eq!(out.stdout.len(), expected.len(), "{what}: stdout length");
            assert!(out.stdout == expected, "{what}: stdout differs");
            assert_eq!(out.stderr, b"tail\n", "{what}");
            assert!(
                *chunks.lock().unwrap() == expected,
                "{what}: live chunks differ"
            );
        }
        pooled.close_all().await;
        sim.shutdown().await;
    }
}

/// Tests of the real OpenSSH client are skipped on a developer machine without it, never in CI
/// (`.ci/run` installs it and sets `CI`), so a missing client cannot pass them there.
fn ssh_available() -> bool {
    let found = Path::new("/usr/bin/ssh").exists();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "/usr/bin/ssh is required when CI is set"
    );
    if !found {
        eprintln!("skipping: /usr/bin/ssh is not installed");
    }
    found
}
