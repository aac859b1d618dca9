//! Streaming a run's spool to the host: every byte from the requested offsets on, in order,
//! as it is written, then the exit status once the keeper recorded it. After the host
//! acknowledged the exit frame, the spool is removed.
//!
//! The stream goes over a [`Link`]: a session of its own (the agent's stdout, the ACK byte on
//! its stdin) or a run's share of a serving agent's channel ([`crate::serve`]).

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use paperclip_vm_agent::{frame, kind, Exit, Header, ACK, MAX_CHUNK};

use crate::spool::Run;
use crate::sys;

/// Where a run's frames go, and where the host's acknowledgement comes from.
pub(crate) trait Link {
    /// Send one frame of the run. `Err` when the host is gone (or stalled too long).
    fn send(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()>;
    /// Wait (at most [`ACK_WAIT`]) for the host's acknowledgement of the exit frame.
    fn acknowledged(&mut self) -> bool;
}

/// A session of its own: frames on stdout, the ACK byte on stdin.
pub(crate) struct Session {
    pub(crate) out: sys::Output,
    pub(crate) input: File,
}

impl Link for Session {
    fn send(&mut self, kind: u8, payload: &[u8]) -> std::io::Result<()> {
        self.out.send(&frame(kind, payload))
    }

    fn acknowledged(&mut self) -> bool {
        acknowledged(&mut self.input)
    }
}

/// Longest wait for a change before the files and the keeper are looked at again anyway.
const RECHECK: Duration = Duration::from_millis(500);
/// How long a keeper that was just started may take to record its pid.
const KEEPER_PID_GRACE: Duration = Duration::from_secs(5);
/// How long the host has to acknowledge the exit frame.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(60);

/// How the stream learns that the spool changed.
pub(crate) enum Wake {
    /// The keeper is a thread of this process: it signals every write, and its end.
    Local(Mutex<Local>, Condvar),
    /// The keeper is another process (an earlier request's): inotify on the run's directory
    /// (or, without inotify, a short timer).
    Dir(Option<sys::DirWatch>),
}

/// What the local keeper has signalled.
#[derive(Default)]
pub(crate) struct Local {
    writes: u64,
    done: bool,
}

impl Wake {
    pub(crate) fn local() -> Wake {
        Wake::Local(Mutex::default(), Condvar::new())
    }

    /// The keeper wrote to the spool.
    pub(crate) fn notify(&self) {
        if let Wake::Local(m, cv) = self {
            m.lock().unwrap_or_else(|e| e.into_inner()).writes += 1;
            cv.notify_all();
        }
    }

    /// The keeper recorded the status (or gave up).
    pub(crate) fn finish(&self) {
        if let Wake::Local(m, cv) = self {
            m.lock().unwrap_or_else(|e| e.into_inner()).done = true;
            cv.notify_all();
        }
    }

    /// Wait for a change after `seen` writes (or `RECHECK`); returns the writes seen now.
    fn wait(&self, seen: u64) -> u64 {
        match self {
            Wake::Local(m, cv) => {
                let guard = m.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = cv
                    .wait_timeout_while(guard, RECHECK, |l| l.writes == seen && !l.done)
                    .unwrap_or_else(|e| e.into_inner());
                guard.writes
            }
            Wake::Dir(Some(w)) => {
                w.wait(RECHECK);
                seen
            }
            Wake::Dir(None) => {
                std::thread::sleep(Duration::from_millis(20));
                seen
            }
        }
    }

    /// True once a local keeper is done; `None` for a keeper in another process.
    fn local_done(&self) -> Option<bool> {
        match self {
            Wake::Local(m, _) => Some(m.lock().unwrap_or_else(|e| e.into_inner()).done),
            Wake::Dir(_) => None,
        }
    }
}

/// One output stream of the run, read from the spool.
struct Stream {
    name: &'static str,
    kind: u8,
    file: Option<File>,
    offset: u64,
}

impl Stream {
    /// Send what the file holds past `offset`, up to the cap. `Err` when the host is gone.
    fn pump(&mut self, run: &Run, link: &mut impl Link, cap: u64) -> std::io::Result<u64> {
        if self.file.is_none() {
            match File::open(run.path(self.name)) {
                Ok(f) => self.file = Some(f),
                Err(_) => return Ok(0),
            }
        }
        let file = self.file.as_ref().expect("opened above");
        let len = file.metadata()?.len();
        let end = len.min(cap);
        let mut buf = vec![0u8; MAX_CHUNK];
        while self.offset < end {
            let want = usize::try_from(end - self.offset)
                .unwrap_or(MAX_CHUNK)
                .min(MAX_CHUNK);
            let n = file.read_at(&mut buf[..want], self.offset)?;
            if n == 0 {
                break;
            }
            link.send(self.kind, &buf[..n])?;
            self.offset += n as u64;
        }
        Ok(len)
    }
}

/// Stream `run` until its exit frame is sent (or the host is gone).
pub(crate) fn follow(link: &mut impl Link, run: &Run, header: &Header, wake: &Wake) {
    let mut streams = [
        Stream {
            name: "stdout",
            kind: kind::STDOUT,
            file: None,
            offset: header.stdout_offset,
        },
        Stream {
            name: "stderr",
            kind: kind::STDERR,
            file: None,
            offset: header.stderr_offset,
        },
    ];
    let since = Instant::now();
    let mut gone_once = false;
    let mut seen = 0;
    loop {
        // The status first: it is written after both files are complete, so what the files
        // hold after it is seen is all there is.
        let status = run.status();
        let mut lens = [0u64; 2];
        for (i, s) in streams.iter_mut().enumerate() {
            match s.pump(run, link, header.cap) {
                Ok(len) => lens[i] = len,
                Err(_) => return,
            }
        }
        if let Some(st) = status {
            if let Some(why) = st.error {
                let _ = link.send(kind::FAILED, why.as_bytes());
                return;
            }
            let exit = Exit {
                code: st.code,
                signal: st.signal,
                timed_out: st.timed_out,
                stdout_truncated: lens[0] > header.cap,
                stderr_truncated: lens[1] > header.cap,
            };
            if link.send(kind::EXIT, &exit.encode()).is_ok() && link.acknowledged() {
                run.remove();
            }
            return;
        }
        let keeper_gone = match wake.local_done() {
            Some(done) => done,
            None => match run.keeper_pid() {
                Some(pid) => !sys::alive(pid),
                None => since.elapsed() > KEEPER_PID_GRACE,
            },
        };
        if keeper_gone {
            // Once more: the status may have landed between the two looks.
            if gone_once {
                let _ = link.send(
                    kind::FAILED,
                    b"the command's keeper on the VM ended without recording an exit status \
                      (was the VM restarted?); the command's outcome is unknown",
                );
                return;
            }
            gone_once = true;
            continue;
        }
        seen = wake.wait(seen);
    }
}

/// Wait for the host's acknowledgement of the exit frame.
fn acknowledged(input: &mut File) -> bool {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    if !sys::poll_one(input.as_raw_fd(), libc::POLLIN, Some(ACK_WAIT)).unwrap_or(false) {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(input.read(&mut b), Ok(1) if b[0] == ACK)
}
