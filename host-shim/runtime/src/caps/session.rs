//! Sessions that outlive a call (Paperclip's duplex channel and login PTY): the host opens the
//! session the component planned, on the target's pooled master connection, and hands its
//! streams to the worker, which carries them between calls.
//!
//! The session is one channel of the master (`ssh_mux`), with pipes for stdin, stdout and
//! stderr; with a terminal, the remote side allocates a PTY (which merges stderr into stdout).
//! Nothing here reads or writes the streams; [`OpenSession::ended`] must only be awaited once
//! stdout and stderr reached their end, for the reason [`ssh_mux::run`] explains (the master's
//! exit message can overtake the output still in flight).

use std::time::Duration;

use paperclip_provider_types::{Connected, SessionPlan, SshError, SshRequest, SshTarget};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ssh::SshRunner;
use super::ssh_mux::{self, MuxUnavailable, StdinEnd};
use crate::state::BoxFuture;

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The remote command exited with this status.
    Exited(i32),
    /// The connection closed with no exit status (reset, silent past the keepalive, the
    /// master gone, or the command killed by a signal, which the master cannot report).
    TransportClosed,
}

/// Ends a session's remote processes (bounded by the caller).
pub type Kill = Box<dyn FnOnce() -> BoxFuture<()> + Send>;

/// An open session: its three streams, how it ends, and how to end it.
pub struct OpenSession {
    /// The command's stdin; dropping it sends EOF.
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// The command's stdout (with a terminal: everything the terminal shows).
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The command's stderr (with a terminal: nothing).
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    /// Resolves to how the session ended. Await it only after stdout and stderr ended; dropping
    /// it closes the channel.
    pub ended: BoxFuture<SessionEnd>,
    /// Runs the plan's kill command over the same connection.
    pub kill: Kill,
}

/// How long the kill command may take (Paperclip waits 10 s for a close's answer in all).
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Open `plan` on `runner`'s pooled connection to its target, within `timeout`.
pub async fn open(
    runner: std::sync::Arc<SshRunner>,
    plan: SessionPlan,
    timeout: Duration,
) -> Result<OpenSession, SshError> {
    let timeout_ms = u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1);
    match runner.connect(&plan.target, timeout_ms).await? {
        Connected::Ready => {}
        Connected::Unpooled => {
            return Err(SshError::Spawn(
                "sessions (duplex channels, login PTYs) need the host's pooled SSH connections, \
                 which are off for this target"
                    .into(),
            ))
        }
        Connected::Failed(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(SshError::Spawn(format!(
                "the SSH connection to {} could not be opened{}: {}",
                plan.target.host,
                if out.timed_out { " in time" } else { "" },
                said.trim()
            )));
        }
    }
    let control = runner.live_master(&plan.target).ok_or_else(|| {
        SshError::Spawn(format!(
            "the SSH connection to {} closed before the session opened",
            plan.target.host
        ))
    })?;
    let opening = ssh_mux::open_with(
        &control,
        &plan.command,
        plan.terminal.is_some(),
        StdinEnd::Pipe,
        None,
    );
    let session = match tokio::time::timeout(timeout, opening).await {
        Ok(Ok(s)) => s,
        Ok(Err(MuxUnavailable::NotStarted(e))) => {
            return Err(SshError::Spawn(format!(
                "the session could not be opened on the SSH connection to {}: {e}",
                plan.target.host
            )))
        }
        Ok(Err(e @ MuxUnavailable::Ambiguous(_))) => {
            // It may have started: end whatever did before reporting.
            kill(runner, plan.target, plan.kill_command).await;
            return Err(SshError::Spawn(e.to_string()));
        }
        Err(_) => {
            kill(runner, plan.target, plan.kill_command).await;
            return Err(SshError::Spawn(format!(
                "the session did not open within {} ms",
                timeout.as_millis()
            )));
        }
    };
    let (established, stdin, stdout, stderr) = session.into_parts();
    let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
        unreachable!("open_with was asked for pipes")
    };
    let ended: BoxFuture<SessionEnd> = Box::pin(async move {
        match established.wait().await {
            Ok(openssh_mux_client::SessionStatus::Exited {
                exit_value: Some(code),
            }) => i32::try_from(code).map_or(SessionEnd::TransportClosed, SessionEnd::Exited),
            _ => SessionEnd::TransportClosed,
        }
    });
    let SessionPlan {
        target,
        kill_command,
        ..
    } = plan;
    Ok(OpenSession {
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: Box::new(stderr),
        ended,
        kill: Box::new(move || Box::pin(kill(runner, target, kill_command))),
    })
}

/// Run the kill command over the connection to `target`, within [`KILL_TIMEOUT`]; what it says
/// is only logged (it always exits 0 when it runs at all).
async fn kill(runner: std::sync::Arc<SshRunner>, target: SshTarget, command: String) {
    let request = SshRequest {
        target,
        command,
        stdin: None,
        timeout_ms: u32::try_from(KILL_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
        max_output_bytes: 4096,
        stream_output: false,
        durable: false,
    };
    let host = request.target.host.clone();
    match runner.exec(request, None).await {
        Ok(out) if out.exit_code == Some(0) => {
            tracing::debug!(host = %host, "ended a session's remote processes")
        }
        Ok(out) => tracing::warn!(
            host = %host,
            exit = ?out.exit_code,
            timed_out = out.timed_out,
            "the kill command of a session did not finish cleanly"
        ),
        Err(e) => tracing::warn!(host = %host, "the kill command of a session failed: {e}"),
    }
}
