//! The host's one module of WIT conversions: Paperclip's JSON params and results to and from the
//! provider's WIT records (here), the capabilities' records to and from the shared boundary
//! types (`caps`), and the WIT provider error to the shared one. Shape only: defaults, renames,
//! and malformed params as a typed [`ParamsError`]; what to answer Paperclip (codes) is the
//! worker's.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bindings::provider as wit;
use paperclip_provider_types::{ApiError, ProviderError, TimerInputs};

mod caps;

/// Params that do not have the shape a method needs (Paperclip gets `-32602`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamsError(pub String);

impl ParamsError {
    fn new(detail: impl std::fmt::Display) -> Self {
        ParamsError(detail.to_string())
    }
}

fn parse<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, ParamsError> {
    T::deserialize(params).map_err(ParamsError::new)
}

fn object_text(v: Option<&Value>) -> String {
    match v {
        Some(v @ Value::Object(_)) => v.to_string(),
        _ => "{}".to_string(),
    }
}

fn optional_object_text(v: &Option<Value>) -> Option<String> {
    match v {
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        _ => None,
    }
}

fn parse_object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// What Paperclip's timer for a call reads from its params: the config's `timeoutMs` and
/// `bridgeRequestTimeoutMs` and the request's own `timeoutMs`, each when it is a positive number
/// (Paperclip reads numbers; a string there is as good as absent to it).
pub fn timer_inputs(params: &Value) -> TimerInputs {
    let positive = |v: Option<&Value>| {
        v.and_then(Value::as_f64)
            .filter(|n| n.is_finite() && *n >= 1.0)
            .map(|n| n.min(u64::MAX as f64) as u64)
    };
    let config = params.get("config");
    TimerInputs {
        config_timeout_ms: positive(config.and_then(|c| c.get("timeoutMs"))),
        config_bridge_request_timeout_ms: positive(
            config.and_then(|c| c.get("bridgeRequestTimeoutMs")),
        ),
        request_timeout_ms: positive(params.get("timeoutMs")),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BaseParams {
    #[serde(default)]
    config: Option<Value>,
    #[serde(default)]
    environment_id: Option<String>,
    #[serde(default)]
    company_id: Option<String>,
}

/// The `config` of validate params, as JSON text (whatever it is: the guest validates shape).
pub fn validate_params(params: &Value) -> String {
    params
        .get("config")
        .cloned()
        .unwrap_or(Value::Null)
        .to_string()
}

/// The call context every runtime call carries, with the call's `deadline` (Paperclip's timer
/// for it, from [`timer_inputs`]).
pub fn call_context(params: &Value, deadline: Duration) -> Result<wit::CallContext, ParamsError> {
    let base: BaseParams = parse(params)?;
    Ok(wit::CallContext {
        config: object_text(base.config.as_ref()),
        environment_id: base.environment_id.unwrap_or_default(),
        company_id: base.company_id,
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
    })
}

/// `environmentAcquireLease` params.
pub fn acquire_params(
    params: &Value,
    deadline: Duration,
) -> Result<wit::AcquireRequest, ParamsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        run_id: Option<String>,
        requested_cwd: Option<String>,
        workspace_mode: Option<String>,
        requested_expires_at: Option<String>,
    }
    let p: P = parse(params)?;
    Ok(wit::AcquireRequest {
        context: call_context(params, deadline)?,
        run_id: p.run_id.unwrap_or_default(),
        requested_cwd: p.requested_cwd,
        workspace_mode: p.workspace_mode,
        requested_expires_at: p.requested_expires_at,
    })
}

/// `environmentResumeLease` params.
pub fn resume_params(
    params: &Value,
    deadline: Duration,
) -> Result<wit::ResumeRequest, ParamsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        provider_lease_id: String,
        lease_metadata: Option<Value>,
    }
    let p: P = parse(params)?;
    Ok(wit::ResumeRequest {
        context: call_context(params, deadline)?,
        provider_lease_id: p.provider_lease_id,
        lease_metadata: optional_object_text(&p.lease_metadata),
    })
}

/// `environmentReleaseLease` / `environmentDestroyLease` params.
pub fn release_params(
    params: &Value,
    deadline: Duration,
) -> Result<wit::ReleaseRequest, ParamsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        provider_lease_id: Option<String>,
        lease_metadata: Option<Value>,
        #[serde(default)]
        cancel_active_work: Option<bool>,
    }
    let p: P = parse(params)?;
    Ok(wit::ReleaseRequest {
        context: call_context(params, deadline)?,
        provider_lease_id: p.provider_lease_id,
        lease_metadata: optional_object_text(&p.lease_metadata),
        cancel_active_work: p.cancel_active_work.unwrap_or(false),
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LeaseJson {
    provider_lease_id: Option<String>,
    metadata: Option<Value>,
    expires_at: Option<String>,
}

fn lease_record(lease: Option<LeaseJson>) -> wit::Lease {
    let lease = lease.unwrap_or_default();
    wit::Lease {
        provider_lease_id: lease.provider_lease_id,
        metadata: object_text(lease.metadata.as_ref()),
        expires_at: lease.expires_at,
    }
}

/// `environmentRealizeWorkspace` params.
pub fn realize_params(
    params: &Value,
    deadline: Duration,
) -> Result<wit::RealizeRequest, ParamsError> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Ws {
        local_path: Option<String>,
        remote_path: Option<String>,
        mode: Option<String>,
    }
    #[derive(Deserialize)]
    struct P {
        lease: Option<LeaseJson>,
        workspace: Option<Ws>,
    }
    let p: P = parse(params)?;
    let ws = p.workspace.unwrap_or_default();
    Ok(wit::RealizeRequest {
        context: call_context(params, deadline)?,
        lease: lease_record(p.lease),
        workspace: wit::Workspace {
            local_path: ws.local_path,
            remote_path: ws.remote_path,
            mode: ws.mode,
        },
    })
}

/// `environmentExecute` params. `env` must map strings to strings; `stdin` is passed as its
/// exact UTF-8 bytes.
pub fn execute_params(
    params: &Value,
    deadline: Duration,
) -> Result<wit::ExecuteRequest, ParamsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        lease: Option<LeaseJson>,
        command: String,
        #[serde(default)]
        args: Option<Vec<String>>,
        cwd: Option<String>,
        #[serde(default)]
        env: Option<Map<String, Value>>,
        stdin: Option<String>,
        timeout_ms: Option<u64>,
    }
    let p: P = parse(params)?;
    let env = p
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(ParamsError::new(format!(
                "env value for {k} must be a string"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(wit::ExecuteRequest {
        context: call_context(params, deadline)?,
        lease: lease_record(p.lease),
        command: p.command,
        args: p.args.unwrap_or_default(),
        cwd: p.cwd,
        env,
        stdin: p.stdin.map(String::into_bytes),
        timeout_ms: p.timeout_ms,
    })
}

/// `environmentSyncIn` / `environmentSyncOut` params: `{lease, operations: [{operationId,
/// files: [{sourcePath, targetPath, kind, mode?, exclude?, followSymlinks?, …}],
/// postUploadCommands?: [{command, cwd?, timeoutMs?}]}]}`. `access` and `writablePath` are
/// advisory in Paperclip and ignored.
pub fn sync_params(params: &Value, deadline: Duration) -> Result<wit::SyncRequest, ParamsError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Mapping {
        source_path: String,
        target_path: String,
        kind: String,
        mode: Option<u32>,
        #[serde(default)]
        exclude: Option<Vec<String>>,
        #[serde(default)]
        follow_symlinks: Option<bool>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Command {
        command: String,
        cwd: Option<String>,
        timeout_ms: Option<u64>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Operation {
        operation_id: String,
        #[serde(default)]
        files: Vec<Mapping>,
        #[serde(default)]
        post_upload_commands: Option<Vec<Command>>,
    }
    #[derive(Deserialize)]
    struct P {
        lease: Option<LeaseJson>,
        operations: Vec<Operation>,
    }
    let p: P = parse(params)?;
    let operations = p
        .operations
        .into_iter()
        .map(|op| {
            let files = op
                .files
                .into_iter()
                .map(|m| {
                    let kind = match m.kind.as_str() {
                        "file" => wit::SyncKind::File,
                        "directory" => wit::SyncKind::Directory,
                        other => {
                            return Err(ParamsError::new(format!(
                                "kind must be \"file\" or \"directory\", not {other:?}"
                            )))
                        }
                    };
                    Ok(wit::SyncMapping {
                        source_path: m.source_path,
                        target_path: m.target_path,
                        kind,
                        mode: m.mode.map(|bits| bits & 0o7777),
                        exclude: m.exclude.unwrap_or_default(),
                        follow_symlinks: m.follow_symlinks.unwrap_or(false),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(wit::SyncOperation {
                operation_id: op.operation_id,
                files,
                post_upload_commands: op
                    .post_upload_commands
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| wit::PostUploadCommand {
                        command: c.command,
                        cwd: c.cwd,
                        timeout_ms: c.timeout_ms,
                    })
                    .collect(),
            })
        })
        .collect::<Result<Vec<_>, ParamsError>>()?;
    Ok(wit::SyncRequest {
        context: call_context(params, deadline)?,
        lease: lease_record(p.lease),
        operations,
    })
}

/// A `plan-session` request: the call context and lease the worker remembered for the lease
/// (`{config, environmentId, companyId, lease: {providerLeaseId, metadata}}`), and what the
/// session is for.
pub fn session_params(
    params: &Value,
    deadline: Duration,
    purpose: &paperclip_provider_types::Purpose,
) -> Result<wit::SessionRequest, ParamsError> {
    #[derive(Deserialize)]
    struct P {
        lease: Option<LeaseJson>,
    }
    let p: P = parse(params)?;
    Ok(wit::SessionRequest {
        context: call_context(params, deadline)?,
        lease: lease_record(p.lease),
        purpose: purpose.into(),
    })
}

/// Sync results → `{operations: [{operationId, filesTransferred, bytesTransferred}]}`.
pub fn sync_json(results: Vec<wit::SyncResult>) -> Value {
    json!({
        "operations": results
            .into_iter()
            .map(|r| json!({
                "operationId": r.operation_id,
                "filesTransferred": r.files_transferred,
                "bytesTransferred": r.bytes_transferred,
            }))
            .collect::<Vec<_>>()
    })
}

/// `validate-config` result → `{ok, warnings, errors, normalizedConfig?}`.
pub fn validation_json(v: wit::Validation) -> Value {
    let mut out = json!({ "ok": v.ok, "warnings": v.warnings, "errors": v.errors });
    if let Some(text) = v.normalized_config {
        if let Ok(cfg) = serde_json::from_str::<Value>(&text) {
            out["normalizedConfig"] = cfg;
        }
    }
    out
}

/// `health` result.
pub fn health_json(h: wit::HealthReport) -> Value {
    let status = match h.status {
        wit::HealthStatus::Ok => "ok",
        wit::HealthStatus::Degraded => "degraded",
        wit::HealthStatus::Error => "error",
    };
    let mut out = json!({ "status": status });
    if let Some(m) = h.message {
        out["message"] = Value::String(m);
    }
    out
}

/// `probe` result.
pub fn probe_json(p: wit::ProbeResult) -> Value {
    let diagnostics: Vec<Value> = p
        .diagnostics
        .into_iter()
        .map(|d| {
            let severity = match d.severity {
                wit::Severity::Info => "info",
                wit::Severity::Warning => "warning",
                wit::Severity::Error => "error",
            };
            let mut v = json!({ "severity": severity, "message": d.message });
            if let Some(code) = d.code {
                v["code"] = Value::String(code);
            }
            if let Some(details) = d.details {
                v["details"] = parse_object(&details);
            }
            v
        })
        .collect();
    json!({
        "ok": p.ok,
        "summary": p.summary,
        "diagnostics": diagnostics,
        "metadata": parse_object(&p.metadata),
    })
}

/// A lease → `{providerLeaseId, metadata, expiresAt}`.
pub fn lease_json(l: wit::Lease) -> Value {
    json!({
        "providerLeaseId": l.provider_lease_id,
        "metadata": parse_object(&l.metadata),
        "expiresAt": l.expires_at,
    })
}

/// A release/destroy outcome → receipt or `null`.
pub fn receipt_json(r: Option<wit::TerminationReceipt>) -> Value {
    match r {
        None => Value::Null,
        Some(r) => json!({
            "providerLeaseId": r.provider_lease_id,
            "state": match r.state {
                wit::LeaseState::Stopped => "stopped",
                wit::LeaseState::Destroyed => "destroyed",
            },
        }),
    }
}

/// `realize-workspace` result.
pub fn realized_json(r: wit::RealizedWorkspace) -> Value {
    json!({ "cwd": r.cwd, "metadata": parse_object(&r.metadata) })
}

/// `execute` result.
pub fn execute_json(r: wit::ExecuteResult) -> Value {
    json!({
        "exitCode": r.exit_code,
        "signal": r.signal,
        "timedOut": r.timed_out,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "metadata": parse_object(&r.metadata),
    })
}

impl From<crate::bindings::types::ProviderError> for ProviderError {
    fn from(e: crate::bindings::types::ProviderError) -> Self {
        use crate::bindings::types::ProviderError as W;
        match e {
            W::InvalidConfig(m) => ProviderError::InvalidConfig(m),
            W::Api(a) => ProviderError::Api(ApiError {
                status: a.status,
                command: a.command,
                message: a.message,
                hint: a.hint,
                // Not part of the WIT record: the guest's own scheduling input.
                retry_after_ms: None,
            }),
            W::Ssh(m) => ProviderError::Ssh(m),
            W::NotFound(m) => ProviderError::NotFound(m),
            W::Denied(m) => ProviderError::Denied(m),
            W::Timeout(m) => ProviderError::Timeout(m),
            W::Transfer(m) => ProviderError::Transfer(m),
            W::InvalidRequest(m) => ProviderError::InvalidRequest(m),
            W::NotImplemented(m) => ProviderError::NotImplemented(m),
            W::Internal(m) => ProviderError::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(30);

    #[test]
    fn execute_params_keep_stdin_bytes_and_env_order() {
        let p = json!({
            "lease": {"providerLeaseId": "vm", "metadata": {"remoteCwd": "/w"}},
            "command": "sh", "args": ["-c", "cat"], "env": {"B": "2", "A": "1"},
            "stdin": "héllo\n", "timeoutMs": 5
        });
        let r = execute_params(&p, D).unwrap();
        assert_eq!(r.stdin.as_deref(), Some("héllo\n".as_bytes()));
        assert_eq!(r.args, vec!["-c", "cat"]);
        assert_eq!(r.lease.provider_lease_id.as_deref(), Some("vm"));
        assert_eq!(r.timeout_ms, Some(5));
        assert_eq!(r.env.len(), 2);
        assert_eq!(r.context.deadline_ms, 30_000);
    }

    #[test]
    fn non_string_env_values_are_invalid_params() {
        let p = json!({"command": "true", "env": {"A": 1}});
        assert_eq!(
            execute_params(&p, D).unwrap_err(),
            ParamsError("env value for A must be a string".into())
        );
    }

    #[test]
    fn missing_command_is_invalid_params() {
        let err = execute_params(&json!({}), D).unwrap_err();
        assert!(err.0.contains("command"), "{err}");
    }

    #[test]
    fn the_timer_reads_positive_numbers_as_paperclip_does() {
        let t = timer_inputs(&json!({
            "timeoutMs": 7.9,
            "config": {"timeoutMs": 600000, "bridgeRequestTimeoutMs": "9"}
        }));
        assert_eq!(
            t,
            TimerInputs {
                config_timeout_ms: Some(600_000),
                config_bridge_request_timeout_ms: None,
                request_timeout_ms: Some(7),
            }
        );
        for bad in [
            json!(0),
            json!(-5),
            json!("600000"),
            json!(null),
            json!(0.5),
        ] {
            let t = timer_inputs(&json!({"config": {"timeoutMs": bad}, "timeoutMs": bad}));
            assert_eq!(t, TimerInputs::default(), "{bad}");
        }
        assert_eq!(
            timer_inputs(&json!({"config": "x"})),
            TimerInputs::default()
        );
    }
}
