//! Release and destroy, and the VM delete that every cleanup shares.

use super::{
    decode, vm_is_gone, LeaseState, Provider, Receipt, KILL_TIMEOUT_MS, SCRIPT_OUTPUT_CAP,
};
use crate::api;
use crate::error::ProviderError;
use crate::host::{LogLevel, SshRequest, SshTarget};
use crate::remote;
use crate::time::Deadline;
use serde_json::{Map, Value};

impl Provider<'_> {
    /// `rm --json '<name>'`; a VM that is already gone counts as deleted. Returns whether it
    /// was still there. Disconnects pooled SSH connections to `target` afterwards.
    pub fn delete_vm(
        &self,
        name: &str,
        target: Option<&SshTarget>,
        deadline: Deadline,
    ) -> Result<bool, ProviderError> {
        let api = self.api()?;
        let result = match api.run(&api::rm_command(name), deadline) {
            Ok(_) => Ok(true),
            Err(ProviderError::Api(e)) if vm_is_gone(&e) => {
                self.log(
                    LogLevel::Info,
                    "exe.dev VM was already gone",
                    &[("vmName", name.to_string())],
                );
                Ok(false)
            }
            Err(e) => Err(e),
        };
        if result.is_ok() {
            if let Some(t) = target {
                self.host.ssh_disconnect(t);
            }
        }
        result
    }

    /// Stop every marked execution on a retained VM (release with `cancelActiveWork`).
    fn stop_active_work(
        &self,
        lease_id: &str,
        meta: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let target = self.target_for_lease(lease_id, meta);
        let out = self.ssh(
            &SshRequest {
                target,
                command: remote::sh_c(&remote::kill_script(None)),
                stdin: None,
                timeout_ms: KILL_TIMEOUT_MS,
                max_output_bytes: SCRIPT_OUTPUT_CAP,
                stream_output: false,
                durable: false,
            },
            &format!("stop work on exe.dev VM {lease_id}"),
        )?;
        if out.exit_code == Some(0) {
            Ok(())
        } else {
            let text = decode(out.stderr);
            Err(ProviderError::Ssh(format!(
                "Failed to stop work on exe.dev VM {lease_id}: {}",
                if out.timed_out {
                    "timed out"
                } else {
                    text.trim()
                }
            )))
        }
    }

    /// Release: `reuseLease` keeps the VM (stopping marked work when `cancel_active_work`);
    /// otherwise `rm`.
    pub fn release(
        &self,
        lease_id: Option<&str>,
        meta: &Map<String, Value>,
        cancel_active_work: bool,
    ) -> Result<Option<Receipt>, ProviderError> {
        let Some(id) = lease_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        self.sweep_orphans(Some(id));
        if self.config.reuse_lease {
            if cancel_active_work {
                self.stop_active_work(id, meta)?;
                return Ok(Some(Receipt {
                    provider_lease_id: id.to_string(),
                    state: LeaseState::Stopped,
                }));
            }
            return Ok(None);
        }
        self.destroy(Some(id), meta)
    }

    /// Destroy: always `rm` (already gone is fine). Deletes exactly that VM: no sweep of the
    /// ledger, so the operator's `orphans --delete` deletes only what it names.
    pub fn destroy(
        &self,
        lease_id: Option<&str>,
        meta: &Map<String, Value>,
    ) -> Result<Option<Receipt>, ProviderError> {
        let Some(id) = lease_id.filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let target = self.target_for_lease(id, meta);
        let deleted = self.delete_vm(id, Some(&target), self.deadline());
        // A delete that failed is recorded, so a later call retries it.
        self.settle_delete(id, &deleted, false);
        deleted?;
        Ok(Some(Receipt {
            provider_lease_id: id.to_string(),
            state: LeaseState::Destroyed,
        }))
    }
}
