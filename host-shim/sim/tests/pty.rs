//! Sessions that send `pty-req` run on a real pseudo-terminal, as under sshd: the system
//! OpenSSH client with `-tt` (also through a ControlMaster, which sends all-zero terminal
//! modes when its client's stdin is not a terminal) and russh's client (exact window sizes,
//! window-change, exit-signal).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use exe_dev_sim::{Routing, SimOptions, Simulator};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

const TOKEN: &str = "exe1.pty-token";

async fn start(routing: Routing) -> Simulator {
    let mut opts = SimOptions::with_token(TOKEN);
    opts.routing = routing;
    Simulator::start(opts).await.expect("sim start")
}

/// One `/exec` call; returns the status.
async fn api(sim: &Simulator, cmd: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(sim.api_authority())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(sim.api_url())
        .header("Host", sim.api_authority())
        .header("Authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(cmd.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

async fn new_vm(sim: &Simulator, name: &str) {
    assert_eq!(api(sim, &format!("new --json --name={name}")).await, 200);
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

// ---------------------------------------------------------------------------------------------
// The system OpenSSH client.

struct Ssh {
    config: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

/// A running `ssh -tt`, with its output collected as it arrives.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::UnboundedReceiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Ssh {
    fn new(sim: &Simulator, dir: &Path) -> Ssh {
        Ssh {
            config: sim.ssh_config_path(),
            key: sim.client_key_path(),
            dir: dir.to_owned(),
        }
    }

    fn base(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.arg("-F")
            .arg(&self.config)
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"])
            .args(["-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.dir.join("known_hosts").display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    }

    /// Starts `ssh -tt vm cmd` (through `master`'s control socket when given). Its stdin is a
    /// pipe, so the client requests a 0×0 pty and (through a master) all-zero modes.
    fn spawn(&self, vm: &str, cmd: &str, master: Option<&Path>) -> Session {
        let mut c = self.base();
        if let Some(path) = master {
            c.args(["-o", "ControlMaster=no"])
                .arg("-o")
                .arg(format!("ControlPath={}", path.display()));
        }
        c.arg("-tt").arg(format!("exedev@{vm}.exe.xyz")).arg(cmd);
        let mut child = c.spawn().expect("spawn ssh");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = stdout.read(&mut buf).await {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Session {
            child,
            stdin,
            out,
            seen: Vec::new(),
        }
    }

    /// Starts a ControlMaster for `vm` (backgrounded by `-f`) and returns its socket.
    async fn master(&self, vm: &str) -> PathBuf {
        let path = self.dir.join(format!("cm-{vm}"));
        let st = self
            .base()
            .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=yes"])
            .arg("-o")
            .arg(format!("ControlPath={}", path.display()))
            .args(["-f", "-N"])
            .arg(format!("exedev@{vm}.exe.xyz"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(st.success(), "ControlMaster for {vm} started");
        path
    }

    async fn stop_master(&self, vm: &str, path: &Path) {
        let _ = self
            .base()
            .arg("-o")
            .arg(format!("ControlPath={}", path.display()))
            .args(["-O", "exit"])
            .arg(format!("exedev@{vm}.exe.xyz"))
            .stdin(Stdio::null())
            .status()
            .await;
    }
}

impl Session {
    async fn send(&mut self, data: &[u8]) {
        let sin = self.stdin.as_mut().expect("stdin open");
        sin.write_all(data).await.unwrap();
        sin.flush().await.unwrap();
    }

    /// Reads until `want` has been seen (anywhere in the output so far); panics after 20 s.
    async fn wait_for(&mut self, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !contains(&self.seen, want) {
            match tokio::time::timeout_at(deadline.into(), self.out.recv()).await {
                Ok(Some(chunk)) => self.seen.extend_from_slice(&chunk),
                _ => panic!(
                    "no {:?} in {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&self.seen)
                ),
            }
        }
    }

    /// Everything until the client exits, and its exit code.
    async fn finish(mut self) -> (Option<i32>, Vec<u8>) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("ssh exits")
            .unwrap();
        while let Some(chunk) = self.out.recv().await {
            self.seen.extend_from_slice(&chunk);
        }
        (status.code(), self.seen)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------------------------
// russh's client, which sets exact sizes and sends window-change.

struct Client;

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

async fn russh_connect(sim: &Simulator, vm: &str) -> russh::client::Handle<Client> {
    let port = sim.vm_ssh_port(vm).expect("direct port");
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, ("127.0.0.1", port), Client)
        .await
        .expect("connect");
    let key = russh::keys::decode_secret_key(&sim.client_key_pem(), None).unwrap();
    let auth = h
        .authenticate_publickey("exedev", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .unwrap();
    assert!(auth.success(), "authenticated");
    h
}

/// What a channel delivered: its data and how the command ended.
#[derive(Default)]
struct Outcome {
    data: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<u32>,
    signal: Option<Sig>,
}

async fn collect(ch: &mut russh::Channel<russh::client::Msg>, out: &mut Outcome, until: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while until.is_empty() || !contains(&out.data, until) {
        let msg = tokio::time::timeout_at(deadline.into(), ch.wait())
            .await
            .unwrap_or_else(|_| panic!("timed out, data so far {:?}", text(&out.data)));
        match msg {
            Some(ChannelMsg::Data { data }) => out.data.extend_from_slice(&data),
            Some(ChannelMsg::ExtendedData { data, .. }) => out.stderr.extend_from_slice(&data),
            Some(ChannelMsg::ExitStatus { exit_status }) => out.status = Some(exit_status),
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => out.signal = Some(signal_name),
            Some(_) => {}
            None => {
                assert!(until.is_empty(), "channel ended before {:?}", text(until));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// (1) `tty` names a /dev/pts device, `stty size` is pty-req's rows and columns, window-change
/// resizes it (and signals SIGWINCH), `TERM` and `SSH_TTY` are set, `stty` can change modes.
#[tokio::test(flavor = "multi_thread")]
async fn pty_is_a_terminal_of_the_requested_size() {
    let sim = start(Routing::DirectPorts).await;
    new_vm(&sim, "tty-vm").await;
    let h = russh_connect(&sim, "tty-vm").await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm-256color", 123, 45, 0, 0, &[])
        .await
        .unwrap();
    let script = "tty; stty size; echo \"term=$TERM ssh_tty=$SSH_TTY\"; \
                  trap 'echo winch' WINCH; echo ready; read x; stty size; \
                  stty -echo; stty; exit 5";
    ch.exec(true, script).await.unwrap();
    let mut out = Outcome::default();
    collect(&mut ch, &mut out, b"ready").await;
    let got = text(&out.data);
    let lines: Vec<&str> = got.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "tty: {got:?}");
    assert_eq!(lines[1], "45 123", "stty size: {got:?}");
    assert_eq!(
        lines[2],
        format!("term=xterm-256color ssh_tty={}", lines[0]),
        "{got:?}"
    );
    ch.window_change(80, 24, 0, 0).await.unwrap();
    // The shell runs the WINCH trap once `read` returns; the echo of "go" arrives first.
    ch.data(&b"go\r"[..]).await.unwrap();
    collect(&mut ch, &mut out, b"").await;
    let got = text(&out.data);
    assert!(got.contains("go\r\n"), "input echoed: {got:?}");
    assert!(got.contains("winch"), "SIGWINCH delivered: {got:?}");
    assert!(got.contains("24 80\r\n"), "resized: {got:?}");
    assert!(got.contains("-echo"), "stty -echo applied: {got:?}");
    assert_eq!(out.status, Some(5), "{got:?}");
    assert!(out.stderr.is_empty(), "a pty has no separate stderr");

    // The system client: a /dev/pts terminal too, and a 0×0 one (its stdin is no terminal).
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    let (code, data) = ssh.spawn("tty-vm", "tty; stty size", None).finish().await;
    assert_eq!(code, Some(0), "{}", text(&data));
    assert!(text(&data).starts_with("/dev/pts/"), "{}", text(&data));
    assert!(text(&data).ends_with("0 0\r\n"), "{}", text(&data));
    sim.shutdown().await;
}

/// (2) A canonical-mode reader gets "abc\n" when the client sends "abc" and, separately, a
/// lone "\r" (ICRNL), with echo; directly and through a ControlMaster, whose all-zero modes
/// would make the terminal raw if they were applied.
#[tokio::test(flavor = "multi_thread")]
async fn pty_line_discipline_turns_a_lone_cr_into_a_line() {
    let sim = start(Routing::Gateway).await;
    new_vm(&sim, "line-vm").await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    let master = ssh.master("line-vm").await;
    for via in [None, Some(master.as_path())] {
        let mut s = ssh.spawn(
            "line-vm",
            "echo ready; head -n 1 | od -An -tx1; stty -echo; echo quiet; head -n 1 | od -An -tx1",
            via,
        );
        s.wait_for(b"ready").await;
        s.send(b"abc").await;
        // Echoed, but no line yet: `head` is still waiting for its end.
        s.wait_for(b"abc").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        while let Ok(chunk) = s.out.try_recv() {
            s.seen.extend_from_slice(&chunk);
        }
        assert!(!contains(&s.seen, b"61 62 63"), "{:?}", text(&s.seen));
        s.send(b"\r").await;
        s.wait_for(b"61 62 63 0a").await;
        // With `stty -echo` from inside the session, the next line is not echoed.
        s.wait_for(b"quiet").await;
        s.send(b"xyz").await;
        s.send(b"\r").await;
        let (code, data) = s.finish().await;
        let got = text(&data);
        assert_eq!(code, Some(0), "via {via:?}: {got:?}");
        assert!(
            got.contains("abc\r\n"),
            "echo (CR echoed as CR LF): {got:?}"
        );
        assert!(got.contains("78 79 7a 0a"), "second line: {got:?}");
        assert!(!got.contains("xyz"), "echo off after stty -echo: {got:?}");
    }
    ssh.stop_master("line-vm", &master).await;
    sim.shutdown().await;
}

/// (3) Multi-byte UTF-8 output arrives byte for byte (with `stty -opost`, which stops the
/// ONLCR translation), including what is written just before the command exits; with the
/// default modes every "\n" arrives as "\r\n" and nothing else changes.
#[tokio::test(flavor = "multi_thread")]
async fn pty_output_is_byte_exact() {
    let sim = start(Routing::Gateway).await;
    new_vm(&sim, "utf8-vm").await;
    let unit = "é€😀 ü漢字 abc\n".as_bytes();
    let payload: Vec<u8> = unit.iter().copied().cycle().take(1024 * 1024 + 7).collect();
    std::fs::write(sim.vm_home("utf8-vm").unwrap().join("payload"), &payload).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());

    let (code, data) = ssh
        .spawn("utf8-vm", "stty -opost && cat payload", None)
        .finish()
        .await;
    assert_eq!(code, Some(0));
    assert_eq!(data.len(), payload.len());
    assert!(data == payload, "raw output differs");

    let (code, data) = ssh
        .spawn("utf8-vm", "head -c 70000 payload; exit 3", None)
        .finish()
        .await;
    assert_eq!(code, Some(3));
    let want: Vec<u8> = payload[..70000]
        .iter()
        .flat_map(|&b| {
            if b == b'\n' {
                vec![b'\r', b'\n']
            } else {
                vec![b]
            }
        })
        .collect();
    assert!(
        data == want,
        "ONLCR output differs ({} vs {})",
        data.len(),
        want.len()
    );
    sim.shutdown().await;
}

/// (4) Losing the client hangs the terminal up: the kernel's SIGHUP ends `sleep 1000` (and
/// its shell), whether the client exits, its connection is reset, or it is silenced and the
/// client then closes it. A command that ignores SIGHUP survives, as under sshd.
#[tokio::test(flavor = "multi_thread")]
async fn pty_hangup_when_the_client_goes_away() {
    // Through the gateway a silenced session outlives its client: `ProxyJump`'s `ssh -W`
    // keeps the gateway connection open, waiting for a channel close the silence swallows. So
    // silence is tried only where the client's own close reaches the VM's server.
    hangup(Routing::Gateway, &["kill", "reset"]).await;
    hangup(Routing::DirectPorts, &["kill", "reset", "silence"]).await;
}

async fn hangup(routing: Routing, ways: &[&str]) {
    let sim = start(routing).await;
    new_vm(&sim, "hup-vm").await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    let count = || sim.vm_process_count("hup-vm").unwrap();

    for how in ways {
        let mut s = ssh.spawn("hup-vm", "echo started; sleep 1000; echo after", None);
        s.wait_for(b"started").await;
        assert_eq!(count(), 1, "{routing:?} {how}: the command runs");
        match *how {
            "kill" => {}
            "reset" => {
                sim.reset_ssh_connections();
            }
            _ => {
                sim.silence_ssh_connections();
                // Silenced, the session lives as long as the client holds the connection.
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert_eq!(count(), 1, "silenced: still running");
            }
        }
        // (After a reset the client is gone already; otherwise this closes the connection.)
        drop(s);
        assert!(
            until(Duration::from_secs(10), || count() == 0).await,
            "{routing:?} {how}: `sleep 1000` hung up ({} group(s) left)",
            count()
        );
    }

    let mut s = ssh.spawn("hup-vm", "trap '' HUP; echo started; sleep 1000", None);
    s.wait_for(b"started").await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(), 1, "{routing:?}: SIGHUP ignored: survives");
    assert_eq!(api(&sim, "rm hup-vm").await, 200);
    sim.shutdown().await;
}

/// (5) Exit codes pass through a pty session, and a signal death is an exit-signal.
#[tokio::test(flavor = "multi_thread")]
async fn pty_exit_codes() {
    let sim = start(Routing::DirectPorts).await;
    new_vm(&sim, "exit-vm").await;
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());
    for code in [0, 1, 42, 255] {
        let (got, data) = ssh
            .spawn("exit-vm", &format!("echo bye; exit {code}"), None)
            .finish()
            .await;
        assert_eq!(got, Some(code), "{}", text(&data));
        assert_eq!(data, b"bye\r\n");
    }

    let h = russh_connect(&sim, "exit-vm").await;
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.exec(true, "kill -TERM $$").await.unwrap();
    let mut out = Outcome::default();
    collect(&mut ch, &mut out, b"").await;
    assert!(matches!(out.signal, Some(Sig::TERM)), "{:?}", out.signal);
    assert_eq!(out.status, None);
    sim.shutdown().await;
}
