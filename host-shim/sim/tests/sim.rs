//! The exe.dev simulator over real HTTP (hyper client) and the real OpenSSH client.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use exe_dev_sim::{Routing, SimOptions, Simulator, ANY, ONBOARDING_MARKER};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "exe1.test-token";

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("bad json {:?}: {e}", self.body))
    }
}

async fn start() -> Simulator {
    start_with(Routing::default()).await
}

async fn start_with(routing: Routing) -> Simulator {
    let mut opts = SimOptions::with_token(TOKEN);
    opts.routing = routing;
    Simulator::start(opts).await.expect("sim start")
}

/// One request on a fresh connection; `Err` when the connection dies without a response.
async fn request(
    sim: &Simulator,
    method: &str,
    auth: Option<&str>,
    body: impl Into<Bytes>,
) -> Result<Resp, String> {
    let stream = tokio::net::TcpStream::connect(sim.api_authority())
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(sim.api_url())
        .header("Host", sim.api_authority())
        .header("Content-Type", "text/plain; charset=utf-8");
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    })
}

async fn exec(sim: &Simulator, cmd: &str) -> Resp {
    request(
        sim,
        "POST",
        Some(&format!("Bearer {TOKEN}")),
        cmd.to_owned(),
    )
    .await
    .expect("response")
}

fn error_of(r: &Resp) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn api_request_checks() {
    let sim = start().await;

    let r = request(&sim, "POST", None, "whoami").await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body,
        "{\"error\":\"missing or invalid Authorization header\"}\n"
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer");

    let r = request(&sim, "POST", Some(&format!("Basic {TOKEN}")), "whoami")
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r), "missing or invalid Authorization header");

    let r = request(&sim, "POST", Some("Bearer nope"), "whoami")
        .await
        .unwrap();
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid token"));

    // The scheme is case-insensitive.
    let r = request(&sim, "POST", Some(&format!("bearer {TOKEN}")), "whoami")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json; charset=utf-8");
    assert!(r.body.ends_with("}\n"));
    let who = r.json();
    assert_eq!(who["email"], "sim@example.com");
    assert!(who["ssh_keys"][0]["public_key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));

    let r = request(&sim, "GET", Some(&format!("Bearer {TOKEN}")), "")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "POST");

    let r = exec(&sim, "   \n").await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (400, "missing command in request body")
    );
    let r = exec(&sim, "ls\0").await;
    assert_eq!(r.status, 400);
    let r = exec(&sim, "ls 'unbalanced").await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (400, "invalid command syntax")
    );
    let r = exec(&sim, "frobnicate --json").await;
    assert_eq!((r.status, error_of(&r).as_str()), (404, "unknown command"));

    // 64KB is fine (trimmed away), 64KB+1 is not.
    let mut body = String::from("whoami");
    body.push_str(&" ".repeat(64 * 1024 - body.len()));
    assert_eq!(exec(&sim, &body).await.status, 200);
    body.push(' ');
    let r = exec(&sim, &body).await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (413, "request body exceeds 64KB limit")
    );

    let r = exec(&sim, "new --json --bogus").await;
    assert_eq!(r.status, 422);
    assert!(
        error_of(&r).contains("flag provided but not defined: -bogus"),
        "{}",
        r.body
    );

    let log = sim.api_log();
    assert!(log.iter().any(|c| c.command == "whoami" && c.status == 200));
    assert!(log.iter().any(|c| c.status == 413));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn new_ls_rm_round_trip() {
    let sim = start_with(Routing::DirectPorts).await;
    let r = exec(
        &sim,
        "new --json --no-email --name='sim-alpha' --cpu='4' --memory='4GB' --disk='20GB' \
         --comment='hello world' --env='A=b c' --env 'B=2' --tag x -tag=y --image=exeuntu",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "https_url",
            "region",
            "region_display",
            "ssh_command",
            "ssh_dest",
            "ssh_host",
            "ssh_port",
            "status",
            "vm_name"
        ]
    );
    assert_eq!(v["vm_name"], "sim-alpha");
    assert_eq!(v["ssh_dest"], "sim-alpha.exe.xyz");
    assert_eq!(v["ssh_host"], "sim-alpha.exe.xyz");
    // Direct-port routing reports the real loopback port (an explicit `-p` must carry it).
    assert_eq!(v["ssh_port"], sim.vm_ssh_port("sim-alpha").unwrap());
    assert_eq!(v["https_url"], "https://sim-alpha.exe.xyz");
    assert_eq!(v["status"], "running");
    assert_eq!(v["region"], "lon");
    assert_eq!(v["region_display"], "London, UK");
    assert_eq!(sim.vm_names(), ["sim-alpha"]);
    let cfg = std::fs::read_to_string(sim.ssh_config_path()).unwrap();
    assert!(
        cfg.contains("Host sim-alpha.exe.xyz\n  HostName 127.0.0.1\n"),
        "{cfg}"
    );

    // Flags interleaved with nothing positional but `--` makes the rest positional.
    let r = exec(&sim, "new --json extra").await;
    assert_eq!(r.status, 422);
    assert_eq!(
        error_of(&r),
        "\"new\" command has no subcommands and does not take positional arguments"
    );

    let r = exec(&sim, "ls --json").await;
    assert_eq!(r.status, 200);
    let vms = r.json()["vms"].as_array().unwrap().clone();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["tags"], serde_json::json!(["x", "y"]));
    assert_eq!(vms[0]["comment"], "hello world");
    assert_eq!(vms[0]["image"], "exeuntu");
    assert_eq!(vms[0]["allocated_cpus"], 4);
    let r = exec(&sim, "ls --json 'sim-alpha'").await;
    assert_eq!(r.json()["vms"][0]["vm_name"], "sim-alpha");
    let r = exec(&sim, "ls --json other-name").await;
    assert_eq!(r.json(), serde_json::json!({"vms": []}));

    let r = exec(&sim, "new --json --name=sim-alpha").await;
    assert_eq!(r.status, 409);
    assert!(error_of(&r).contains("not available"));

    for bad in [
        "abc",
        "Upper-case",
        "mybox-123",
        "mybox-p80",
        "port8080",
        "trailing-",
        "double--dash",
    ] {
        let r = exec(&sim, &format!("new --json --name={bad}")).await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert!(
            error_of(&r).contains("invalid VM name"),
            "{bad}: {}",
            r.body
        );
    }

    // Auto-generated names are valid and unique.
    let r = exec(&sim, "new --json").await;
    assert_eq!(r.status, 200);
    let auto = r.json()["vm_name"].as_str().unwrap().to_owned();
    assert_ne!(auto, "sim-alpha");

    let r = exec(&sim, "rm sim-alpha --json").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"vm_name": "sim-alpha", "status": "deleted"})
    );
    let r = exec(&sim, "rm sim-alpha").await;
    assert_eq!(r.status, 422);
    assert_eq!(error_of(&r), "vm \"sim-alpha\" not found");
    // Deleted names stay reserved.
    let r = exec(&sim, "new --json --name=sim-alpha").await;
    assert_eq!(r.status, 409);
    assert!(!std::fs::read_to_string(sim.ssh_config_path())
        .unwrap()
        .contains("Host sim-alpha"));

    // Go flag forms: `-name v`, flags after positionals, `--help` without side effects.
    let r = exec(&sim, "new -name sim-bravo -json --no-email=true").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = exec(&sim, "cp sim-bravo --json sim-charlie --copy-tags=false").await;
    assert_eq!(r.json()["vm_name"], "sim-charlie");
    let r = exec(&sim, "cp no-such-vm").await;
    assert_eq!(r.status, 422);
    assert!(error_of(&r).contains("not found"));
    let r = exec(&sim, "new --help").await;
    assert_eq!(r.json()["command"], "new");
    let r = exec(&sim, "ls 'sim-*' --json").await;
    assert_eq!(r.json()["vms"].as_array().unwrap().len(), 2);
    // Several names: all deleted, or none when one is missing.
    let r = exec(&sim, "rm sim-bravo sim-missing").await;
    assert_eq!(r.status, 422);
    assert_eq!(sim.vm_names().len(), 3);
    let r = exec(&sim, "rm sim-bravo sim-charlie --json").await;
    assert_eq!(r.json()["vms"].as_array().unwrap().len(), 2);

    assert_eq!(exec(&sim, &format!("rm {auto}")).await.status, 200);
    assert!(sim.vm_names().is_empty());
    assert_eq!(
        exec(&sim, "ls --json").await.json(),
        serde_json::json!({"vms": []})
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_permissions() {
    let mut opts = SimOptions::with_token(TOKEN);
    opts.allowed_cmds = Some(vec!["new".into(), "ls".into(), "whoami".into()]);
    let sim = Simulator::start(opts).await.unwrap();
    assert_eq!(exec(&sim, "new --json --name=perm-test").await.status, 200);
    let r = exec(&sim, "rm perm-test").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body,
        "{\"error\":\"command not allowed by token permissions\"}\n"
    );
    assert_eq!(exec(&sim, "cp perm-test").await.status, 403);
    assert_eq!(sim.vm_names(), ["perm-test"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_faults() {
    let mut opts = SimOptions::with_token(TOKEN);
    opts.exec_timeout = Duration::from_millis(700);
    let sim = Simulator::start(opts).await.unwrap();

    sim.faults().fail_command("new", 500, 1);
    let r = exec(&sim, "new --json --name=fault-one").await;
    assert_eq!((r.status, error_of(&r).as_str()), (500, "internal error"));
    assert!(sim.vm_names().is_empty(), "a failed new creates nothing");
    assert_eq!(exec(&sim, "new --json --name=fault-one").await.status, 200);

    sim.faults()
        .fail_command_with_body(ANY, 503, "upstream boom", 1);
    let r = exec(&sim, "ls --json").await;
    assert_eq!((r.status, r.body.as_str()), (503, "upstream boom\n"));
    sim.faults().fail_command("ls", 429, 2);
    assert_eq!(exec(&sim, "ls").await.status, 429);
    assert_eq!(exec(&sim, "ls").await.status, 429);
    assert_eq!(exec(&sim, "ls").await.status, 200);

    // Created, then the response is lost.
    sim.faults().lose_response("new", 1);
    let r = request(
        &sim,
        "POST",
        Some(&format!("Bearer {TOKEN}")),
        "new --json --name=fault-lost",
    )
    .await;
    assert!(
        r.is_err(),
        "expected a dropped connection, got {:?}",
        r.map(|r| r.status)
    );
    assert!(sim.vm_names().contains(&"fault-lost".to_owned()));
    sim.faults().lose_response_with_status("new", 502, 1);
    let r = exec(&sim, "new --json --name=fault-gateway").await;
    assert_eq!(r.status, 502);
    assert!(sim.vm_names().contains(&"fault-gateway".to_owned()));
    let lost = sim
        .api_log()
        .into_iter()
        .find(|c| c.body.contains("fault-lost"))
        .unwrap();
    assert_eq!(lost.status, 0);

    // Slow responses: within the limit they succeed late; past it they are 504, but the VM
    // exists.
    sim.faults()
        .delay_command("new", Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(exec(&sim, "new --json --name=fault-slow").await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    sim.faults().delay_command("new", Duration::from_secs(5));
    let t = Instant::now();
    let r = exec(&sim, "new --json --name=fault-slower").await;
    assert_eq!(
        (r.status, error_of(&r).as_str()),
        (504, "command timed out")
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(sim.vm_names().contains(&"fault-slower".to_owned()));
    sim.faults().clear();

    let names = sim.vm_names().join(" ");
    assert_eq!(exec(&sim, &format!("rm {names}")).await.status, 200);
    assert!(sim.vm_names().is_empty());
    sim.shutdown().await;
}

/// Runs the system `ssh` against a simulator VM.
struct Ssh {
    config: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    extra: Vec<String>,
}

struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Ssh {
    fn new(sim: &Simulator, dir: &Path) -> Ssh {
        Ssh {
            config: sim.ssh_config_path(),
            key: sim.client_key_path(),
            known_hosts: dir.join("known_hosts"),
            extra: Vec::new(),
        }
    }

    async fn run(&self, vm: &str, cmd: &str, stdin: &[u8]) -> Out {
        let mut c = tokio::process::Command::new("ssh");
        c.arg("-F")
            .arg(&self.config)
            .arg("-i")
            .arg(&self.key)
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "ConnectTimeout=10",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(&self.extra)
            .arg(format!("exedev@{vm}.exe.xyz"))
            .arg(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = c.spawn().expect("spawn ssh");
        let mut sin = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = tokio::spawn(async move {
            let _ = sin.write_all(&data).await;
            drop(sin);
        });
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("ssh timed out")
            .unwrap();
        let _ = writer.await;
        Out {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        }
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    // Multi-byte UTF-8 ("é", "€") mixed with ASCII, so chunk boundaries split characters.
    let unit = format!("{seed}-é€abc\n").into_bytes();
    unit.iter().copied().cycle().take(len).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_exec_via_gateway() {
    streams_and_isolation(Routing::Gateway).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_exec_via_direct_ports() {
    streams_and_isolation(Routing::DirectPorts).await;
}

async fn streams_and_isolation(routing: Routing) {
    let sim = start_with(routing).await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    assert_eq!(
        exec(&sim, "new --json --name=ssh-one --env=GREETING=hi")
            .await
            .status,
        200
    );
    assert_eq!(exec(&sim, "new --json --name=ssh-two").await.status, 200);

    let o = ssh
        .run("ssh-one", "echo out; echo err >&2; exit 3", b"")
        .await;
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.code, Some(3));
    let logged = sim.ssh_log();
    let last = logged.last().unwrap();
    assert_eq!(last.vm, "ssh-one");
    assert_eq!(
        last.command.as_deref(),
        Some("echo out; echo err >&2; exit 3")
    );
    assert_eq!(last.exit_code, Some(3));

    let o = ssh
        .run(
            "ssh-one",
            "printf '%s|%s|%s|%s' \"$USER\" \"$GREETING\" \"$(pwd)\" \"$HOME\"",
            b"",
        )
        .await;
    let home = sim.vm_home("ssh-one").unwrap();
    let expect = format!("exedev|hi|{0}|{0}", home.display());
    assert_eq!(String::from_utf8_lossy(&o.stdout), expect);

    // Isolation: a file written in one VM is absent in the other.
    assert_eq!(
        ssh.run("ssh-one", "echo secret > mine.txt", b"").await.code,
        Some(0)
    );
    assert!(home.join("mine.txt").exists());
    let o = ssh
        .run(
            "ssh-two",
            "test -e mine.txt && echo present || echo absent",
            b"",
        )
        .await;
    assert_eq!(o.stdout, b"absent\n");

    // stdin round trip, 1 MiB and 8 MiB through `cat`.
    for len in [1 << 20, 8 << 20] {
        let input = pattern(len, 7);
        let o = ssh.run("ssh-one", "cat", &input).await;
        assert_eq!(o.code, Some(0));
        assert!(o.stdout == input, "stdin round trip of {len} bytes differs");
    }

    // 20 MiB stdout with concurrent stderr, byte-exact.
    let big = pattern(20 << 20, 3);
    std::fs::write(sim.vm_home("ssh-two").unwrap().join("big"), &big).unwrap();
    let o = ssh
        .run(
            "ssh-two",
            "i=0; while [ $i -lt 2000 ]; do echo e$i >&2; i=$((i+1)); done & cat big; wait",
            b"",
        )
        .await;
    assert_eq!(o.code, Some(0));
    assert!(
        o.stdout == big,
        "20 MiB stdout differs (got {} bytes)",
        o.stdout.len()
    );
    let expect_err: String = (0..2000).map(|i| format!("e{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&o.stderr), expect_err);

    // Deleted VM: unreachable, and its running processes are gone.
    let runner = {
        let ssh = Ssh::new(&sim, tmp.path());
        tokio::spawn(async move { ssh.run("ssh-two", "sleep 300", b"").await })
    };
    assert!(
        until(Duration::from_secs(10), || sim.vm_process_count("ssh-two")
            == Some(1))
        .await,
        "the remote command did not start"
    );
    assert_eq!(exec(&sim, "rm ssh-two").await.status, 200);
    let o = tokio::time::timeout(Duration::from_secs(10), runner)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(o.code, Some(0));
    let o = ssh.run("ssh-two", "true", b"").await;
    assert_eq!(o.code, Some(255));
    // Direct ports: "Connection refused"; gateway: the jump reports "stdio forwarding failed".
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused") || err.contains("forwarding failed"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    if routing == Routing::Gateway {
        // An explicit `-p 22` (as a client that always passes the port does) still routes.
        let mut p22 = Ssh::new(&sim, tmp.path());
        p22.extra = vec!["-p".into(), "22".into()];
        assert_eq!(
            p22.run("ssh-one", "echo routed", b"").await.stdout,
            b"routed\n"
        );
    }

    assert_eq!(exec(&sim, "rm ssh-one").await.status, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_concurrent_and_multiplexed() {
    let sim = start().await;
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(exec(&sim, "new --json --name=conc-vm").await.status, 200);
    // Prime known_hosts so concurrent accept-new writers don't race.
    let plain = Ssh::new(&sim, tmp.path());
    assert_eq!(plain.run("conc-vm", "true", b"").await.code, Some(0));

    for multiplexed in [false, true] {
        let mut ssh = Ssh::new(&sim, tmp.path());
        if multiplexed {
            ssh.extra = vec![
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                format!("ControlPath={}/cm-%C", tmp.path().display()),
                "-o".into(),
                "ControlPersist=20".into(),
            ];
            // Open the master first so all 8 sessions share its connection.
            assert_eq!(ssh.run("conc-vm", "true", b"").await.code, Some(0));
        }
        let ssh = std::sync::Arc::new(ssh);
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let ssh = ssh.clone();
            tasks.push(tokio::spawn(async move {
                let input = pattern(256 * 1024 + usize::from(i), i);
                let o = ssh
                    .run(
                        "conc-vm",
                        &format!("sleep 0.2; cat; echo done{i} >&2; exit {i}"),
                        &input,
                    )
                    .await;
                assert_eq!(o.code, Some(i32::from(i)));
                assert!(o.stdout == input, "session {i} stdout differs");
                assert_eq!(o.stderr, format!("done{i}\n").into_bytes());
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        if multiplexed {
            let _ = tokio::process::Command::new("ssh")
                .arg("-F")
                .arg(sim.ssh_config_path())
                .arg("-o")
                .arg(format!("ControlPath={}/cm-%C", tmp.path().display()))
                .args(["-O", "exit", "exedev@conc-vm.exe.xyz"])
                .output()
                .await;
        }
    }
    assert_eq!(exec(&sim, "rm conc-vm").await.status, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_faults_setup_and_cp() {
    let sim = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    let r = exec(
        &sim,
        "new --json --name=setup-vm --setup-script 'echo booted > booted.txt; echo \"$USER\" >> booted.txt'",
    )
    .await;
    assert_eq!(r.status, 200);
    let home = sim.vm_home("setup-vm").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(home.join("booted.txt")).map_or(true, |s| s.lines().count() < 2) {
        assert!(Instant::now() < deadline, "setup script did not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_to_string(home.join("booted.txt")).unwrap(),
        "booted\nexedev\n"
    );

    // cp copies the home directory into a VM with its own identity.
    let r = exec(
        &sim,
        "cp setup-vm setup-copy --json --cpu='4' --memory='8GB' --disk='40GB'",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["vm_name"], "setup-copy");
    let o = ssh.run("setup-copy", "cat booted.txt", b"").await;
    assert_eq!(o.stdout, b"booted\nexedev\n");

    // Dropped connections, N times; a connection already open is cut too.
    let open = {
        let ssh = Ssh::new(&sim, tmp.path());
        tokio::spawn(async move { ssh.run("setup-vm", "sleep 30", b"").await })
    };
    // The session is open once its command runs (the setup script, the VM's only other
    // process, has finished once its file is gone).
    let setup_file = home.parent().unwrap().join("setup");
    assert!(
        until(Duration::from_secs(10), || !setup_file.exists()
            && sim.vm_process_count("setup-vm").is_some_and(|n| n > 0))
        .await,
        "the session did not open"
    );
    sim.faults().drop_ssh("setup-vm", 1);
    let o = tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .expect("open session cut")
        .unwrap();
    assert_eq!(o.code, Some(255));
    assert_eq!(ssh.run("setup-vm", "true", b"").await.code, Some(255));
    assert_eq!(ssh.run("setup-vm", "true", b"").await.code, Some(0));

    // Onboarding marker.
    sim.faults().set_onboarding(ANY, true);
    let o = ssh.run("setup-copy", "echo should-not-run", b"").await;
    assert_eq!(o.code, Some(1));
    assert_eq!(o.stdout, ONBOARDING_MARKER.as_bytes());
    sim.faults().set_onboarding(ANY, false);

    // Slow readiness: refused at first, then reachable; ls says starting, then running.
    sim.faults()
        .set_ssh_ready_delay(Some(Duration::from_secs(2)));
    let r = exec(&sim, "new --json --name=slow-vm").await;
    assert_eq!(r.json()["status"], "starting");
    let o = ssh.run("slow-vm", "true", b"").await;
    assert_eq!(o.code, Some(255));
    let deadline = Instant::now() + Duration::from_secs(10);
    while exec(&sim, "ls slow-vm").await.json()["vms"][0]["status"] != "running" {
        assert!(Instant::now() < deadline, "slow-vm never became running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ssh.run("slow-vm", "echo up", b"").await.stdout, b"up\n");
    sim.faults().set_ssh_ready_delay(None);

    // A key the account does not know is refused.
    let other = tmp.path().join("other_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status();
    if st.is_ok_and(|s| s.success()) {
        let mut wrong = Ssh::new(&sim, tmp.path());
        wrong.key = other;
        assert_eq!(wrong.run("setup-vm", "true", b"").await.code, Some(255));
    }

    // Unknown VMs are refused locally, never routed to real DNS.
    assert_eq!(ssh.run("no-such-vm", "true", b"").await.code, Some(255));

    let state = sim.state_dir().to_path_buf();
    let key = std::fs::metadata(sim.client_key_path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Shutdown deletes the VMs (and their processes) and removes the state.
    let _bg = ssh
        .run("slow-vm", "nohup sleep 300 >/dev/null 2>&1 &", b"")
        .await;
    sim.shutdown().await;
    assert!(!state.exists());
}

/// `home_template`: every VM `new` creates starts with a copy of the directory (modes and
/// symlinks kept, later changes to the template not shared); `cp` copies its source instead.
#[tokio::test(flavor = "multi_thread")]
async fn home_template_seeds_new_vms() {
    use std::os::unix::fs::PermissionsExt;
    let template = tempfile::tempdir().unwrap();
    let bin = template.path().join(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("agent"), "#!/bin/sh\necho fake-agent \"$@\"\n").unwrap();
    std::fs::set_permissions(bin.join("agent"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        template.path().join(".profile"),
        "PATH=\"$HOME/.local/bin:$PATH\"\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("agent", bin.join("cursor-agent")).unwrap();
    let mut opts = SimOptions::with_token(TOKEN);
    opts.home_template = Some(template.path().to_path_buf());
    let sim = Simulator::start(opts).await.expect("sim start");
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    assert_eq!(exec(&sim, "new --json --name=tpl-one").await.status, 200);
    let o = ssh
        .run(
            "tpl-one",
            "$HOME/.local/bin/agent -p x && readlink .local/bin/cursor-agent",
            b"",
        )
        .await;
    assert_eq!(o.code, Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"fake-agent -p x\nagent\n");
    // A login shell reads the template's profile.
    let o = ssh.run("tpl-one", "sh -lc 'command -v agent'", b"").await;
    let home = sim.vm_home("tpl-one").unwrap();
    assert_eq!(
        o.stdout,
        format!("{}/.local/bin/agent\n", home.display()).as_bytes()
    );
    let mode = std::fs::metadata(home.join(".local/bin/agent"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // Each VM has its own copy.
    ssh.run("tpl-one", "echo changed > .local/bin/agent", b"")
        .await;
    assert_eq!(exec(&sim, "new --json --name=tpl-two").await.status, 200);
    let o = ssh.run("tpl-two", "cat .local/bin/agent", b"").await;
    assert!(
        o.stdout.starts_with(b"#!/bin/sh"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // cp copies the source VM, not the template.
    assert_eq!(exec(&sim, "cp tpl-one tpl-copy --json").await.status, 200);
    assert_eq!(
        ssh.run("tpl-copy", "cat .local/bin/agent", b"")
            .await
            .stdout,
        b"changed\n"
    );
    sim.shutdown().await;

    // A template that is not a directory is refused at start.
    let mut opts = SimOptions::with_token(TOKEN);
    opts.home_template = Some(template.path().join("missing"));
    let err = Simulator::start(opts)
        .await
        .err()
        .expect("a missing template is an error");
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

/// Like sshd without a pty, losing the client does not kill the command; with a (requested)
/// pty it gets SIGHUP. `rm` kills whatever is left.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_client_disconnect_semantics() {
    let sim = start().await;
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(exec(&sim, "new --json --name=disc-vm").await.status, 200);
    let mut ssh = Ssh::new(&sim, tmp.path());
    assert_eq!(ssh.run("disc-vm", "true", b"").await.code, Some(0));

    let wait_count = |want: usize| {
        let sim = &sim;
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let n = sim.vm_process_count("disc-vm").unwrap();
                if n == want || Instant::now() > deadline {
                    return n;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    for (pty, survivors) in [(true, 0), (false, 1)] {
        ssh.extra = if pty { vec!["-tt".into()] } else { Vec::new() };
        let fut = ssh.run("disc-vm", "sleep 300", b"");
        // Dropping the future kills the ssh client (kill_on_drop), once the command runs (on
        // a loaded machine the handshake alone can take longer than any fixed pause).
        tokio::select! {
            _ = fut => panic!("`sleep 300` ended by itself (pty={pty})"),
            n = wait_count(1) => assert_eq!(n, 1, "the command started (pty={pty})"),
        }
        assert_eq!(wait_count(survivors).await, survivors, "pty={pty}");
    }
    assert_eq!(exec(&sim, "rm disc-vm").await.status, 200);
    sim.shutdown().await;
}

/// 8 VMs × 8 concurrent sessions through the gateway, as the provider's concurrency test does.
#[tokio::test(flavor = "multi_thread")]
async fn ssh_eight_vms_by_eight_sessions() {
    let sim = start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = std::sync::Arc::new(Ssh::new(&sim, tmp.path()));
    let vms: Vec<String> = (0..8)
        .map(|i| format!("fleet-vm-{}", char::from(b'a' + i)))
        .collect();
    for vm in &vms {
        assert_eq!(
            exec(&sim, &format!("new --json --name={vm}")).await.status,
            200
        );
        // Prime known_hosts (accept-new writers would otherwise race on the file).
        assert_eq!(ssh.run(vm, "true", b"").await.code, Some(0));
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for vm in &vms {
        for i in 0..8u8 {
            let ssh = ssh.clone();
            let vm = vm.clone();
            tasks.push(tokio::spawn(async move {
                let input = pattern(64 * 1024 + usize::from(i), i);
                let o = ssh
                    .run(
                        &vm,
                        &format!("cat; printf '%s' {vm}-{i} >&2; exit {i}"),
                        &input,
                    )
                    .await;
                assert_eq!(
                    o.code,
                    Some(i32::from(i)),
                    "{vm}/{i}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(o.stdout == input, "{vm}/{i} stdout differs");
                assert_eq!(o.stderr, format!("{vm}-{i}").into_bytes());
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("64 sessions in {:?}", t.elapsed());
    let names = vms.join(" ");
    assert_eq!(exec(&sim, &format!("rm {names}")).await.status, 200);
    assert!(sim.vm_names().is_empty());
    sim.shutdown().await;
}

/// Tests and the demo share one simulator across tasks.
#[test]
fn simulator_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Simulator>();
}

/// Poll `f` every 20 ms until it holds or `within` passes; true when it held.
async fn until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
