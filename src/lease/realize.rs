//! Realize-workspace: the lease's working directory, created over SSH only when the lease does
//! not name one already (acquire and resume create theirs).

use super::{
    decode, Lease, LeaseMetadata, Provider, Realized, Workspace, PROVIDER, SCRIPT_OUTPUT_CAP,
};
use crate::error::ProviderError;
use crate::host::SshRequest;
use crate::remote::{self, SshFailure};
use serde_json::{json, Map};

/// Fallback workspace when neither lease nor workspace names one.
pub const DEFAULT_REALIZE_CWD: &str = "/tmp/paperclip-workspace";

impl Provider<'_> {
    /// Realize: cwd = lease `remoteCwd` ?? `remotePath` ?? `localPath` ??
    /// `/tmp/paperclip-workspace`. SSH `mkdir -p` only when the lease did not create it already.
    pub fn realize(&self, lease: &Lease, workspace: &Workspace) -> Result<Realized, ProviderError> {
        let meta = LeaseMetadata::from_map(&lease.metadata);
        let lease_cwd = meta.remote_cwd.as_deref();
        let nonblank = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let cwd = lease_cwd
            .map(str::to_string)
            .or_else(|| nonblank(&workspace.remote_path))
            .or_else(|| nonblank(&workspace.local_path))
            .unwrap_or_else(|| DEFAULT_REALIZE_CWD.to_string());
        let id = lease.provider_lease_id.as_deref().filter(|s| !s.is_empty());
        // When the lease names the cwd, acquire/resume created it in their SSH round trip.
        if let (Some(id), None) = (id, lease_cwd) {
            let target = self.target_for_metadata(id, &meta);
            let out = self.ssh(
                &SshRequest {
                    target,
                    command: remote::mkdir_command(&cwd),
                    stdin: None,
                    timeout_ms: self.config.timeout_ms.min(u32::MAX as u64) as u32,
                    max_output_bytes: SCRIPT_OUTPUT_CAP,
                    stream_output: false,
                    durable: false,
                },
                &format!("create workspace for exe.dev VM {id}"),
            )?;
            if out.exit_code != Some(0) || out.timed_out {
                let msg = match remote::classify_failure("create workspace for", id, &out) {
                    Some(SshFailure::Fatal(m)) | Some(SshFailure::NotReady(m)) => m,
                    None => format!(
                        "Failed to create workspace for exe.dev VM {id}: {}",
                        decode(out.stderr).trim()
                    ),
                };
                return Err(ProviderError::Ssh(msg));
            }
        }
        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        metadata.insert("remoteCwd".into(), json!(cwd));
        Ok(Realized { cwd, metadata })
    }
}
