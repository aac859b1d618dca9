//! Probe: create a throwaway VM, one SSH round trip, always delete it; each step is a
//! diagnostic.

use super::{
    orphans::create_outcome_unknown, CallContext, Diagnostic, ProbeResult, Provider, Severity,
    PROVIDER,
};
use crate::error::ProviderError;
use crate::host::{Host, SshTarget};
use crate::remote;
use crate::vm::{self, VmRecord};
use serde_json::{json, Map, Value};

impl Provider<'_> {
    /// Probe: create a throwaway VM, one SSH round trip, always delete it.
    pub fn probe(&self) -> ProbeResult {
        let name = vm::probe_vm_name(&self.config.name_prefix, self.host.random_u64());
        let deadline = self.deadline();
        let mut diagnostics = Vec::new();
        let step = |severity, code: &str, message: String, details: Value| Diagnostic {
            severity,
            message,
            code: Some(code.to_string()),
            details: Some(details),
        };

        self.sweep_orphans(None);
        let started = self.host.now_ms();
        let mut probe_target: Option<SshTarget> = None;
        let mut no_api = false;
        let created = self.create_vm(&name, deadline);
        let create_uncertain = matches!(&created, Err(e) if create_outcome_unknown(e));
        let create_ms = self.host.now_ms().saturating_sub(started);
        let outcome: Result<(VmRecord, SshTarget, remote::Prepared), ProviderError> = match created
        {
            Err(e) => {
                no_api = matches!(
                    e,
                    ProviderError::InvalidConfig(_) | ProviderError::Denied(_)
                );
                diagnostics.push(step(
                    Severity::Error,
                    "create-vm",
                    format!("Could not create exe.dev VM {name}: {e}"),
                    json!({"durationMs": create_ms}),
                ));
                Err(e)
            }
            Ok(vm) => {
                diagnostics.push(step(
                    Severity::Info,
                    "create-vm",
                    format!("Created exe.dev VM {}.", vm.name),
                    json!({"durationMs": create_ms}),
                ));
                let target = self.target_for_vm(&vm);
                let started = self.host.now_ms();
                match self.prepare(&vm.name, &target, None, deadline) {
                    Ok(ok) => {
                        let total = self.host.now_ms().saturating_sub(started);
                        diagnostics.push(step(
                            Severity::Info,
                            "ssh-ready",
                            format!("SSH to {} is ready.", target.destination()),
                            json!({"durationMs": total, "attempts": ok.attempts}),
                        ));
                        let p = &ok.prepared;
                        diagnostics.push(step(
                            Severity::Info,
                            "inspect",
                            format!("Home {}, shell {}, workspace {}.", p.home, p.shell, p.cwd),
                            json!({"durationMs": ok.last_attempt_ms}),
                        ));
                        Ok((vm, target, ok.prepared))
                    }
                    Err(f) => {
                        let total = self.host.now_ms().saturating_sub(started);
                        if f.connected {
                            diagnostics.push(step(
                                Severity::Info,
                                "ssh-ready",
                                format!("SSH to {} is ready.", target.destination()),
                                json!({"durationMs": total, "attempts": f.attempts}),
                            ));
                            diagnostics.push(step(
                                Severity::Error,
                                "inspect",
                                f.error.to_string(),
                                json!({"durationMs": total}),
                            ));
                        } else {
                            diagnostics.push(step(
                                Severity::Error,
                                "ssh-ready",
                                f.error.to_string(),
                                json!({"durationMs": total, "attempts": f.attempts}),
                            ));
                        }
                        probe_target = Some(target);
                        Err(f.error)
                    }
                }
            }
        };

        // Always delete, whatever happened (the create may have half-succeeded), unless there
        // is no way to call the API at all.
        let started = self.host.now_ms();
        if let Ok((_, t, _)) = &outcome {
            probe_target = Some(t.clone());
        }
        let deleted = (!no_api)
            .then(|| self.delete_vm(&name, probe_target.as_ref(), self.cleanup_deadline()));
        if let Some(d) = &deleted {
            // After an uncertain create the VM may still appear: its ledger entry stays.
            self.settle_delete(&name, d, create_uncertain);
        }
        let delete_ms = self.host.now_ms().saturating_sub(started);
        diagnostics.extend(deleted.map(|deleted| match &deleted {
            Ok(true) => step(
                Severity::Info,
                "delete-vm",
                format!("Deleted exe.dev VM {name}."),
                json!({"durationMs": delete_ms}),
            ),
            Ok(false) => step(
                Severity::Info,
                "delete-vm",
                format!("exe.dev VM {name} was already gone."),
                json!({"durationMs": delete_ms}),
            ),
            Err(e) => step(
                Severity::Warning,
                "delete-vm",
                format!("Could not delete exe.dev VM {name}: {e}"),
                json!({"durationMs": delete_ms}),
            ),
        }));

        let mut metadata = Map::new();
        metadata.insert("provider".into(), json!(PROVIDER));
        match outcome {
            Ok((vm, _, prepared)) => {
                metadata.insert("vmName".into(), json!(vm.name));
                metadata.insert("sshDest".into(), json!(vm.dest()));
                metadata.insert("timeoutMs".into(), json!(self.configured_timeout_ms));
                metadata.insert("reuseLease".into(), json!(self.config.reuse_lease));
                metadata.insert("remoteCwd".into(), json!(prepared.cwd));
                metadata.insert("shellCommand".into(), json!(prepared.shell));
                ProbeResult {
                    ok: true,
                    summary: format!("Connected to exe.dev VM {}.", vm.name),
                    diagnostics,
                    metadata,
                }
            }
            Err(e) => {
                metadata.insert("timeoutMs".into(), json!(self.configured_timeout_ms));
                metadata.insert("reuseLease".into(), json!(self.config.reuse_lease));
                metadata.insert("error".into(), json!(e.to_string()));
                ProbeResult {
                    ok: false,
                    summary: "exe.dev environment probe failed.".to_string(),
                    diagnostics,
                    metadata,
                }
            }
        }
    }
}

/// `probe` for a call context: a config error is a failed probe, not an error.
pub fn run_probe(host: &dyn Host, ctx: &CallContext) -> ProbeResult {
    match Provider::new(host, ctx) {
        Ok(p) => p.probe(),
        Err(e) => {
            let mut metadata = Map::new();
            metadata.insert("provider".into(), json!(PROVIDER));
            metadata.insert("error".into(), json!(e.to_string()));
            ProbeResult {
                ok: false,
                summary: "exe.dev environment probe failed.".to_string(),
                diagnostics: vec![Diagnostic {
                    severity: Severity::Error,
                    message: e.to_string(),
                    code: Some("config".to_string()),
                    details: None,
                }],
                metadata,
            }
        }
    }
}
