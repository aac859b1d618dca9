//! The simulator's two connection faults (`Simulator::reset_ssh_connections`,
//! `Simulator::silence_ssh_connections`), on loopback and behind the link model: at the TCP
//! level (an RST, bytes that stop both ways) and with the real OpenSSH client streaming a
//! command over a ControlMaster connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use exe_dev_sim::{LinkModel, Routing, SimOptions, Simulator};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "exe1.fault-token";

async fn start(routing: Routing, link: Option<LinkModel>) -> Simulator {
    let mut opts = SimOptions::with_token(TOKEN);
    opts.routing = routing;
    opts.link = link;
    Simulator::start(opts).await.expect("sim start")
}

/// One `/exec` call; returns the status.
async fn api(sim: &Simulator, cmd: &str) -> u16 {
    let stream = TcpStream::connect(sim.api_authority()).await.unwrap();
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

fn link_name(link: Option<LinkModel>) -> String {
    link.map_or_else(|| "loopback".to_owned(), |l| l.describe())
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
// TCP level: what the client's socket sees.

/// The port clients connect to: the gateway's (or the link relay's) from the ssh config.
fn gateway_entry(sim: &Simulator) -> u16 {
    let cfg = std::fs::read_to_string(sim.ssh_config_path()).unwrap();
    let block = cfg
        .split("Host exe-sim-gateway")
        .nth(1)
        .expect("gateway block");
    block
        .lines()
        .find_map(|l| l.trim().strip_prefix("Port "))
        .and_then(|p| p.trim().parse().ok())
        .expect("gateway port")
}

/// Connects and reads the server's SSH identification line.
async fn connect(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("no SSH banner")
            .unwrap();
        assert!(n > 0, "closed before the banner");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"SSH-2.0-"), "{got:?}");
    s
}

/// Sends our identification line; a working server answers with its KEXINIT.
async fn hello(s: &mut TcpStream) {
    s.write_all(b"SSH-2.0-OpenSSH_9.6 fault-test\r\n")
        .await
        .unwrap();
}

/// What a read on `s` gives within `within`.
#[derive(Debug, PartialEq)]
enum Seen {
    Bytes,
    Eof,
    Reset,
    OtherError(std::io::ErrorKind),
    Nothing,
}

async fn read_within(s: &mut TcpStream, within: Duration) -> Seen {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Err(_) => Seen::Nothing,
        Ok(Ok(0)) => Seen::Eof,
        Ok(Ok(_)) => Seen::Bytes,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Seen::Reset,
        Ok(Err(e)) => Seen::OtherError(e.kind()),
    }
}

async fn tcp_faults(routing: Routing, link: Option<LinkModel>) {
    let sim = start(routing, link).await;
    let port = match routing {
        Routing::Gateway => gateway_entry(&sim),
        Routing::DirectPorts => {
            assert_eq!(api(&sim, "new --json --name=tcp-vm").await, 200);
            sim.vm_ssh_port("tcp-vm").unwrap()
        }
    };
    let what = format!("{routing:?}, {}", link_name(link));

    // Control: a normal connection answers our identification with its KEXINIT.
    let mut normal = connect(port).await;
    hello(&mut normal).await;
    assert_eq!(
        read_within(&mut normal, Duration::from_secs(5)).await,
        Seen::Bytes
    );
    drop(normal);
    assert!(until(Duration::from_secs(5), || sim.ssh_connection_count() == 0).await);

    // Silence: no byte comes back, nothing is closed.
    let mut quiet = connect(port).await;
    let mut doomed = connect(port).await;
    assert_eq!(sim.ssh_connection_count(), 2);
    assert_eq!(sim.silence_ssh_connections(), 2);
    assert_eq!(sim.silence_ssh_connections(), 0, "already silent");
    hello(&mut quiet).await;
    let t = Instant::now();
    assert_eq!(
        read_within(&mut quiet, Duration::from_millis(1500)).await,
        Seen::Nothing
    );
    assert_eq!(
        read_within(&mut doomed, Duration::from_millis(10)).await,
        Seen::Nothing
    );
    assert_eq!(
        sim.ssh_connection_count(),
        2,
        "a silenced connection stays open"
    );
    eprintln!("[{what}] silence: nothing for {:?}", t.elapsed());

    // A connection opened after the silence works.
    let mut fresh = connect(port).await;
    hello(&mut fresh).await;
    assert_eq!(
        read_within(&mut fresh, Duration::from_secs(5)).await,
        Seen::Bytes
    );

    // Reset: every live connection, silenced ones included, gets an RST at once.
    let t = Instant::now();
    assert_eq!(sim.reset_ssh_connections(), 3);
    assert_eq!(
        read_within(&mut doomed, Duration::from_secs(5)).await,
        Seen::Reset
    );
    let noticed = t.elapsed();
    assert_eq!(
        read_within(&mut quiet, Duration::from_secs(5)).await,
        Seen::Reset
    );
    // `fresh` may still have part of its KEXINIT to read before the RST.
    let end = loop {
        match read_within(&mut fresh, Duration::from_secs(5)).await {
            Seen::Bytes => continue,
            other => break other,
        }
    };
    assert_eq!(end, Seen::Reset);
    eprintln!("[{what}] reset: idle client got the RST after {noticed:?}");
    assert!(noticed < Duration::from_millis(500), "{noticed:?}");
    assert!(until(Duration::from_secs(5), || sim.ssh_connection_count() == 0).await);
    assert_eq!(sim.reset_ssh_connections(), 0, "nothing left to reset");

    // Repeated and concurrent calls, with connections coming and going, are harmless.
    let sim = std::sync::Arc::new(sim);
    let callers: Vec<_> = (0..4)
        .map(|i| {
            let sim = sim.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if i % 2 == 0 {
                        sim.silence_ssh_connections();
                    } else {
                        sim.reset_ssh_connections();
                    }
                }
            })
        })
        .collect();
    for _ in 0..5 {
        let _ = TcpStream::connect(("127.0.0.1", port)).await;
    }
    for c in callers {
        c.join().unwrap();
    }
    assert!(until(Duration::from_secs(5), || sim.ssh_connection_count() == 0).await);
    let mut after = connect(port).await;
    hello(&mut after).await;
    assert_eq!(
        read_within(&mut after, Duration::from_secs(5)).await,
        Seen::Bytes
    );
    drop(after);
    assert!(until(Duration::from_secs(5), || sim.ssh_connection_count() == 0).await);
    if let Ok(sim) = std::sync::Arc::try_unwrap(sim) {
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_faults_loopback() {
    tcp_faults(Routing::Gateway, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_faults_over_link() {
    tcp_faults(Routing::Gateway, Some(LinkModel::new(30, 100))).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_faults_direct_ports() {
    tcp_faults(Routing::DirectPorts, None).await;
}

// ---------------------------------------------------------------------------------------------
// The real OpenSSH client: a command streaming over a ControlMaster connection.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Reset,
    Silence,
}

/// `ssh` to the simulator through a ControlMaster whose connection has a fast keepalive
/// (1 s, 2 misses), so a silent connection is given up within seconds.
struct Ssh {
    config: PathBuf,
    key: PathBuf,
    dir: PathBuf,
}

impl Ssh {
    fn new(sim: &Simulator, dir: &Path) -> Ssh {
        Ssh {
            config: sim.ssh_config_path(),
            key: sim.client_key_path(),
            dir: dir.to_path_buf(),
        }
    }

    /// `ssh` with every option; the caller adds the destination (and any `-O` before it).
    fn command(&self) -> tokio::process::Command {
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
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=yes"])
            .arg("-o")
            .arg(format!("ControlPath={}/cm-%C", self.dir.display()))
            .args(["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `cmd`; returns (exit code, stdout).
    async fn run(&self, vm: &str, cmd: &str) -> (Option<i32>, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            self.command().arg(dest(vm)).arg(cmd).output(),
        )
        .await
        .expect("ssh timed out")
        .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Stops the master, if one runs.
    async fn exit_master(&self, vm: &str) {
        let _ = self
            .command()
            .args(["-O", "exit"])
            .arg(dest(vm))
            .output()
            .await;
    }
}

fn dest(vm: &str) -> String {
    format!("exedev@{vm}.exe.xyz")
}

/// Prints a line every 100 ms and records its count in `progress`; ignores SIGPIPE, so it
/// outlives the pipes its session closes (as a detached command would), bounded to 2 min.
const STREAM: &str = "trap '' PIPE; i=0; while [ $i -lt 1200 ]; do echo line$i 2>/dev/null; \
                      echo $i > progress.tmp && mv progress.tmp progress; i=$((i+1)); sleep 0.1; done";

fn progress(home: &Path) -> u64 {
    std::fs::read_to_string(home.join("progress"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn interrupted_stream(link: Option<LinkModel>, fault: Fault) {
    let sim = start(Routing::Gateway, link).await;
    let what = format!("{fault:?}, {}", link_name(link));
    let vm = "stream-vm";
    assert_eq!(api(&sim, &format!("new --json --name={vm}")).await, 200);
    let home = sim.vm_home(vm).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ssh = Ssh::new(&sim, tmp.path());

    // The first call starts the master (backgrounded by ControlPersist); the stream then runs
    // over the master's one connection.
    assert_eq!(ssh.run(vm, "true").await.0, Some(0));
    assert_eq!(sim.ssh_connection_count(), 1);
    let mut child = ssh.command().arg(dest(vm)).arg(STREAM).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send((line, Instant::now()));
        }
    });
    for i in 0..3 {
        let (line, _) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the stream did not start")
            .expect("the stream ended early");
        assert_eq!(line, format!("line{i}"));
    }
    assert_eq!(
        sim.ssh_connection_count(),
        1,
        "the stream shares the master"
    );

    let t0 = Instant::now();
    let hit = match fault {
        Fault::Reset => sim.reset_ssh_connections(),
        Fault::Silence => sim.silence_ssh_connections(),
    };
    assert_eq!(hit, 1);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the client never noticed")
        .unwrap();
    let noticed = t0.elapsed();
    let at_notice = progress(&home);
    reader.await.unwrap();
    let mut late = Vec::new();
    while let Ok((line, at)) = rx.try_recv() {
        if at > t0 {
            late.push((line, at - t0));
        }
    }
    let last_late = late.last().map(|(_, d)| *d);
    eprintln!(
        "[{what}] client noticed after {noticed:?} (exit {:?}); {} line(s) arrived after the \
         fault, the last {last_late:?} after it",
        status.code(),
        late.len()
    );
    assert_eq!(
        status.code(),
        Some(255),
        "ssh's own failure, not the command's"
    );
    match fault {
        Fault::Reset => assert!(noticed < Duration::from_secs(1), "{noticed:?}"),
        Fault::Silence => {
            // The keepalive (1 s × 2 misses) gave up, not a close: that takes 2–3 s after
            // the last byte received, which can be up to one line (100 ms) before the fault.
            assert!(
                noticed >= Duration::from_millis(1500) && noticed < Duration::from_secs(10),
                "{noticed:?}"
            );
            // The bytes stopped at once (what was already on its way may still arrive).
            assert!(
                last_late.is_none_or(|d| d < Duration::from_millis(500)),
                "bytes kept coming: {late:?}"
            );
        }
    }
    // The faulted connection, its session and the master are gone.
    assert!(
        until(Duration::from_secs(10), || sim.ssh_connection_count() == 0).await,
        "{} connection(s) left",
        sim.ssh_connection_count()
    );

    // The interrupted command keeps running on the VM.
    assert!(
        until(Duration::from_secs(10), || progress(&home) >= at_notice + 3).await,
        "the command stopped at {} (was {at_notice} when the client noticed)",
        progress(&home)
    );
    assert_eq!(sim.vm_process_count(vm), Some(1));

    // A new connection right after works normally.
    let t = Instant::now();
    let (code, out) = ssh.run(vm, "echo again").await;
    eprintln!(
        "[{what}] a new connection ran a command in {:?}",
        t.elapsed()
    );
    assert_eq!((code, out.as_str()), (Some(0), "again\n"));
    assert_eq!(sim.ssh_connection_count(), 1);

    ssh.exit_master(vm).await;
    assert_eq!(api(&sim, &format!("rm {vm}")).await, 200);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_during_stream_loopback() {
    interrupted_stream(None, Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_during_stream_over_link() {
    interrupted_stream(Some(LinkModel::new(30, 100)), Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_during_stream_loopback() {
    interrupted_stream(None, Fault::Silence).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_during_stream_over_link() {
    interrupted_stream(Some(LinkModel::new(30, 100)), Fault::Silence).await;
}
