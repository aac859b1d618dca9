//! The fast path of the `ssh` capability: a command to a target whose master connection is up
//! is sent straight to the master over its control socket, in OpenSSH's multiplexing protocol
//! (`openssh-mux-client`), instead of starting an `ssh -S` client process for it.
//!
//! This is what `ssh -S <socket> host cmd` does internally, minus the process: the master
//! (still the system OpenSSH client, started by [`super::ssh::SshRunner`] with
//! `ControlMaster=auto`) opens the channel; we hand it three pipe ends for the command's
//! stdin/stdout/stderr and wait for its exit message. Starting an `ssh` process costs more than
//! the channel round trip itself (about 6 ms of CPU on a small VM), so this roughly halves a
//! trivial execute.
//!
//! Nothing here sees key material: the master is already authenticated, so a pasted key is not
//! even written to disk for a command that takes this path.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use openssh_mux_client::{Connection, Error as MuxError, EstablishedSession, SessionStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

use super::ssh_output::{ChunkCallback, OutputSink};

/// The exit status an `ssh` client reports when no exit status came back (the connection ended,
/// or the remote command was killed by a signal): the same value the spawned client would give.
const NO_EXIT_STATUS: i32 = 255;

/// Why the fast path was not taken.
#[derive(Debug, thiserror::Error)]
pub(super) enum MuxUnavailable {
    /// The command was certainly not started (no master, or the master refused the session):
    /// the caller runs it through a spawned `ssh`, which also reports OpenSSH's own error text.
    #[error("connection sharing unavailable: {0}")]
    NotStarted(String),
    /// The session request may have reached the master; running it again could run it twice.
    #[error(
        "the shared SSH connection failed while the command was being started (it may have \
         run): {0}"
    )]
    Ambiguous(String),
}

/// How long a live master takes to answer the protocol greeting, at most (it is local).
const ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// True when a master answers on `control` (a socket file can outlive its master).
pub(super) async fn alive(control: &Path) -> bool {
    matches!(
        tokio::time::timeout(ALIVE_TIMEOUT, Connection::connect(control)).await,
        Ok(Ok(_))
    )
}

/// One session opened on a master, with our ends of its pipes (none for a stream handed over
/// as a descriptor of the caller's).
pub(super) struct MuxSession {
    session: EstablishedSession,
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: pipe::Receiver,
    /// How long the master took to open the channel: one round trip to the SSH server.
    pub(super) opened_in: std::time::Duration,
}

impl MuxSession {
    /// The session and our pipe ends, for a caller that speaks its own protocol over them.
    pub(super) fn into_parts(
        self,
    ) -> (
        EstablishedSession,
        Option<pipe::Sender>,
        Option<pipe::Receiver>,
        pipe::Receiver,
    ) {
        (self.session, self.stdin, self.stdout, self.stderr)
    }
}

/// The command's stdin, as [`open`] sets it up.
pub(super) enum StdinEnd {
    /// `/dev/null`.
    Null,
    /// A pipe whose write end the session keeps (fed by [`run`]).
    Pipe,
    /// The caller's descriptor, handed to the master as is (e.g. a pipe a transfer writes).
    Fd(OwnedFd),
}

/// Open a session for `command` on the master listening at `control`, with `stdin` as said and
/// stdout into `stdout` when given (else a pipe [`run`] collects).
pub(super) async fn open(
    control: &Path,
    command: &str,
    stdin: StdinEnd,
    stdout: Option<OwnedFd>,
) -> Result<MuxSession, MuxUnavailable> {
    open_with(control, command, false, stdin, stdout).await
}

/// [`open`], with a pseudo-terminal on the remote side when `tty` is set. The master takes the
/// terminal's size and modes from the stdin it is handed, a pipe here, so the remote terminal
/// starts 0×0 with modes cleared: the remote command sets both itself (`stty`).
pub(super) async fn open_with(
    control: &Path,
    command: &str,
    tty: bool,
    stdin: StdinEnd,
    stdout: Option<OwnedFd>,
) -> Result<MuxSession, MuxUnavailable> {
    let not_started = |e: &dyn std::fmt::Display| MuxUnavailable::NotStarted(e.to_string());
    let conn = Connection::connect(control)
        .await
        .map_err(|e| not_started(&e))?;
    let cmd = openssh_mux_client::NonZeroByteSlice::new(command.as_bytes())
        .ok_or_else(|| not_started(&"the command contains a NUL byte"))?;
    let session_req = openssh_mux_client::Session::builder()
        .tty(tty)
        .cmd(std::borrow::Cow::Borrowed(cmd))
        .build();

    // The master's ends must be blocking (OpenSSH sets its own flags); ours become tokio pipes.
    let io_err = |e: std::io::Error| not_started(&e);
    let (stdin_theirs, stdin_ours): (OwnedFd, Option<pipe::Sender>) = match stdin {
        StdinEnd::Pipe => {
            let (r, w) = std::io::pipe().map_err(io_err)?;
            let w = pipe::Sender::from_owned_fd(w.into()).map_err(io_err)?;
            (r.into(), Some(w))
        }
        StdinEnd::Null => (
            std::fs::File::open("/dev/null").map_err(io_err)?.into(),
            None,
        ),
        StdinEnd::Fd(fd) => (fd, None),
    };
    let (stdout_theirs, stdout): (OwnedFd, Option<pipe::Receiver>) = match stdout {
        Some(fd) => (fd, None),
        None => {
            let (ours, theirs) = std::io::pipe().map_err(io_err)?;
            let ours = pipe::Receiver::from_owned_fd(ours.into()).map_err(io_err)?;
            (theirs.into(), Some(ours))
        }
    };
    let (stderr_ours, stderr_theirs) = std::io::pipe().map_err(io_err)?;
    let stderr = pipe::Receiver::from_owned_fd(stderr_ours.into()).map_err(io_err)?;
    let stderr_theirs: OwnedFd = stderr_theirs.into();

    let fds = [
        stdin_theirs.as_raw_fd(),
        stdout_theirs.as_raw_fd(),
        stderr_theirs.as_raw_fd(),
    ];
    let started = std::time::Instant::now();
    let session = conn
        .open_new_session(&session_req, &fds)
        .await
        .map_err(|e| match e {
            // The master answered "no": nothing was started.
            MuxError::RequestFailure(_) | MuxError::PermissionDenied(_) => not_started(&e),
            other => MuxUnavailable::Ambiguous(other.to_string()),
        })?;
    // The master holds its own duplicates now; ours must go, or EOF would never come.
    let opened_in = started.elapsed();
    drop((stdin_theirs, stdout_theirs, stderr_theirs));
    Ok(MuxSession {
        session,
        stdin: stdin_ours,
        stdout,
        stderr,
        opened_in,
    })
}

/// How a session ended.
pub(super) struct Ended {
    /// The remote exit status, or 255 when none came back; `None` on timeout.
    pub(super) exit_code: Option<i32>,
    /// The SSH server reported `exit_code` for the command (so even 255 is the command's own).
    pub(super) from_remote: bool,
    /// The deadline passed first.
    pub(super) timed_out: bool,
}

/// Feed stdin, collect output into `sink` (live chunks to `on_chunk`) and wait for the exit
/// status, until `deadline`. On timeout the session is dropped, which makes the master close the
/// channel (as killing an `ssh -S` client would); ending the remote processes is the caller's
/// business.
///
/// The order matters. The master sends its exit message as soon as the SSH server's
/// `exit-status` arrives, which can be long before the output the master still holds (up to a
/// channel window, 2 MiB) or that is still on the wire has been written into our pipes. Closing
/// the control connection at that point makes the master fail the channel's write side
/// (OpenSSH `mux_master_control_cleanup_cb` → `chan_write_failed`), which discards that output
/// and closes the pipes, so the tail was lost without a trace. So the streams are read to their
/// end first (the master closes them once the channel has delivered everything), and only then
/// is the exit message read and the control connection released.
pub(super) async fn run(
    s: MuxSession,
    stdin: Option<Vec<u8>>,
    sink: &mut OutputSink,
    on_chunk: &mut Option<ChunkCallback>,
    deadline: tokio::time::Instant,
) -> Ended {
    let MuxSession {
        session,
        stdin: stdin_pipe,
        stdout,
        mut stderr,
        ..
    } = s;
    // Its own task, so a large upload and large output never deadlock on full pipes.
    let stdin_task = match (stdin_pipe, stdin) {
        (Some(mut pipe), Some(data)) => Some(tokio::spawn(async move {
            // EPIPE just means the remote side stopped reading; that is its business.
            let _ = pipe.write_all(&data).await;
            drop(pipe);
        })),
        _ => None,
    };

    let outcome = tokio::time::timeout_at(deadline, async {
        match stdout {
            Some(mut stdout) => sink.drain(&mut stdout, &mut stderr, on_chunk).await,
            None => {
                sink.drain(&mut tokio::io::empty(), &mut stderr, on_chunk)
                    .await
            }
        }
        // The session (and with it the control connection) lives until here.
        session.wait().await
    })
    .await;
    if let Some(task) = stdin_task {
        task.abort();
    }
    let ended = |exit_code, from_remote, timed_out| Ended {
        exit_code,
        from_remote,
        timed_out,
    };
    match outcome {
        Ok(Ok(SessionStatus::Exited {
            exit_value: Some(code),
        })) => match i32::try_from(code) {
            Ok(code) => ended(Some(code), true, false),
            Err(_) => ended(Some(NO_EXIT_STATUS), false, false),
        },
        Ok(Ok(_)) | Ok(Err(_)) => ended(Some(NO_EXIT_STATUS), false, false),
        Err(_elapsed) => ended(None, false, true),
    }
}
