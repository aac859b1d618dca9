//! Native workspace sync: Paperclip's `environmentSyncIn` / `environmentSyncOut`.
//!
//! Each file mapping is one stream through the host's `transfer` capability over the VM's pooled
//! SSH connection; the VM side is a script from [`crate::sync_script`] that replaces the target
//! only once the whole stream has arrived. Sync-in then runs the operation's post-upload
//! commands in order and stops at the first that fails.

use super::{decode, ssh_error, ExecuteRequest, Lease, Provider, SCRIPT_OUTPUT_CAP};
use crate::error::ProviderError;
use crate::host::{
    Connected, DownloadRequest, EntryKind, LogLevel, SshRequest, SshTarget, TransferError,
    TransferReport, UploadRequest,
};
use crate::remote;
use crate::sync_script::{self, check_remote_path};
use crate::time::Deadline;

/// Which way a sync moves files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Host to VM (`environmentSyncIn`).
    In,
    /// VM to host (`environmentSyncOut`).
    Out,
}

impl Direction {
    fn verb(self) -> &'static str {
        match self {
            Direction::In => "sync-in",
            Direction::Out => "sync-out",
        }
    }
}

/// One source → target pair (Paperclip's file mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncMapping {
    /// Absolute source: a host path for sync-in, a VM path for sync-out.
    pub source_path: String,
    /// Absolute target: a VM path for sync-in, a host path for sync-out.
    pub target_path: String,
    /// File or directory.
    pub kind: EntryKind,
    /// Permission bits of the target once complete.
    pub mode: Option<u32>,
    /// `tar --exclude` patterns (directories only).
    pub exclude: Vec<String>,
    /// Copy what links point to.
    pub follow_symlinks: bool,
}

/// A command run after an operation's files (sync-in only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostUploadCommand {
    /// Run by `sh -c`, verbatim.
    pub command: String,
    /// Working directory; the lease's `remoteCwd` when absent.
    pub cwd: Option<String>,
    /// Deadline; the config's `timeoutMs` when absent.
    pub timeout_ms: Option<u64>,
}

/// One operation: its files, then its post-upload commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOperation {
    /// Paperclip's opaque id, echoed back.
    pub operation_id: String,
    /// Transferred in order.
    pub files: Vec<SyncMapping>,
    /// Run in order after the files.
    pub post_upload_commands: Vec<PostUploadCommand>,
}

/// What one operation moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResult {
    /// The operation's id.
    pub operation_id: String,
    /// Files and links transferred.
    pub files_transferred: u64,
    /// Their content bytes.
    pub bytes_transferred: u64,
}

/// Longest part of a post-upload command or of stderr quoted in an error.
const QUOTE_MAX: usize = 2000;

fn clip(text: &str) -> String {
    let text = text.trim();
    if text.len() <= QUOTE_MAX {
        return text.to_string();
    }
    let mut end = QUOTE_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The VM-side path of a mapping, checked; the host side is the host's to check.
fn remote_path(direction: Direction, m: &SyncMapping) -> Result<String, ProviderError> {
    let path = match direction {
        Direction::In => &m.target_path,
        Direction::Out => &m.source_path,
    };
    check_remote_path(path)
        .map_err(|e| ProviderError::InvalidRequest(format!("{}: {e}", direction.verb())))
}

fn check_host_path(direction: Direction, m: &SyncMapping) -> Result<(), ProviderError> {
    let path = match direction {
        Direction::In => &m.source_path,
        Direction::Out => &m.target_path,
    };
    if path.starts_with('/') && !path.contains('\0') {
        Ok(())
    } else {
        Err(ProviderError::InvalidRequest(format!(
            "{}: the host path {path:?} is not absolute",
            direction.verb()
        )))
    }
}

/// How one attempt at a mapping failed.
enum Attempt {
    /// The connection died mid-stream: try again after reconnecting (the error, should the
    /// deadline pass first).
    Lost(ProviderError),
    /// Anything else: the call fails with it.
    Failed(ProviderError),
}

/// True when the transfer ended because its connection did (no exit status came back).
fn connection_lost(e: &TransferError) -> bool {
    matches!(e, TransferError::Remote(out)
        if out.exit_code == Some(255) && !out.exit_code_from_remote && !out.timed_out)
}

/// A transfer failure, for Paperclip: what failed, where, and what the other side said.
fn transfer_failure(e: TransferError, vm: &str, what: &str) -> ProviderError {
    match e {
        TransferError::Denied(m) => ProviderError::Denied(format!("{what}: {m}")),
        TransferError::NotFound(m) => ProviderError::NotFound(format!("{what}: {m}")),
        TransferError::InvalidRequest(m) => ProviderError::InvalidRequest(format!("{what}: {m}")),
        TransferError::LocalIo(m) => {
            ProviderError::Transfer(format!("{what} failed on the Paperclip host: {m}"))
        }
        TransferError::Timeout(m) => ProviderError::Timeout(format!("{what}: {m}")),
        TransferError::Spawn(m) => {
            ProviderError::Ssh(format!("Failed to {what}: the SSH client failed: {m}"))
        }
        TransferError::Remote(out) => {
            let stderr = decode(out.stderr.clone());
            let said = clip(&stderr);
            let own = said
                .lines()
                .find_map(|l| l.strip_prefix(sync_script::MESSAGE_PREFIX))
                .map(str::to_string);
            match out.exit_code {
                _ if out.timed_out => ProviderError::Timeout(format!("{what} on exe.dev VM {vm}")),
                Some(sync_script::SOURCE_MISSING) => ProviderError::NotFound(format!(
                    "{what}: {}",
                    own.unwrap_or_else(|| said.clone())
                )),
                Some(255) if !out.exit_code_from_remote => ProviderError::Ssh(format!(
                    "Failed to {what}: the SSH connection to exe.dev VM {vm} ended before the \
                     transfer completed; the old target is in place. {said}"
                )),
                code => ProviderError::Transfer(format!(
                    "{what} failed in exe.dev VM {vm} (exit {}); the old target is in place: {said}",
                    code.map_or_else(|| "unknown".to_string(), |c| c.to_string())
                )),
            }
        }
    }
}

impl Provider<'_> {
    /// Run a sync call: every operation's mappings in order (then, for sync-in, its
    /// post-upload commands), within the config's `timeoutMs`.
    pub fn sync(
        &self,
        direction: Direction,
        lease: &Lease,
        operations: &[SyncOperation],
    ) -> Result<Vec<SyncResult>, ProviderError> {
        let Some(id) = lease.provider_lease_id.as_deref().filter(|s| !s.is_empty()) else {
            return Err(ProviderError::InvalidRequest(
                "No provider lease ID available for sync.".into(),
            ));
        };
        // Every path is checked before anything moves, so a bad mapping fails the call whole.
        let mut remote_paths = Vec::new();
        for op in operations {
            for m in &op.files {
                check_host_path(direction, m)?;
                remote_paths.push(remote_path(direction, m)?);
            }
        }
        let deadline = Deadline::after(self.host, self.config.timeout_ms);
        let target = self.target_for_lease(id, &lease.metadata);
        let what = format!("{} with exe.dev VM {id}", direction.verb());
        self.connect_for_sync(id, &target, &deadline, &what)?;

        let mut remote_paths = remote_paths.into_iter();
        let mut results = Vec::with_capacity(operations.len());
        for op in operations {
            let (mut files, mut bytes) = (0u64, 0u64);
            for m in &op.files {
                let remote = remote_paths.next().expect("one checked path per mapping");
                let report = self.transfer_one(direction, id, &target, m, &remote, &deadline)?;
                files += report.files;
                bytes += report.bytes;
            }
            if direction == Direction::In {
                let total = op.post_upload_commands.len();
                for (i, c) in op.post_upload_commands.iter().enumerate() {
                    self.post_upload(lease, id, c, i + 1, total, &deadline)?;
                }
            }
            results.push(SyncResult {
                operation_id: op.operation_id.clone(),
                files_transferred: files,
                bytes_transferred: bytes,
            });
        }
        Ok(results)
    }

    /// The pooled connection first, as for an execute: a failure here is SSH's own.
    fn connect_for_sync(
        &self,
        id: &str,
        target: &SshTarget,
        deadline: &Deadline,
        what: &str,
    ) -> Result<(), ProviderError> {
        let timeout = deadline.remaining(self.host).clamp(1, u64::from(u32::MAX)) as u32;
        match self
            .host
            .ssh_connect(target, timeout)
            .map_err(|e| ssh_error(e, what))?
        {
            Connected::Ready | Connected::Unpooled => Ok(()),
            Connected::Failed(out) if out.timed_out => Err(ProviderError::Timeout(format!(
                "{what}: the SSH connection was not up within the deadline"
            ))),
            Connected::Failed(out) => Err(ProviderError::Ssh(remote::connect_failure(id, &out))),
        }
    }

    /// One mapping, tried again from the start after a connection that died mid-stream (a
    /// target is replaced whole or not at all, so a new attempt is safe), within the deadline.
    fn transfer_one(
        &self,
        direction: Direction,
        id: &str,
        target: &SshTarget,
        m: &SyncMapping,
        remote: &str,
        deadline: &Deadline,
    ) -> Result<TransferReport, ProviderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.transfer_attempt(direction, id, target, m, remote, deadline) {
                Err(Attempt::Lost(why)) => {
                    self.log(
                        LogLevel::Warn,
                        "the SSH connection ended during a sync; reconnecting to try again",
                        &[("vmName", id.to_string()), ("attempt", attempt.to_string())],
                    );
                    self.reconnect_for_sync(target, deadline, why)?;
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(report) => return Ok(report),
            }
        }
    }

    /// Reconnect with backoff after a lost connection; `lost` is the error to give when the
    /// deadline passes first.
    fn reconnect_for_sync(
        &self,
        target: &SshTarget,
        deadline: &Deadline,
        lost: ProviderError,
    ) -> Result<(), ProviderError> {
        let mut tries = 0;
        loop {
            let remaining = deadline.remaining(self.host);
            if remaining == 0 {
                return Err(lost);
            }
            tries += 1;
            let timeout = remaining.min(15_000) as u32;
            match self.host.ssh_connect(target, timeout) {
                Ok(Connected::Ready | Connected::Unpooled) => return Ok(()),
                Ok(Connected::Failed(_)) => {}
                Err(e) => return Err(ssh_error(e, "reconnect for a sync")),
            }
            let pause = crate::time::backoff_ms(100, 2_000, tries);
            self.host.sleep_ms(pause.min(deadline.remaining(self.host)));
        }
    }

    fn transfer_attempt(
        &self,
        direction: Direction,
        id: &str,
        target: &SshTarget,
        m: &SyncMapping,
        remote: &str,
        deadline: &Deadline,
    ) -> Result<TransferReport, Attempt> {
        let what = format!(
            "{} of {} to {}",
            direction.verb(),
            m.source_path,
            m.target_path
        );
        let remaining = deadline.remaining(self.host);
        if remaining == 0 {
            return Err(Attempt::Failed(ProviderError::Timeout(format!(
                "{what}: the call's deadline passed before it started"
            ))));
        }
        let timeout_ms = remaining.min(u64::from(u32::MAX)) as u32;
        let started = self.host.now_ms();
        let tmp = sync_script::temp_path(remote, &format!("{:016x}", self.host.random_u64()));
        let result = match direction {
            Direction::In => self
                .host
                .transfer_upload(&UploadRequest {
                    target: target.clone(),
                    local_path: m.source_path.clone(),
                    kind: m.kind,
                    exclude: m.exclude.clone(),
                    follow_symlinks: m.follow_symlinks,
                    remote_command: remote::sh_c(&sync_script::upload_script(
                        remote, &tmp, m.kind, m.mode,
                    )),
                    timeout_ms,
                })
                .inspect_err(|e| {
                    if matches!(e, TransferError::LocalIo(_)) {
                        // The VM may hold a complete-looking copy the host never finished.
                        let discard = sync_script::discard_script(&tmp);
                        let _ = self.remote_script(target, &discard, deadline);
                    }
                })
                .and_then(|report| {
                    if !report.compressed {
                        self.commit_upload(id, target, remote, &tmp, m, deadline, &what)?;
                    }
                    Ok(report)
                }),
            Direction::Out => self.host.transfer_download(&DownloadRequest {
                target: target.clone(),
                remote_command: remote::sh_c(&sync_script::download_script(
                    remote,
                    m.kind,
                    &m.exclude,
                    m.follow_symlinks,
                )),
                local_path: m.target_path.clone(),
                kind: m.kind,
                mode: m.mode,
                timeout_ms,
            }),
        };
        let report = result.map_err(|e| {
            let lost = connection_lost(&e);
            let err = transfer_failure(e, id, &what);
            if lost {
                // The VM may hold this attempt's temporary: it goes before the next one.
                let _ = self.remote_script(target, &sync_script::discard_script(&tmp), deadline);
                Attempt::Lost(err)
            } else {
                Attempt::Failed(err)
            }
        })?;
        self.log(
            LogLevel::Info,
            "synced",
            &[
                ("vmName", id.to_string()),
                ("direction", direction.verb().to_string()),
                ("files", report.files.to_string()),
                ("bytes", report.bytes.to_string()),
                ("wireBytes", report.wire_bytes.to_string()),
                ("compressed", report.compressed.to_string()),
                (
                    "durationMs",
                    self.host.now_ms().saturating_sub(started).to_string(),
                ),
            ],
        );
        Ok(report)
    }

    /// A small VM-side script over SSH within the call's deadline.
    fn remote_script(
        &self,
        target: &SshTarget,
        script: &str,
        deadline: &Deadline,
    ) -> Result<crate::host::SshOutput, crate::host::SshError> {
        let timeout_ms = deadline.remaining(self.host).clamp(1, u64::from(u32::MAX)) as u32;
        self.host.ssh_exec(&SshRequest {
            target: target.clone(),
            command: remote::sh_c(script),
            stdin: None,
            timeout_ms,
            max_output_bytes: SCRIPT_OUTPUT_CAP,
            stream_output: false,
            durable: false,
        })
    }

    /// An uncompressed upload arrived whole (the host sent all of it and the VM unpacked it):
    /// put it in place. Until now only the temporary copy beside the target existed.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    fn commit_upload(
        &self,
        id: &str,
        target: &SshTarget,
        remote: &str,
        tmp: &str,
        m: &SyncMapping,
        deadline: &Deadline,
        what: &str,
    ) -> Result<(), TransferError> {
        let script = sync_script::commit_script(remote, tmp, m.kind, m.mode);
        match self.remote_script(target, &script, deadline) {
            Ok(out) if out.exit_code == Some(0) => Ok(()),
            Ok(out) => Err(TransferError::Remote(out)),
            Err(e) => {
                self.log(
                    LogLevel::Warn,
                    "could not commit an upload",
                    &[("vmName", id.to_string()), ("what", what.to_string())],
                );
                Err(TransferError::Spawn(e.to_string()))
            }
        }
    }

    /// One post-upload command through the execute path (same wrapper, cwd default and
    /// marker), without live output: its stderr goes into the error when it fails.
    fn post_upload(
        &self,
        lease: &Lease,
        id: &str,
        c: &PostUploadCommand,
        index: usize,
        total: usize,
        deadline: &Deadline,
    ) -> Result<(), ProviderError> {
        let what = format!(
            "Post-upload command {index} of {total} (`{}`) in exe.dev VM {id}",
            clip(&c.command)
        );
        let remaining = deadline.remaining(self.host);
        if remaining == 0 {
            return Err(ProviderError::Timeout(format!(
                "{what} did not start: the sync call's deadline passed"
            )));
        }
        let timeout_ms = c
            .timeout_ms
            .unwrap_or(self.config.timeout_ms)
            .min(remaining);
        let r = self.run_command(
            ExecuteRequest {
                lease: lease.clone(),
                command: "sh".into(),
                args: vec!["-c".into(), c.command.clone()],
                cwd: c.cwd.clone(),
                env: Vec::new(),
                stdin: None,
                timeout_ms: Some(timeout_ms),
            },
            false,
        )?;
        if r.timed_out {
            return Err(ProviderError::Timeout(format!(
                "{what} timed out after {timeout_ms} ms"
            )));
        }
        match r.exit_code {
            Some(0) => Ok(()),
            code => Err(ProviderError::Transfer(format!(
                "{what} exited with code {}: {}",
                code.map_or_else(|| "unknown".to_string(), |c| c.to_string()),
                if r.stderr.trim().is_empty() {
                    "(no stderr)".to_string()
                } else {
                    clip(&r.stderr)
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
