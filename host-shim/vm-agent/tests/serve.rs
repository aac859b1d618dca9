//! The serving agent (`paperclip-vm-agent serve`), natively: the real binary with a private
//! `HOME`, many runs over one stdin/stdout pair exactly as the host multiplexes them over one
//! SSH channel; what outlives the channel, and attach from a second serving agent.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use paperclip_vm_agent::serve::{self as wire, msg, TaggedReader};
use paperclip_vm_agent::{kind, Exit, Header, Op};

/// One serving agent and the frames it sent, as they arrive.
struct Served {
    child: Child,
    stdin: Option<ChildStdin>,
    frames: mpsc::Receiver<(u8, u64, Vec<u8>)>,
}

impl Served {
    fn start(home: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_paperclip-vm-agent"))
            .arg("serve")
            .env_clear()
            .env("HOME", home)
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the agent starts");
        let mut stdout = child.stdout.take().unwrap();
        let mut hello = vec![0u8; wire::hello_frame().len()];
        stdout.read_exact(&mut hello).unwrap();
        assert_eq!(
            hello,
            wire::hello_frame(),
            "the first frame is the serve hello"
        );
        let (tx, frames) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = TaggedReader::default();
            let mut buf = [0u8; 65536];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                r.push(&buf[..n]);
                while let Some(f) = r.next_frame().unwrap() {
                    if tx.send(f).is_err() {
                        return;
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Served {
            child,
            stdin,
            frames,
        }
    }

    fn send(&mut self, kind: u8, id: u64, payload: &[u8]) {
        self.stdin
            .as_mut()
            .expect("still connected")
            .write_all(&wire::tagged(kind, id, payload))
            .unwrap();
    }

    /// A request for `op` on run `id`, with its stdin in chunks.
    fn request(&mut self, op: Op, id: u64, offsets: (u64, u64), script: &str, stdin: &[u8]) {
        self.request_with(
            Header {
                op,
                id,
                stdout_offset: offsets.0,
                stderr_offset: offsets.1,
                timeout_ms: 20_000,
                cap: 1 << 20,
                script_len: script.len() as u32,
                stdin_len: stdin.len() as u64,
            },
            script,
            stdin,
        );
    }

    fn request_with(&mut self, header: Header, script: &str, stdin: &[u8]) {
        let id = header.id;
        self.send(msg::REQUEST, id, &wire::request(&header, script.as_bytes()));
        for chunk in stdin.chunks(wire::MAX_STDIN_CHUNK) {
            self.send(msg::STDIN, id, chunk);
        }
    }

    /// Close the channel, as when the connection ends.
    fn disconnect(&mut self) {
        self.stdin = None;
    }

    /// Collect frames until every run in `ids` has sent a final frame (acknowledging exit
    /// frames when `ack`).
    fn collect(&mut self, ids: &[u64], ack: bool) -> HashMap<u64, Outcome> {
        let mut out: HashMap<u64, Outcome> = HashMap::new();
        let mut open: Vec<u64> = ids.to_vec();
        while !open.is_empty() {
            let (k, id, payload) = self
                .frames
                .recv_timeout(Duration::from_secs(30))
                .expect("a frame within 30 s");
            let o = out.entry(id).or_default();
            o.kinds.push(k);
            match k {
                kind::STDOUT => o.stdout.extend_from_slice(&payload),
                kind::STDERR => o.stderr.extend_from_slice(&payload),
                kind::EXIT => {
                    o.exit = Exit::decode(&payload);
                    if ack {
                        self.send(msg::ACK, id, b"");
                    }
                }
                kind::FAILED => o.failed = Some(String::from_utf8_lossy(&payload).into()),
                _ => {}
            }
            if matches!(k, kind::EXIT | kind::FAILED | kind::NOT_STARTED) {
                open.retain(|&i| i != id);
            }
        }
        out
    }

    /// The agent's exit, after its channel closed.
    fn wait(mut self) -> std::process::ExitStatus {
        self.stdin = None;
        self.child.wait().unwrap()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    kinds: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<Exit>,
    failed: Option<String>,
}

fn runs(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join(".cache/paperclip-exe-dev/runs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// 24 runs at once over one channel: each gets its own bytes (stdin both ways, binary stderr),
/// its own exit code or signal, and every command's parent is the one serving agent (no
/// process per run besides the command's own shell). Acknowledged spools are gone.
#[test]
fn many_runs_share_one_serving_agent() {
    let home = tempfile::tempdir().unwrap();
    let mut agent = Served::start(home.path());
    let ids: Vec<u64> = (1..=24).map(|i| 0xa000 + i).collect();
    let stdin_of = |i: u64| -> Vec<u8> {
        (0..=255u8)
            .cycle()
            .skip(i as usize)
            .take(if i.is_multiple_of(3) { 200_000 } else { 7 })
            .collect()
    };
    for &id in &ids {
        let n = id - 0xa000;
        let script = if n == 24 {
            "kill -TERM $$".to_string()
        } else {
            format!("cat; printf 'e{n}\\377' >&2; cat /proc/$PPID/comm >&2; exit {n}")
        };
        agent.request(Op::Run, id, (0, 0), &script, &stdin_of(n));
    }
    let got = agent.collect(&ids, true);
    let mut parents = std::collections::HashSet::new();
    for &id in &ids {
        let n = id - 0xa000;
        let o = &got[&id];
        assert_eq!(o.kinds.first(), Some(&kind::STARTED), "run {n}: {o:?}");
        assert_eq!(o.failed, None, "run {n}");
        if n == 24 {
            assert_eq!(o.exit.unwrap().signal, Some(15), "run {n}: {o:?}");
            continue;
        }
        assert_eq!(o.stdout, stdin_of(n), "run {n}: stdout");
        let mut expected = format!("e{n}").into_bytes();
        expected.push(0xff);
        assert!(o.stderr.starts_with(&expected), "run {n}: {:?}", o.stderr);
        parents.insert(o.stderr[expected.len()..].to_vec());
        assert_eq!(o.exit.unwrap().code, Some(n as i32), "run {n}");
    }
    assert_eq!(
        parents.len(),
        1,
        "one parent for every command: {parents:?}"
    );
    let parent = String::from_utf8(parents.into_iter().next().unwrap()).unwrap();
    assert!(parent.starts_with("paperclip-vm-ag"), "{parent}");
    // Spools go once acknowledged (the removal follows the ACK).
    for _ in 0..100 {
        if runs(home.path()).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(runs(home.path()).is_empty(), "{:?}", runs(home.path()));
    assert!(agent.wait().success());
}

/// The channel closes mid-run: the command goes on to its end under the first agent, which
/// exits only then; a second serving agent attaches from the offsets and streams the rest and
/// the status, and never starts the run again.
#[test]
fn served_runs_outlive_the_channel_and_attach_resumes() {
    let home = tempfile::tempdir().unwrap();
    let mut first = Served::start(home.path());
    let script = "echo once >> \"$HOME/count\"; echo a; sleep 1; echo b >&2; echo c; exit 3";
    first.request(Op::Run, 0xb1, (0, 0), script, b"");
    let mut seen = Vec::new();
    while seen != b"a\n" {
        let (k, id, payload) = first.frames.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(id, 0xb1);
        if k == kind::STDOUT {
            seen.extend_from_slice(&payload);
        }
    }
    first.disconnect();
    let mut second = Served::start(home.path());
    second.request(Op::Attach, 0xb1, (2, 0), "", b"");
    let got = second.collect(&[0xb1], false);
    let o = &got[&0xb1];
    assert_eq!(o.kinds.first(), Some(&kind::STARTED), "{o:?}");
    assert_eq!(
        (o.stdout.as_slice(), o.stderr.as_slice()),
        (&b"c\n"[..], &b"b\n"[..])
    );
    assert_eq!(o.exit.unwrap().code, Some(3));
    // A run request for the same run (its answer lost) streams it; it is not started twice.
    second.request(Op::Run, 0xb1, (4, 2), script, b"");
    let again = second.collect(&[0xb1], true);
    assert_eq!(again[&0xb1].exit.unwrap().code, Some(3));
    assert!(again[&0xb1].stdout.is_empty() && again[&0xb1].stderr.is_empty());
    assert!(first.wait().success(), "the first agent ends after its run");
    assert_eq!(
        std::fs::read_to_string(home.path().join("count")).unwrap(),
        "once\n"
    );
    assert!(second.wait().success());
}

/// stdin cut by the channel's end: nothing starts, and an attach says so.
#[test]
fn a_cut_stdin_starts_nothing() {
    let home = tempfile::tempdir().unwrap();
    let mut first = Served::start(home.path());
    let script = "touch \"$HOME/ran\"";
    let header = Header {
        op: Op::Run,
        id: 0xc1,
        stdout_offset: 0,
        stderr_offset: 0,
        timeout_ms: 20_000,
        cap: 1 << 20,
        script_len: script.len() as u32,
        stdin_len: 1000,
    };
    // Half of the announced stdin, then the channel closes.
    first.request_with(header, script, &[0u8; 500]);
    assert!(first.wait().success());
    assert!(!home.path().join("ran").exists());
    let mut second = Served::start(home.path());
    second.request(Op::Attach, 0xc1, (0, 0), "", b"");
    assert_eq!(
        second.collect(&[0xc1], false)[&0xc1].kinds,
        [kind::NOT_STARTED]
    );
    assert!(second.wait().success());
}

/// A served run's deadline ends its tree; a request that does not match its message and an
/// unknown message are refused by run, and the agent goes on serving.
#[test]
fn deadlines_and_refusals() {
    let home = tempfile::tempdir().unwrap();
    let mut agent = Served::start(home.path());
    let script = "echo up; sleep 30 & echo $! > \"$HOME/child\"; wait";
    agent.request_with(
        Header {
            op: Op::Run,
            id: 0xd1,
            stdout_offset: 0,
            stderr_offset: 0,
            timeout_ms: 500,
            cap: 1 << 20,
            script_len: script.len() as u32,
            stdin_len: 0,
        },
        script,
        b"",
    );
    let mismatched = Header {
        op: Op::Run,
        id: 0xd2,
        stdout_offset: 0,
        stderr_offset: 0,
        timeout_ms: 1000,
        cap: 10,
        script_len: 4,
        stdin_len: 0,
    };
    agent.send(msg::REQUEST, 0xd3, &wire::request(&mismatched, b"true"));
    agent.send(b'?', 0xd4, b"");
    agent.request(Op::Run, 0xd5, (0, 0), "printf after", b"");
    let got = agent.collect(&[0xd1, 0xd3, 0xd4, 0xd5], true);
    let timed = got[&0xd1].exit.unwrap();
    assert!(timed.timed_out, "{timed:?}");
    assert_eq!(got[&0xd1].stdout, b"up\n");
    assert!(got[&0xd3]
        .failed
        .as_deref()
        .unwrap()
        .contains("does not match"));
    assert!(got[&0xd4]
        .failed
        .as_deref()
        .unwrap()
        .contains("unknown message"));
    assert_eq!(got[&0xd5].stdout, b"after");
    let child: i32 = std::fs::read_to_string(home.path().join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    });
    assert!(gone, "the background child was ended");
    assert!(agent.wait().success());
}
