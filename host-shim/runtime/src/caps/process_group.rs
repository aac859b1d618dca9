//! The `ssh` client process as a process group: killed whole on a timeout or when its call is
//! dropped, and its exit status read as a code or a signal name.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// SIGKILLs the child's process group when dropped while armed: covers timeouts and a caller
/// that drops the `exec` future mid-flight.
pub(super) struct GroupKill {
    pgid: Option<i32>,
}

impl GroupKill {
    pub(super) fn new(pid: Option<u32>) -> Self {
        Self {
            pgid: pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0),
        }
    }

    pub(super) fn kill(&self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: plain syscall; a negative pid addresses the process group `pgid`, which
            // `process_group(0)` made equal to the child's pid.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    pub(super) fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The exit code, or else the name of the signal that ended the process.
pub(super) fn split_status(status: ExitStatus) -> (Option<i32>, Option<String>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (Some(code), None),
        (None, Some(sig)) => (None, Some(signal_name(sig))),
        (None, None) => (None, None),
    }
}

/// The conventional name of a signal number (`SIGKILL`), or `SIG<n>` for unusual ones.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("SIG{sig}"),
    };
    name.to_owned()
}
