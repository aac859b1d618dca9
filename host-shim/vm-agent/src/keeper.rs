//! The keeper: a process in a session of its own that runs the command (`/bin/sh -c <script>`)
//! and copies its stdout and stderr into the spool, enforces the deadline on the VM (so a
//! timeout holds even while the host cannot reach the VM), and records the exit status.
//!
//! It holds no descriptor of the SSH session (its stdio is `/dev/null`), ignores `SIGHUP`, and
//! never writes to the network: a dropped or silent connection cannot stop it or the command.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use paperclip_vm_agent::{Header, RUN_MARKER_VAR};

use crate::spool::{Run, Status};

use crate::sys;

/// Grace between `SIGTERM` and `SIGKILL` when the deadline passes.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long output is still read after `SIGKILL` (a process that escaped the marker can hold
/// the pipes; the status must not wait for it forever).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// Start the keeper for `run`; returns its pid (recorded in the spool before this returns).
pub(crate) fn spawn(run: &Run, header: &Header, script: Vec<u8>) -> Result<libc::pid_t, String> {
    let io_err = |what: &str, e: std::io::Error| format!("{what} on the VM: {e}");
    let create = |name: &str| {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(run.path(name))
            .map_err(|e| io_err("creating the output spool", e))
    };
    let stdout = create("stdout")?;
    let stderr = create("stderr")?;
    let stdin = File::open(run.path("stdin")).map_err(|e| io_err("opening the stored stdin", e))?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io_err("opening /dev/null", e))?;
    let command = Command::new(run.id, script)?;
    let started = Instant::now();
    let deadline =
        (header.timeout_ms > 0).then(|| started + Duration::from_millis(header.timeout_ms));
    let cap = header.cap;

    // SAFETY: the agent is single-threaded here; the child runs ordinary code only because a
    // fork of a single-threaded process leaves its allocator and locks consistent.
    let pid = unsafe { sys::fork() }.map_err(|e| io_err("starting the keeper", e))?;
    if pid == 0 {
        // SAFETY: setsid/signal/dup2 on our own process and descriptors.
        unsafe {
            libc::setsid();
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            for fd in 0..3 {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
        drop(null);
        let status = keep(command, stdin, [stdout, stderr], cap, deadline);
        let _ = run.write_status(&status);
        // SAFETY: ends the keeper without running the parent's exit handlers twice.
        unsafe { libc::_exit(0) }
    }
    drop((stdout, stderr, stdin, null));
    std::fs::write(run.path("keeper.pid"), pid.to_string())
        .map_err(|e| io_err("recording the keeper", e))?;
    Ok(pid)
}

/// The command line and environment, prepared before any fork.
struct Command {
    program: std::ffi::CString,
    argv: Vec<std::ffi::CString>,
    envp: Vec<std::ffi::CString>,
    marker: String,
}

impl Command {
    fn new(id: u64, script: Vec<u8>) -> Result<Command, String> {
        use std::os::unix::ffi::OsStrExt as _;
        let marker = format!("{id:016x}");
        let mut envp = Vec::new();
        for (k, v) in std::env::vars_os() {
            if k.as_bytes() == RUN_MARKER_VAR.as_bytes() {
                continue;
            }
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            envp.push(sys::cstring(kv)?);
        }
        envp.push(sys::cstring(
            format!("{RUN_MARKER_VAR}={marker}").into_bytes(),
        )?);
        Ok(Command {
            program: sys::cstring(b"/bin/sh".to_vec())?,
            argv: vec![
                sys::cstring(b"sh".to_vec())?,
                sys::cstring(b"-c".to_vec())?,
                sys::cstring(script)?,
            ],
            envp,
            marker,
        })
    }

    /// Fork and exec the command in a process group of its own, stdin from `stdin`, stdout and
    /// stderr into the pipes; returns its pid.
    fn start(&self, stdin: &File, out: &OwnedFd, err: &OwnedFd) -> std::io::Result<libc::pid_t> {
        let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        let (stdin, out, err) = (stdin.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd());
        // SAFETY: the keeper is single-threaded; the child only makes async-signal-safe calls
        // on memory prepared above, then execs or exits.
        let pid = unsafe { sys::fork() }?;
        if pid == 0 {
            // SAFETY: as above.
            unsafe {
                libc::setpgid(0, 0);
                libc::dup2(stdin, 0);
                libc::dup2(out, 1);
                libc::dup2(err, 2);
                // The command gets the dispositions a login session gives it, not ours.
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::execve(self.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                let msg = b"paperclip-vm-agent: cannot start /bin/sh\n";
                libc::write(2, msg.as_ptr().cast(), msg.len());
                libc::_exit(127);
            }
        }
        // SAFETY: plain syscall; the child may have done it already (then this fails).
        unsafe {
            libc::setpgid(pid, pid);
        }
        Ok(pid)
    }
}

/// Run the command to its end (or its deadline) and return how it ended.
fn keep(
    command: Command,
    stdin: File,
    mut files: [File; 2],
    cap: u64,
    deadline: Option<Instant>,
) -> Status {
    let pipes = sys::pipe().and_then(|o| sys::pipe().map(|e| (o, e)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return failed(format!("creating pipes on the VM: {e}")),
    };
    let pid = match command.start(&stdin, &out_w, &err_w) {
        Ok(pid) => pid,
        Err(e) => return failed(format!("starting the command on the VM: {e}")),
    };
    drop((out_w, err_w, stdin));

    let readers = [out_r, err_r];
    let mut open = [true, true];
    let mut kept = [0u64; 2];
    let limit = cap.saturating_add(1);
    let mut spool_error: Option<String> = None;
    let mut timed_out = false;
    let mut killed_at: Option<Instant> = None;
    let mut termed_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while open[0] || open[1] {
        let now = Instant::now();
        if let (Some(d), false) = (deadline, timed_out) {
            if now >= d {
                timed_out = true;
                termed_at = Some(now);
                kill_tree(pid, &command.marker, libc::SIGTERM);
            }
        }
        if let (Some(t), None) = (termed_at, killed_at) {
            if now >= t + TERM_GRACE {
                killed_at = Some(now);
                kill_tree(pid, &command.marker, libc::SIGKILL);
            }
        }
        if killed_at.is_some_and(|k| now >= k + KILL_GRACE) {
            break;
        }
        let wait = match (deadline, termed_at, killed_at) {
            (_, _, Some(k)) => (k + KILL_GRACE).saturating_duration_since(now),
            (_, Some(t), None) => (t + TERM_GRACE).saturating_duration_since(now),
            (Some(d), None, None) => d.saturating_duration_since(now),
            (None, _, _) => Duration::from_secs(3600),
        };
        let fds: Vec<i32> = (0..2)
            .filter(|&i| open[i])
            .map(|i| readers[i].as_raw_fd())
            .collect();
        let Ok(revents) = sys::poll_many(&fds, wait.max(Duration::from_millis(1))) else {
            continue;
        };
        let ready: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
        for (slot, &i) in ready.iter().enumerate() {
            if revents[slot] == 0 {
                continue;
            }
            // SAFETY: reads into a valid buffer from our own pipe.
            let n =
                unsafe { libc::read(readers[i].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                open[i] = false;
                continue;
            }
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    open[i] = false;
                }
                continue;
            }
            let n = n as usize;
            let room = usize::try_from(limit.saturating_sub(kept[i])).unwrap_or(usize::MAX);
            let take = n.min(room);
            if take > 0 && spool_error.is_none() {
                match files[i].write_all(&buf[..take]) {
                    Ok(()) => kept[i] += take as u64,
                    // Keep reading, so the command never blocks on a full pipe; the outcome
                    // can no longer be reported whole.
                    Err(e) => {
                        spool_error = Some(format!("writing the command's output on the VM: {e}"))
                    }
                }
            }
        }
    }
    drop(readers);
    let raw = reap(pid, &command.marker, deadline, timed_out);
    let timed_out = timed_out || raw.1;
    let raw = raw.0;
    let mut status = Status {
        timed_out,
        error: spool_error,
        ..Status::default()
    };
    match raw {
        Some(w) if libc::WIFEXITED(w) => status.code = Some(libc::WEXITSTATUS(w)),
        Some(w) if libc::WIFSIGNALED(w) => status.signal = Some(libc::WTERMSIG(w)),
        _ => {
            status
                .error
                .get_or_insert_with(|| "the command's exit status was lost".into());
        }
    }
    status
}

/// Wait for the command's process after its output ended (it may have closed its output and
/// kept running), still holding the deadline. Returns the wait status and whether the deadline
/// passed while waiting.
fn reap(
    pid: libc::pid_t,
    marker: &str,
    deadline: Option<Instant>,
    already_timed_out: bool,
) -> (Option<libc::c_int>, bool) {
    // The output usually ends as the process exits: the first naps are short.
    let mut nap = Duration::from_micros(50);
    let mut timed_out = false;
    let mut killed = already_timed_out;
    loop {
        if let Some(w) = sys::try_wait(pid) {
            return (Some(w), timed_out);
        }
        if !sys::alive(pid) {
            return (sys::wait(pid), timed_out);
        }
        if !killed && deadline.is_some_and(|d| Instant::now() >= d) {
            timed_out = true;
            killed = true;
            kill_tree(pid, marker, libc::SIGTERM);
            std::thread::sleep(TERM_GRACE);
            kill_tree(pid, marker, libc::SIGKILL);
        }
        if killed && already_timed_out {
            // The tree was killed in the copy loop: SIGKILL ends it now.
            kill_tree(pid, marker, libc::SIGKILL);
            return (sys::wait(pid), timed_out);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(100));
    }
}

fn failed(why: String) -> Status {
    Status {
        error: Some(why),
        ..Status::default()
    }
}

/// Signal the command's process group and every process carrying the run's marker (a process
/// that started a group or session of its own still has it in its environment).
fn kill_tree(pgid: libc::pid_t, marker: &str, sig: libc::c_int) {
    sys::kill_group(pgid, sig);
    let needle = format!("{RUN_MARKER_VAR}={marker}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id() as libc::pid_t;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()) {
            sys::kill_pid(pid, sig);
        }
    }
}
