//! The VM agent itself, natively: the real binary with a private `HOME`, spoken to through its
//! stdin and stdout exactly as the host does over SSH.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use paperclip_vm_agent::{hello_frame, kind, Exit, FrameReader, Header, Op, ACK};

fn agent(home: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_paperclip-vm-agent"))
        .env_clear()
        .env("HOME", home)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the agent starts")
}

fn header(op: Op, id: u64, offsets: (u64, u64), script: &str, stdin: &[u8]) -> Vec<u8> {
    let mut out = Header {
        op,
        id,
        stdout_offset: offsets.0,
        stderr_offset: offsets.1,
        timeout_ms: 20_000,
        cap: 1 << 20,
        script_len: script.len() as u32,
        stdin_len: stdin.len() as u64,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(script.as_bytes());
    out.extend_from_slice(stdin);
    out
}

/// What one session with the agent gave: frames in order, collected output, the exit frame.
#[derive(Debug, Default)]
struct Session {
    kinds: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<Exit>,
    failed: Option<String>,
}

/// Send `request`, read frames to the end (acknowledging an exit frame when `ack`).
fn session(home: &Path, request: &[u8], ack: bool) -> Session {
    let mut child = agent(home);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(request).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut reader = FrameReader::default();
    let mut s = Session::default();
    let mut first = vec![0u8; hello_frame().len()];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(first, hello_frame(), "the first frame is the hello");
    let mut buf = [0u8; 65536];
    'read: loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        reader.push(&buf[..n]);
        while let Some((k, payload)) = reader.next_frame().unwrap() {
            s.kinds.push(k);
            match k {
                kind::STDOUT => s.stdout.extend_from_slice(&payload),
                kind::STDERR => s.stderr.extend_from_slice(&payload),
                kind::EXIT => {
                    s.exit = Exit::decode(&payload);
                    if ack {
                        stdin.write_all(&[ACK]).unwrap();
                    }
                    drop(stdin);
                    break 'read;
                }
                kind::FAILED => s.failed = Some(String::from_utf8_lossy(&payload).into()),
                _ => {}
            }
        }
    }
    let _ = child.wait();
    s
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

#[test]
fn a_run_streams_exact_bytes_and_its_status_then_its_spool_goes() {
    let home = tempfile::tempdir().unwrap();
    let stdin: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let s = session(
        home.path(),
        &header(
            Op::Run,
            1,
            (0, 0),
            "cat; printf 'e\\377' >&2; exit 7",
            &stdin,
        ),
        true,
    );
    assert_eq!(s.stdout, stdin);
    assert_eq!(s.stderr, b"e\xff");
    assert_eq!(s.exit.unwrap().code, Some(7));
    assert_eq!(s.kinds.first(), Some(&kind::STARTED));
    assert!(runs(home.path()).is_empty(), "acknowledged: removed");
}

/// What a run leaves on the VM until its acknowledgement: an empty stdin is a link to the
/// root's one empty file (the command reads `/dev/null`), a stored stdin is one file under two
/// names (`stdin`, and `keeper.<pid>`, which records the keeper), and an output stream that
/// stayed empty has no file. Nothing of a run's temporary names stays behind.
#[test]
fn a_run_creates_only_the_files_it_needs() {
    use std::os::unix::fs::MetadataExt as _;
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join(".cache/paperclip-exe-dev/runs");
    let names = |id: &str| {
        let mut v: Vec<String> = std::fs::read_dir(root.join(id))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let keeper = |id: &str| {
        names(id)
            .into_iter()
            .find(|n| n.starts_with("keeper."))
            .unwrap_or_else(|| panic!("no keeper recorded in {:?}", names(id)))
    };
    let ino = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().ino();

    // Empty stdin, output on stdout only.
    let s = session(
        home.path(),
        &header(
            Op::Run,
            0xe1,
            (0, 0),
            "test -c /dev/stdin && printf dev; wc -c",
            b"",
        ),
        false,
    );
    assert_eq!(
        (s.stdout.as_slice(), s.exit.unwrap().code),
        (&b"dev0\n"[..], Some(0))
    );
    let run = "00000000000000e1";
    let k = keeper(run);
    assert!(k["keeper.".len()..].parse::<u32>().is_ok(), "{k}");
    assert_eq!(names(run), [k.as_str(), "status", "stdin", "stdout"]);
    let empty = ino(root.join(".empty"));
    assert_eq!(ino(root.join(run).join("stdin")), empty);
    assert_eq!(ino(root.join(run).join(&k)), empty);
    assert_eq!(std::fs::metadata(root.join(".empty")).unwrap().len(), 0);

    // Stored stdin, no output at all.
    let s = session(
        home.path(),
        &header(Op::Run, 0xe2, (0, 0), "cat > /dev/null", b"some input"),
        false,
    );
    assert_eq!(s.exit.unwrap().code, Some(0));
    let run = "00000000000000e2";
    let k = keeper(run);
    assert_eq!(names(run), [k.as_str(), "status", "stdin"]);
    assert_eq!(
        ino(root.join(run).join("stdin")),
        ino(root.join(run).join(&k))
    );
    assert_eq!(
        std::fs::read(root.join(run).join("stdin")).unwrap(),
        b"some input"
    );

    // Attaching finds the keeper recorded that way and streams the result again; the
    // acknowledgement removes the spool and the empty file stays for the next run.
    let again = session(
        home.path(),
        &header(Op::Attach, 0xe1, (0, 0), "", b""),
        true,
    );
    assert_eq!(
        (again.stdout.as_slice(), again.exit.unwrap().code),
        (&b"dev0\n"[..], Some(0))
    );
    assert_eq!(runs(home.path()), ["00000000000000e2"]);
    assert_eq!(ino(root.join(".empty")), empty);
}

/// A `.empty` that is not a regular file (here a dangling symlink) is never linked to: the run
/// stores its empty stdin in a file of its own and runs once, as any other.
#[test]
fn a_spool_root_whose_empty_file_is_not_a_file_still_runs_each_command_once() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join(".cache/paperclip-exe-dev/runs");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::symlink(home.path().join("nowhere"), root.join(".empty")).unwrap();
    let script = "echo once >> \"$HOME/count\"; wc -c";
    let s = session(
        home.path(),
        &header(Op::Run, 0xe3, (0, 0), script, b""),
        false,
    );
    assert_eq!(
        (s.stdout.as_slice(), s.exit.unwrap().code),
        (&b"0\n"[..], Some(0))
    );
    let stdin = root.join("00000000000000e3/stdin");
    assert!(std::fs::symlink_metadata(&stdin).unwrap().is_file());
    // Started: a second request streams the run and does not run it again.
    let again = session(
        home.path(),
        &header(Op::Run, 0xe3, (2, 0), script, b""),
        true,
    );
    assert_eq!(again.exit.unwrap().code, Some(0));
    assert_eq!(
        std::fs::read_to_string(home.path().join("count")).unwrap(),
        "once\n"
    );
    assert!(!home.path().join("nowhere").exists());
}

#[test]
fn a_run_attached_again_resumes_at_the_offsets_and_never_starts_twice() {
    let home = tempfile::tempdir().unwrap();
    let script = "echo once >> \"$HOME/count\"; printf 'abcdef'; printf 'XYZ' >&2";
    // No acknowledgement: the spool stays for a reattach.
    let first = session(home.path(), &header(Op::Run, 2, (0, 0), script, b""), false);
    assert_eq!(first.stdout, b"abcdef");
    assert_eq!(runs(home.path()).len(), 1);
    let again = session(home.path(), &header(Op::Attach, 2, (4, 1), "", b""), false);
    assert_eq!(
        (again.stdout.as_slice(), again.stderr.as_slice()),
        (&b"ef"[..], &b"YZ"[..])
    );
    // A run request for a run that already started streams it; it does not run it again.
    let rerun = session(home.path(), &header(Op::Run, 2, (6, 3), script, b""), true);
    assert_eq!(rerun.exit.unwrap().code, Some(0));
    assert!(rerun.stdout.is_empty() && rerun.stderr.is_empty());
    assert_eq!(
        std::fs::read_to_string(home.path().join("count")).unwrap(),
        "once\n"
    );
    assert!(runs(home.path()).is_empty());
}

#[test]
fn attach_to_a_run_that_never_started_says_so() {
    let home = tempfile::tempdir().unwrap();
    let s = session(home.path(), &header(Op::Attach, 3, (0, 0), "", b""), false);
    assert_eq!(s.kinds, [kind::NOT_STARTED]);
    // stdin cut short: nothing starts, and attach still says not started.
    let mut child = agent(home.path());
    let mut req = header(Op::Run, 4, (0, 0), "touch \"$HOME/ran\"", &[0u8; 1000]);
    req.truncate(req.len() - 10);
    child.stdin.take().unwrap().write_all(&req).unwrap();
    let _ = child.wait_with_output();
    assert!(!home.path().join("ran").exists());
    let s = session(home.path(), &header(Op::Attach, 4, (0, 0), "", b""), false);
    assert_eq!(s.kinds, [kind::NOT_STARTED]);
}

#[test]
fn the_deadline_ends_the_tree_and_the_cap_is_kept() {
    let home = tempfile::tempdir().unwrap();
    let mut req = Header {
        op: Op::Run,
        id: 5,
        stdout_offset: 0,
        stderr_offset: 0,
        timeout_ms: 500,
        cap: 10,
        script_len: 0,
        stdin_len: 0,
    };
    let script = "printf 0123456789abcdef; sleep 30 & echo $! > \"$HOME/child\"; wait";
    req.script_len = script.len() as u32;
    let mut bytes = req.encode().to_vec();
    bytes.extend_from_slice(script.as_bytes());
    let started = Instant::now();
    let s = session(home.path(), &bytes, true);
    let exit = s.exit.unwrap();
    assert!(exit.timed_out, "{exit:?}");
    assert!(exit.stdout_truncated);
    assert_eq!(s.stdout, b"0123456789");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let child: i32 = std::fs::read_to_string(home.path().join("child"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = (0..50).any(|_| {
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
}

#[test]
fn signals_and_bad_requests() {
    let home = tempfile::tempdir().unwrap();
    let s = session(
        home.path(),
        &header(Op::Run, 6, (0, 0), "kill -KILL $$", b""),
        true,
    );
    assert_eq!(s.exit.unwrap().signal, Some(9));
    let mut bad = header(Op::Run, 7, (0, 0), "true", b"");
    bad[0] = b'X';
    let s = session(home.path(), &bad, false);
    assert!(s.failed.unwrap().contains("bad magic"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_paperclip-vm-agent"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&header(Op::Run, 8, (0, 0), "true", b""))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut r = FrameReader::default();
    r.push(&out.stdout);
    let frames: Vec<_> = std::iter::from_fn(|| r.next_frame().unwrap()).collect();
    assert_eq!(
        frames[1],
        (kind::FAILED, b"HOME is not set on the VM".to_vec())
    );
}

/// What a host never came back for is swept, an hour after its command ended; a run whose
/// keeper still runs is not, whatever its age; the sweep runs at most once a minute.
#[test]
fn stale_spools_are_swept() {
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join(".cache/paperclip-exe-dev/runs");
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    let make = |name: &str, files: &[&str]| {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::write(
                dir.join(f),
                if *f == "keeper.pid" {
                    std::process::id().to_string()
                } else {
                    "code 0\n".into()
                },
            )
            .unwrap();
            std::fs::File::options()
                .write(true)
                .open(dir.join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(old)
            .unwrap();
    };
    make("00000000000000a1", &["status"]); // ended long ago: swept
    make("00000000000000a2", &["keeper.pid"]); // its keeper (this test) runs: kept
    make("00000000000000a3", &[]); // never started, long ago: swept

    // The keeper recorded in a name: this test's pid runs (kept); a pid that is no process
    // (above any pid_max) is gone (swept).
    make(
        "00000000000000a4",
        &[&format!("keeper.{}", std::process::id())],
    );
    make("00000000000000a5", &["keeper.2147483647"]);
    // A fresh stamp: no sweep now.
    std::fs::write(root.join(".swept"), b"").unwrap();
    let _ = session(home.path(), &header(Op::Attach, 9, (0, 0), "", b""), false);
    assert_eq!(runs(home.path()).len(), 5);
    // An old stamp: the next request sweeps.
    std::fs::File::options()
        .write(true)
        .open(root.join(".swept"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let _ = session(home.path(), &header(Op::Attach, 9, (0, 0), "", b""), false);
    let mut left = runs(home.path());
    left.sort();
    assert_eq!(left, ["00000000000000a2", "00000000000000a4"]);
}

/// A full disk on the VM: the output cannot be kept, so the outcome cannot be reported whole;
/// the answer is a failure frame with the VM's own error, at once, never a hang.
#[test]
fn a_full_disk_is_a_clear_failure() {
    let home = tempfile::tempdir().unwrap();
    let run = home
        .path()
        .join(".cache/paperclip-exe-dev/runs/00000000000000f1");
    std::fs::create_dir_all(&run).unwrap();
    // Every write to the stdout spool fails as on a full disk.
    std::os::unix::fs::symlink("/dev/full", run.join("stdout")).unwrap();
    let started = Instant::now();
    let s = session(
        home.path(),
        &header(Op::Run, 0xf1, (0, 0), "echo some output; echo more", b""),
        false,
    );
    let why = s.failed.expect("a failure frame");
    assert!(why.contains("No space left on device"), "{why}");
    assert!(s.exit.is_none());
    assert!(started.elapsed() < Duration::from_secs(5));
}
