//! Pseudo-terminals for sessions that send `pty-req`, with plain libc (as sshd does): the
//! master is non-blocking and watched by tokio, the slave becomes the command's stdin, stdout,
//! stderr and controlling terminal.
//!
//! Terminal modes: a new pty starts with the kernel's defaults (`tty_std_termios`: ICRNL,
//! IXON, OPOST|ONLCR, ICANON, ECHO, ECHOE, ECHOK, ISIG, IEXTEN, CS8), which a canonical-mode
//! reader needs to see a lone "\r" as the end of a line. The modes encoded in pty-req are not
//! applied (see [`Pty::open`]).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Window size as pty-req and window-change carry it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WinSize {
    pub(crate) cols: u32,
    pub(crate) rows: u32,
    pub(crate) pix_width: u32,
    pub(crate) pix_height: u32,
}

/// An allocated pty whose command has not started yet.
pub(crate) struct Pty {
    pub(crate) master: Master,
    pub(crate) slave: OwnedFd,
    /// `/dev/pts/N`, for `SSH_TTY`.
    pub(crate) name: String,
}

/// The master side. Every copy of its descriptor lives in this one value (it is close-on-exec,
/// so no child inherits it): dropping it closes the master, and the kernel then hangs up the
/// slave (SIGHUP to the session's controlling process and foreground process group), which is
/// how sshd ends a pty session whose client went away.
pub(crate) struct Master(AsyncFd<OwnedFd>);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Pty {
    /// Allocates a pty of the given size.
    ///
    /// The modes pty-req encodes are deliberately ignored: OpenSSH's ControlMaster sends an
    /// all-zero termios (no ICANON, no ECHO, no ICRNL, speed 0) when the multiplexing client's
    /// stdin is not a terminal, and applying that would turn the pty raw behind the caller's
    /// back. Real terminals' modes are close to the kernel's defaults anyway, and a program
    /// that wants something else sets it itself (`stty`, `tcsetattr`), as TUIs do.
    pub(crate) fn open(size: WinSize) -> io::Result<Pty> {
        // O_CLOEXEC from the start (not openpty(3) + fcntl): other sessions spawn commands
        // from other threads at any moment, and a master or slave descriptor leaked into
        // one of them would keep this pty from hanging up or from reporting EIO.
        // SAFETY: plain syscalls; every descriptor is owned right after it is created.
        let master = unsafe {
            let fd = cvt(libc::posix_openpt(
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
            ))?;
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: plain syscalls on the descriptor just opened.
        unsafe {
            cvt(libc::grantpt(master.as_raw_fd()))?;
            cvt(libc::unlockpt(master.as_raw_fd()))?;
        }
        let mut buf = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes a NUL-terminated name of at most `buf.len()` bytes.
        let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: ptsname_r succeeded, so `buf` holds a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
        // Blocking (the command expects an ordinary terminal); O_NOCTTY because the
        // simulator itself must never acquire it; the child does so with TIOCSCTTY.
        // SAFETY: `name` is a valid C string; the descriptor is owned at once.
        let slave = unsafe {
            let fd = cvt(libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ))?;
            OwnedFd::from_raw_fd(fd)
        };
        set_winsize(master.as_raw_fd(), size)?;
        // SAFETY: the OwnedFd is valid, and `Master` never closes or replaces it while it is
        // registered (it is closed only by dropping the AsyncFd, which deregisters first).
        let master = unsafe {
            AsyncFd::register_with_interest(master, Interest::READABLE | Interest::WRITABLE)?
        };
        Ok(Pty {
            master: Master(master),
            slave,
            name: name.to_string_lossy().into_owned(),
        })
    }
}

/// TIOCSWINSZ; the kernel sends SIGWINCH to the foreground process group when it changes.
fn set_winsize(fd: RawFd, size: WinSize) -> io::Result<()> {
    // sshd truncates to `u_short`; clamping keeps an absurd size at least large.
    let c = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let ws = libc::winsize {
        ws_row: c(size.rows),
        ws_col: c(size.cols),
        ws_xpixel: c(size.pix_width),
        ws_ypixel: c(size.pix_height),
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) })?;
    Ok(())
}

impl Master {
    pub(crate) fn set_winsize(&self, size: WinSize) -> io::Result<()> {
        set_winsize(self.0.get_ref().as_raw_fd(), size)
    }

    /// Reads what the session wrote to its terminal. `Ok(0)` is the end: the kernel answers
    /// EIO once every descriptor of the slave is closed, after everything written before that
    /// has been read, so reading until then loses nothing.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| {
                // SAFETY: reads at most `buf.len()` bytes into `buf`.
                let n = unsafe {
                    libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input (the line discipline then echoes and edits it).
    pub(crate) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| {
                // SAFETY: writes at most `data.len()` bytes from `data`.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), data.as_ptr().cast(), data.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}
