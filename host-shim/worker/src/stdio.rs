//! The protocol's stdin and stdout, read and written on the runtime's own event loop.
//!
//! Tokio's `stdin()` and `stdout()` hand every read and every write to a blocking-pool thread
//! and back: two thread switches per protocol line each way, which `perf` showed as about a
//! tenth of the worker's CPU per execute. Paperclip spawns the worker with Unix-socket stdio
//! (Node's pipes), the tests and the demo with pipes; both can be polled like any socket, so
//! those are registered with the reactor instead. Anything else (a terminal, a file,
//! `/dev/null`) keeps tokio's blocking reader and writer, on blocking descriptors.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt as _;

use tokio::io::{AsyncRead, AsyncWrite};

/// The worker's protocol input.
pub type Input = Box<dyn AsyncRead + Unpin + Send>;
/// The worker's protocol output.
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// What kind of descriptor a standard stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    Pipe,
    Other,
}

/// stdin and stdout for [`crate::worker::serve`]. Must run inside the tokio runtime.
pub fn protocol_streams() -> (Input, Output) {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    // Non-blocking mode belongs to the open file, not the descriptor: were stdout and stderr
    // one file (`2>&1`), the logs' blocking writes to stderr would start failing.
    let shared = same_file(stdout.as_fd(), stderr.as_fd());
    let (in_kind, out_kind) = (kind(stdin.as_fd()), kind(stdout.as_fd()));
    let input: Input = match reactor_input(stdin.as_fd(), in_kind) {
        Ok(Some(r)) => r,
        other => {
            log_fallback("stdin", other.err());
            clear_nonblocking(stdin.as_fd());
            Box::new(tokio::io::stdin())
        }
    };
    let output = if shared {
        Ok(None)
    } else {
        reactor_output(stdout.as_fd(), out_kind)
    };
    let output: Output = match output {
        Ok(Some(w)) => w,
        other => {
            log_fallback("stdout", other.err());
            clear_nonblocking(stdout.as_fd());
            Box::new(tokio::io::stdout())
        }
    };
    // Logs are written with blocking writes.
    clear_nonblocking(stderr.as_fd());
    tracing::debug!(
        stdin = ?in_kind,
        stdout = ?out_kind,
        stdout_is_stderr = shared,
        "protocol streams"
    );
    (input, output)
}

fn log_fallback(stream: &str, error: Option<std::io::Error>) {
    if let Some(e) = error {
        tracing::debug!("{stream}: not polled on the event loop ({e}); using blocking I/O");
    }
}

/// `fstat` of the stream (through a second descriptor, closed again).
fn metadata(fd: BorrowedFd<'_>) -> Option<std::fs::Metadata> {
    std::fs::File::from(owned(fd).ok()?).metadata().ok()
}

fn kind(fd: BorrowedFd<'_>) -> Option<Kind> {
    let t = metadata(fd)?.file_type();
    Some(if t.is_socket() {
        Kind::Socket
    } else if t.is_fifo() {
        Kind::Pipe
    } else {
        Kind::Other
    })
}

fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |fd| metadata(fd).map(|m| (m.dev(), m.ino()));
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// A second descriptor of the stream, so the standard one stays open whatever happens to ours.
fn owned(fd: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// The stream (of `kind`) on the reactor, or `None` for a kind that cannot be polled.
fn reactor_input(fd: BorrowedFd<'_>, kind: Option<Kind>) -> std::io::Result<Option<Input>> {
    Ok(match kind {
        Some(Kind::Socket) => Some(Box::new(unix_stream(owned(fd)?)?)),
        Some(Kind::Pipe) => Some(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(
            owned(fd)?,
        )?)),
        Some(Kind::Other) | None => None,
    })
}

fn reactor_output(fd: BorrowedFd<'_>, kind: Option<Kind>) -> std::io::Result<Option<Output>> {
    Ok(match kind {
        Some(Kind::Socket) => Some(Box::new(unix_stream(owned(fd)?)?)),
        Some(Kind::Pipe) => Some(Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(
            owned(fd)?,
        )?)),
        Some(Kind::Other) | None => None,
    })
}

fn unix_stream(fd: OwnedFd) -> std::io::Result<tokio::net::UnixStream> {
    let s = std::os::unix::net::UnixStream::from(fd);
    s.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(s)
}

/// Blocking reads and writes expect a blocking descriptor; Paperclip's may be non-blocking.
fn clear_nonblocking(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd as _;
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor borrowed for this call, with valid commands; failure is
    // harmless (the stream then behaves as it did).
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 && flags & libc::O_NONBLOCK != 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_told_apart_by_kind() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(kind(a.as_fd()), Some(Kind::Socket));
        let (r, _w) = std::io::pipe().unwrap();
        assert_eq!(kind(r.as_fd()), Some(Kind::Pipe));
        let f = tempfile::tempfile().unwrap();
        assert_eq!(kind(f.as_fd()), Some(Kind::Other));
    }

    #[test]
    fn two_descriptors_of_one_file_are_the_same_file() {
        let (r, w) = std::io::pipe().unwrap();
        let w2 = w.try_clone().unwrap();
        assert!(same_file(w.as_fd(), w2.as_fd()));
        assert!(
            same_file(r.as_fd(), w.as_fd()),
            "a pipe's ends are one inode"
        );
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!same_file(a.as_fd(), b.as_fd()));
    }
}
