//! The few system calls the agent needs beyond `std`, each behind a small safe function.

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How long a write to the host may wait for the channel to take bytes. A connection that went
/// silent holds the agent's writes forever otherwise; the command is not affected either way
/// (its keeper never writes to the channel), and the host attaches again after reconnecting.
const WRITE_STALL: Duration = Duration::from_secs(120);

/// Unbuffered stdin (the request, then the host's acknowledgement).
pub(crate) fn stdin() -> std::fs::File {
    // SAFETY: fd 0 is open for the life of the process and nothing else owns it.
    unsafe { std::fs::File::from_raw_fd(0) }
}

/// The channel to the host (stdout), written frame by frame, never waiting forever.
pub(crate) struct Output {
    fd: RawFd,
}

impl Output {
    pub(crate) fn stdout() -> Output {
        Output { fd: 1 }
    }

    /// Write all of `bytes`, or fail when the host is gone or stalled past [`WRITE_STALL`].
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut rest = bytes;
        while !rest.is_empty() {
            if !poll_one(self.fd, libc::POLLOUT, Some(WRITE_STALL))? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "host stalled"));
            }
            // SAFETY: writes from a valid slice to our own descriptor.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
            rest = &rest[n as usize..];
        }
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Wait until `fd` is ready for `events` (or hung up); `false` on timeout.
pub(crate) fn poll_one(
    fd: RawFd,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(r > 0);
    }
}

/// `poll(2)` over several descriptors; returns each one's `revents`.
pub(crate) fn poll_many(fds: &[RawFd], timeout: Duration) -> io::Result<Vec<libc::c_short>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: a valid array of pollfds of the given length.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(p.iter().map(|p| p.revents).collect())
}

/// A pipe, both ends close-on-exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `read(2)` from a descriptor of ours.
pub(crate) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads into a valid buffer from our own descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Wait for a child without blocking: its wait status once it has ended.
pub(crate) fn try_wait(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then_some(status)
}

/// Wait for a child.
pub(crate) fn wait(pid: libc::pid_t) -> Option<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: as above, blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Some(status);
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return None;
        }
    }
}

/// True while a process with this pid exists (any owner we may signal).
pub(crate) fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Send `sig` to a process group (errors ignored: the group may be gone).
pub(crate) fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Send `sig` to one process (errors ignored).
pub(crate) fn kill_pid(pid: libc::pid_t, sig: libc::c_int) {
    if pid > 1 {
        // SAFETY: plain syscall.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A C string of text that cannot hold a NUL byte (checked by the caller).
pub(crate) fn cstring(bytes: Vec<u8>) -> Result<CString, String> {
    CString::new(bytes).map_err(|_| "a NUL byte in the command or its environment".to_string())
}

/// An inotify instance watching one directory for changes to the files in it.
pub(crate) struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Watch `dir`; `None` when inotify is unavailable (the caller then polls on a timer).
    pub(crate) fn new(dir: &std::path::Path) -> Option<DirWatch> {
        // SAFETY: creates a descriptor we then own.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return None;
        }
        // SAFETY: just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
        let mask = libc::IN_MODIFY | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        // SAFETY: a valid descriptor and a NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return None;
        }
        Some(DirWatch { fd })
    }

    /// Wait up to `timeout` for a change, then forget the events read (the caller re-reads the
    /// files whatever changed).
    pub(crate) fn wait(&self, timeout: Duration) {
        if poll_one(self.fd.as_raw_fd(), libc::POLLIN, Some(timeout)).unwrap_or(false) {
            let mut buf = [0u8; 4096];
            // SAFETY: reads into a valid buffer from our own non-blocking descriptor.
            while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0
            {
            }
        }
    }
}
