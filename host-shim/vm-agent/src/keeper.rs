//! The keeper: runs the command (`/bin/sh -c <script>`, spawned in a process group of its own),
//! copies its stdout and stderr into the spool, enforces the deadline on the VM (so a timeout
//! holds even while the host cannot reach the VM), and records the exit status.
//!
//! It is the agent process itself, so an execute costs one program start on the VM besides
//! the command's own: its main thread keeps the command, a second thread streams the spool to
//! the host ([`crate::follow`]). Only that thread ever writes to the SSH channel, so a dropped
//! or silent connection stops the stream and nothing else: the keeper ignores `SIGHUP` and
//! `SIGPIPE`, never blocks on the network, and the command runs on to its end (an SSH server
//! does not signal the processes of a session without a terminal when its connection ends).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use paperclip_vm_agent::{Header, RUN_MARKER_VAR};

use crate::follow::Wake;
use crate::spool::{Run, Status};
use crate::sys;

/// Grace between `SIGTERM` and `SIGKILL` when the deadline passes.
const TERM_GRACE: Duration = Duration::from_secs(1);
/// How long output is still read after `SIGKILL` (a process that escaped the marker can hold
/// the pipes; the status must not wait for it forever).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A started command: its pid and our ends of its output pipes.
pub(crate) struct Started {
    pid: libc::pid_t,
    readers: [OwnedFd; 2],
    /// The spool's stdout and stderr, each created with its first byte.
    files: [Spooled; 2],
    marker: String,
    deadline: Option<Instant>,
    cap: u64,
}

/// One output stream's spool file, created when its first byte comes (most commands write
/// nothing on stderr, many nothing at all: a file never made costs the VM nothing).
struct Spooled {
    path: std::path::PathBuf,
    file: Option<File>,
}

impl Spooled {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&self.path)?,
            ),
        };
        file.write_all(bytes)
    }
}

/// Start the command of `run`, stdin from the spool, output into pipes this process reads.
pub(crate) fn start(run: &Run, header: &Header, script: Vec<u8>) -> Result<Started, String> {
    let io_err = |what: &str, e: std::io::Error| format!("{what} on the VM: {e}");
    let spooled = |name: &str| Spooled {
        path: run.path(name),
        file: None,
    };
    let files = [spooled("stdout"), spooled("stderr")];
    // An empty stdin is stored as a link only (see the spool): the command reads /dev/null.
    let stdin_path = if header.stdin_len == 0 {
        std::path::PathBuf::from("/dev/null")
    } else {
        run.path("stdin")
    };
    let stdin = File::open(stdin_path).map_err(|e| io_err("opening the stored stdin", e))?;
    let command = Command::new(run.id, script)?;
    let (out_r, out_w) = sys::pipe().map_err(|e| io_err("creating pipes", e))?;
    let (err_r, err_w) = sys::pipe().map_err(|e| io_err("creating pipes", e))?;
    // SAFETY: plain signal dispositions of this process; the command gets the defaults back
    // through posix_spawn's SETSIGDEF.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let pid = command
        .spawn(&stdin, &out_w, &err_w)
        .map_err(|e| io_err("starting the command", e))?;
    drop((out_w, err_w, stdin));
    Ok(Started {
        pid,
        readers: [out_r, err_r],
        files,
        marker: command.marker,
        deadline: (header.timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(header.timeout_ms)),
        cap: header.cap,
    })
}

/// The command line and environment of a run.
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

    /// `posix_spawn` the command in a process group of its own, with default signal
    /// dispositions and no blocked signal, stdin from `stdin`, stdout and stderr into the pipes.
    fn spawn(&self, stdin: &File, out: &OwnedFd, err: &OwnedFd) -> std::io::Result<libc::pid_t> {
        let mut argv: Vec<*mut libc::c_char> =
            self.argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv.push(std::ptr::null_mut());
        let mut envp: Vec<*mut libc::c_char> =
            self.envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
        envp.push(std::ptr::null_mut());
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(r))
            }
        };
        // SAFETY: the attribute and file-action objects are initialised before use and
        // destroyed after; every pointer handed over outlives the call.
        unsafe {
            let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
            let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
            check(libc::posix_spawn_file_actions_init(&mut actions))?;
            check(libc::posix_spawnattr_init(&mut attr))?;
            let result = (|| {
                for (fd, to) in [
                    (stdin.as_raw_fd(), 0),
                    (out.as_raw_fd(), 1),
                    (err.as_raw_fd(), 2),
                ] {
                    check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, to))?;
                }
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
                check(libc::posix_spawnattr_setsigmask(&mut attr, &none))?;
                check(libc::posix_spawnattr_setpgroup(&mut attr, 0))?;
                check(libc::posix_spawnattr_setflags(
                    &mut attr,
                    (libc::POSIX_SPAWN_SETPGROUP
                        | libc::POSIX_SPAWN_SETSIGDEF
                        | libc::POSIX_SPAWN_SETSIGMASK) as libc::c_short,
                ))?;
                let mut pid = 0;
                check(libc::posix_spawn(
                    &mut pid,
                    self.program.as_ptr(),
                    &actions,
                    &attr,
                    argv.as_ptr(),
                    envp.as_ptr(),
                ))?;
                Ok(pid)
            })();
            libc::posix_spawn_file_actions_destroy(&mut actions);
            libc::posix_spawnattr_destroy(&mut attr);
            result
        }
    }
}

impl Started {
    /// Keep the command to its end (or its deadline), waking the stream at every write, and
    /// return how it ended.
    pub(crate) fn keep(mut self, wake: &Wake) -> Status {
        let mut open = [true, true];
        let mut kept = [0u64; 2];
        let limit = self.cap.saturating_add(1);
        let mut spool_error: Option<String> = None;
        let mut termed_at: Option<Instant> = None;
        let mut killed_at: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while open[0] || open[1] {
            let now = Instant::now();
            if termed_at.is_none() && self.deadline.is_some_and(|d| now >= d) {
                termed_at = Some(now);
                kill_tree(self.pid, &self.marker, libc::SIGTERM);
            }
            if let (Some(t), None) = (termed_at, killed_at) {
                if now >= t + TERM_GRACE {
                    killed_at = Some(now);
                    kill_tree(self.pid, &self.marker, libc::SIGKILL);
                }
            }
            if killed_at.is_some_and(|k| now >= k + KILL_GRACE) {
                break;
            }
            let wait = match (self.deadline, termed_at, killed_at) {
                (_, _, Some(k)) => (k + KILL_GRACE).saturating_duration_since(now),
                (_, Some(t), None) => (t + TERM_GRACE).saturating_duration_since(now),
                (Some(d), None, None) => d.saturating_duration_since(now),
                (None, _, _) => Duration::from_secs(3600),
            };
            let slots: Vec<usize> = (0..2).filter(|&i| open[i]).collect();
            let fds: Vec<i32> = slots.iter().map(|&i| self.readers[i].as_raw_fd()).collect();
            let Ok(revents) = sys::poll_many(&fds, wait.max(Duration::from_millis(1))) else {
                continue;
            };
            for (slot, &i) in slots.iter().enumerate() {
                if revents[slot] == 0 {
                    continue;
                }
                let n = match sys::read(&self.readers[i], &mut buf) {
                    Ok(0) => {
                        open[i] = false;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open[i] = false;
                        continue;
                    }
                };
                let room = usize::try_from(limit.saturating_sub(kept[i])).unwrap_or(usize::MAX);
                let take = n.min(room);
                if take > 0 && spool_error.is_none() {
                    match self.files[i].write_all(&buf[..take]) {
                        Ok(()) => {
                            kept[i] += take as u64;
                            wake.notify();
                        }
                        // Keep reading, so the command never blocks on a full pipe; the
                        // outcome can no longer be reported whole.
                        Err(e) => {
                            spool_error =
                                Some(format!("writing the command's output on the VM: {e}"))
                        }
                    }
                }
            }
        }
        let (raw, late_timeout) = reap(self.pid, &self.marker, self.deadline, termed_at.is_some());
        let mut status = Status {
            timed_out: termed_at.is_some() || late_timeout,
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
}

/// Wait for the command's process after its output ended (it may have closed its output and
/// kept running), still holding the deadline. Returns the wait status and whether the deadline
/// passed while waiting.
fn reap(
    pid: libc::pid_t,
    marker: &str,
    deadline: Option<Instant>,
    already_killed: bool,
) -> (Option<libc::c_int>, bool) {
    if already_killed {
        // The tree was ended in the copy loop; SIGKILL ends what is left of it now.
        kill_tree(pid, marker, libc::SIGKILL);
        return (sys::wait(pid), false);
    }
    // The output usually ends as the process exits: the first naps are short.
    let mut nap = Duration::from_micros(50);
    loop {
        if let Some(w) = sys::try_wait(pid) {
            return (Some(w), false);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            kill_tree(pid, marker, libc::SIGTERM);
            std::thread::sleep(TERM_GRACE);
            kill_tree(pid, marker, libc::SIGKILL);
            return (sys::wait(pid), true);
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(100));
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
