//! Execute: one command in the lease's VM over its pooled SSH connection, with output streamed
//! live; a command that times out has its remote processes terminated by their marker.

use super::{
    decode, ssh_error, ExecuteRequest, ExecuteResult, LeaseMetadata, Provider, KILL_TIMEOUT_MS,
    PROVIDER, SCRIPT_OUTPUT_CAP,
};
use crate::error::ProviderError;
use crate::host::{Connected, LogLevel, SshRequest, SshTarget};
use crate::remote;
use crate::time::Deadline;
use serde_json::{json, Map};

impl Provider<'_> {
    /// Execute one command in the lease's VM.
    pub fn execute(&self, req: ExecuteRequest) -> Result<ExecuteResult, ProviderError> {
        self.run_command(req, true)
    }

    /// An execute; `stream_output` forwards output live (Paperclip's `execute.log`), which only
    /// `environmentExecute` itself asks for.
    pub(super) fn run_command(
        &self,
        req: ExecuteRequest,
        stream_output: bool,
    ) -> Result<ExecuteResult, ProviderError> {
        let Some(id) = req
            .lease
            .provider_lease_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
        else {
            let mut metadata = Map::new();
            metadata.insert("provider".into(), json!(PROVIDER));
            return Ok(ExecuteResult {
                exit_code: Some(1),
                signal: None,
                timed_out: false,
                stdout: String::new(),
                stderr: "No provider lease ID available for execution.".to_string(),
                metadata,
            });
        };
        for (k, _) in &req.env {
            if !crate::config::is_valid_env_key(k) {
                return Err(ProviderError::InvalidRequest(format!(
                    "Invalid exe.dev environment variable key: {k}"
                )));
            }
        }
        let meta = LeaseMetadata::from_map(&req.lease.metadata);
        let target = self.target_for_metadata(&id, &meta);
        let ssh_dest = meta
            .ssh_dest
            .clone()
            .unwrap_or_else(|| format!("{id}.exe.xyz"));
        let cwd = req
            .cwd
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(meta.remote_cwd.as_deref());
        let exec_id = format!("{:016x}", self.host.random_u64());
        let script = remote::durable_exec_script(&exec_id, cwd, &req.env, &req.command, &req.args);
        let timeout_ms = crate::config::execute_timeout_ms(req.timeout_ms, self.config.timeout_ms);
        self.log(
            LogLevel::Info,
            "executing on exe.dev VM",
            &[
                ("vmName", id.clone()),
                ("command", req.command.clone()),
                ("execId", exec_id.clone()),
                ("timeoutMs", timeout_ms.to_string()),
                (
                    "stdinBytes",
                    req.stdin.as_ref().map_or(0, Vec::len).to_string(),
                ),
            ],
        );
        let what = format!("execute commands on exe.dev VM {id}");
        // The connection first, with none of the caller's commands: a failure here is SSH's own,
        // and once the pooled connection is up, the command's exit status (even 255) is known
        // to be the command's.
        let deadline = Deadline::after(self.host, u64::from(timeout_ms));
        let out = match self
            .host
            .ssh_connect(&target, timeout_ms)
            .map_err(|e| ssh_error(e, &what))?
        {
            // Nothing ran; a connection that timed out is reported like a timed-out command.
            Connected::Failed(out) if out.timed_out => out,
            Connected::Failed(out) => {
                return Err(ProviderError::Ssh(remote::connect_failure(&id, &out)));
            }
            connected @ (Connected::Ready | Connected::Unpooled) => {
                let remaining = deadline.remaining(self.host).clamp(1, u64::from(u32::MAX));
                let out = self.ssh(
                    &SshRequest {
                        target: target.clone(),
                        // A durable command is a script for `sh -c` (the host adds the `sh -c`
                        // where it runs the command directly).
                        command: script,
                        stdin: req.stdin,
                        timeout_ms: remaining as u32,
                        max_output_bytes: remote::MAX_OUTPUT_BYTES,
                        stream_output,
                        // The command outlives a dropped or silent connection (see the host).
                        durable: true,
                    },
                    &what,
                )?;
                if let Some(message) = remote::execute_never_ran(&id, &out) {
                    return Err(ProviderError::Ssh(message));
                }
                if connected == Connected::Ready {
                    if let Some(message) = remote::status_lost(&id, &out) {
                        return Err(ProviderError::Ssh(message));
                    }
                }
                if out.timed_out {
                    self.kill_remote(&id, &target, &exec_id);
                }
                out
            }
        };
        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        metadata.insert("vmName".into(), json!(id));
        metadata.insert("sshDest".into(), json!(ssh_dest));
        metadata.insert("stdoutTruncated".into(), json!(out.stdout_truncated));
        metadata.insert("stderrTruncated".into(), json!(out.stderr_truncated));
        Ok(ExecuteResult {
            exit_code: if out.timed_out { None } else { out.exit_code },
            // A timed-out command is ended by its marker (TERM, then KILL); which of the two
            // ended it is not observed, and a local client's death signal would say nothing.
            signal: if out.timed_out { None } else { out.signal },
            timed_out: out.timed_out,
            stdout: decode(out.stdout),
            stderr: decode(out.stderr),
            metadata,
        })
    }

    /// After a timed-out execute: terminate the remote process tree by its marker.
    fn kill_remote(&self, vm_name: &str, target: &SshTarget, exec_id: &str) {
        self.log(
            LogLevel::Warn,
            "execute timed out; terminating the remote processes",
            &[
                ("vmName", vm_name.to_string()),
                ("execId", exec_id.to_string()),
            ],
        );
        let result = self.host.ssh_exec(&SshRequest {
            target: target.clone(),
            command: remote::sh_c(&remote::kill_script(Some(exec_id))),
            stdin: None,
            timeout_ms: KILL_TIMEOUT_MS,
            max_output_bytes: SCRIPT_OUTPUT_CAP,
            stream_output: false,
            durable: false,
        });
        match result {
            Ok(o) if o.exit_code == Some(0) => {}
            Ok(o) => self.log(
                LogLevel::Warn,
                "could not confirm that the timed-out remote command was terminated",
                &[
                    ("vmName", vm_name.to_string()),
                    ("exitCode", format!("{:?}", o.exit_code)),
                    ("timedOut", o.timed_out.to_string()),
                ],
            ),
            Err(e) => self.log(
                LogLevel::Warn,
                "could not run the kill script for the timed-out command",
                &[("vmName", vm_name.to_string()), ("error", e.to_string())],
            ),
        }
    }
}
