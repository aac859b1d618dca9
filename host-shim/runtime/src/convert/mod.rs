//! Conversions between Paperclip's JSON params/results and the WIT records. No logic beyond
//! shape: defaults, renames, and turning malformed params into `-32602` errors.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::bindings::provider as wit;
use crate::bindings::types::ProviderError;

mod caps;

/// JSON-RPC error codes this worker produces (Paperclip SDK conventions).
pub mod codes {
    /// The line was not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// The message is not a valid request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The params do not have the expected shape.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The plugin failed while handling the call.
    pub const WORKER_ERROR: i64 = -32002;
    /// A known optional method this plugin does not implement.
    pub const METHOD_NOT_IMPLEMENTED: i64 = -32004;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// The error code.
    pub code: i64,
    /// The message Paperclip shows to users.
    pub message: String,
    /// Structured details (error kind, HTTP status…).
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with no data.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Malformed params.
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(codes::INVALID_PARAMS, format!("Invalid params: {detail}"))
    }

    /// The JSON-RPC `error` member.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            v["data"] = data.clone();
        }
        v
    }
}

fn parse<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, RpcError> {
    T::deserialize(params).map_err(RpcError::invalid_params)
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

/// The hard-deadline base for a call (the engine adds its grace period on top): the deadline
/// the provider itself works to, computed by the guest crate's own normalisation, so a
/// `timeoutMs` of `"600000"` or `1500.5` means the same on both sides. `execute` takes its
/// request's `timeoutMs` (an unsigned integer, or the call is refused as invalid params before
/// it starts), else the config's; every other method takes the config's.
pub fn call_timeout(method: &str, params: &Value) -> Duration {
    use paperclip_exe_dev::config;
    let config_ms = config::effective_timeout_ms(params.get("config").unwrap_or(&Value::Null));
    let ms = if method == "environmentExecute" {
        let requested = params.get("timeoutMs").and_then(Value::as_u64);
        u64::from(config::execute_timeout_ms(requested, config_ms))
    } else {
        config_ms
    };
    Duration::from_millis(ms)
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

/// The call context every runtime call carries.
pub fn call_context(params: &Value) -> Result<wit::CallContext, RpcError> {
    let base: BaseParams = parse(params)?;
    Ok(wit::CallContext {
        config: object_text(base.config.as_ref()),
        environment_id: base.environment_id.unwrap_or_default(),
        company_id: base.company_id,
    })
}

/// `environmentAcquireLease` params.
pub fn acquire_params(params: &Value) -> Result<wit::AcquireRequest, RpcError> {
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
        context: call_context(params)?,
        run_id: p.run_id.unwrap_or_default(),
        requested_cwd: p.requested_cwd,
        workspace_mode: p.workspace_mode,
        requested_expires_at: p.requested_expires_at,
    })
}

/// `environmentResumeLease` params.
pub fn resume_params(params: &Value) -> Result<wit::ResumeRequest, RpcError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct P {
        provider_lease_id: String,
        lease_metadata: Option<Value>,
    }
    let p: P = parse(params)?;
    Ok(wit::ResumeRequest {
        context: call_context(params)?,
        provider_lease_id: p.provider_lease_id,
        lease_metadata: optional_object_text(&p.lease_metadata),
    })
}

/// `environmentReleaseLease` / `environmentDestroyLease` params.
pub fn release_params(params: &Value) -> Result<wit::ReleaseRequest, RpcError> {
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
        context: call_context(params)?,
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
pub fn realize_params(params: &Value) -> Result<wit::RealizeRequest, RpcError> {
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
        context: call_context(params)?,
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
pub fn execute_params(params: &Value) -> Result<wit::ExecuteRequest, RpcError> {
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
            _ => Err(RpcError::invalid_params(format!(
                "env value for {k} must be a string"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(wit::ExecuteRequest {
        context: call_context(params)?,
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
pub fn sync_params(params: &Value) -> Result<wit::SyncRequest, RpcError> {
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
                            return Err(RpcError::invalid_params(format!(
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
        .collect::<Result<Vec<_>, RpcError>>()?;
    Ok(wit::SyncRequest {
        context: call_context(params)?,
        lease: lease_record(p.lease),
        operations,
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

/// A typed provider error → JSON-RPC error. Not-implemented is `-32004`; everything else is a
/// worker error whose message is shown to users, with the kind in `data`.
pub fn provider_error(method: &str, e: ProviderError) -> RpcError {
    let (kind, message, extra) = match e {
        ProviderError::NotImplemented(m) => {
            let mut err = RpcError::new(
                codes::METHOD_NOT_IMPLEMENTED,
                format!("{method} is not implemented by this plugin"),
            );
            if !m.is_empty() {
                err.data = Some(json!({ "kind": "not-implemented", "detail": m }));
            }
            return err;
        }
        ProviderError::InvalidConfig(m) => ("invalid-config", m, None),
        ProviderError::Api(a) => {
            let mut msg = format!(
                "exe.dev API command failed ({}) for: {}: {}",
                a.status, a.command, a.message
            );
            if let Some(h) = &a.hint {
                msg.push_str(&format!(" ({h})"));
            }
            (
                "api",
                msg,
                Some(json!({ "status": a.status, "command": a.command })),
            )
        }
        ProviderError::Ssh(m) => ("ssh", m, None),
        ProviderError::NotFound(m) => ("not-found", m, None),
        ProviderError::Denied(m) => ("denied", m, None),
        ProviderError::Timeout(m) => ("timeout", m, None),
        ProviderError::Transfer(m) => ("transfer", m, None),
        ProviderError::InvalidRequest(m) => ("invalid-request", m, None),
        ProviderError::Internal(m) => ("internal", m, None),
    };
    let mut data = json!({ "kind": kind });
    if let Some(Value::Object(extra)) = extra {
        for (k, v) in extra {
            data[k] = v;
        }
    }
    RpcError {
        code: codes::WORKER_ERROR,
        message,
        data: Some(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_params_keep_stdin_bytes_and_env_order() {
        let p = json!({
            "lease": {"providerLeaseId": "vm", "metadata": {"remoteCwd": "/w"}},
            "command": "sh", "args": ["-c", "cat"], "env": {"B": "2", "A": "1"},
            "stdin": "héllo\n", "timeoutMs": 5
        });
        let r = execute_params(&p).unwrap();
        assert_eq!(r.stdin.as_deref(), Some("héllo\n".as_bytes()));
        assert_eq!(r.args, vec!["-c", "cat"]);
        assert_eq!(r.lease.provider_lease_id.as_deref(), Some("vm"));
        assert_eq!(r.timeout_ms, Some(5));
        assert_eq!(r.env.len(), 2);
    }

    #[test]
    fn non_string_env_values_are_invalid_params() {
        let p = json!({"command": "true", "env": {"A": 1}});
        assert_eq!(execute_params(&p).unwrap_err().code, codes::INVALID_PARAMS);
    }

    #[test]
    fn missing_command_is_invalid_params() {
        let err = execute_params(&json!({})).unwrap_err();
        assert_eq!(err.code, codes::INVALID_PARAMS);
    }

    #[test]
    fn call_timeout_is_the_guests_own_deadline() {
        use paperclip_exe_dev::config::{Config, DEFAULT_TIMEOUT_MS};
        let ms = Duration::from_millis;
        // The incident: a string timeoutMs was read as absent (300 s) by the host only.
        for config in [
            json!({"timeoutMs": "600000"}),
            json!({"timeoutMs": 600000}),
            json!({"timeoutMs": 600000.75}),
            json!({"timeoutMs": " 600000 "}),
        ] {
            let guest = Config::from_json(&config.to_string()).unwrap().timeout_ms;
            assert_eq!(guest, 600_000);
            for method in [
                "environmentAcquireLease",
                "environmentExecute",
                "environmentProbe",
            ] {
                let params = json!({ "config": config });
                assert_eq!(
                    call_timeout(method, &params),
                    ms(guest),
                    "{method} {config}"
                );
            }
        }
        let default = ms(DEFAULT_TIMEOUT_MS);
        assert_eq!(call_timeout("environmentProbe", &json!({})), default);
        assert_eq!(
            call_timeout(
                "environmentProbe",
                &json!({"config": {"timeoutMs": "nope"}})
            ),
            default
        );
        // Only execute has a timeoutMs of its own; it wins over the config's.
        let p = json!({"timeoutMs": 7, "config": {"timeoutMs": "9"}});
        assert_eq!(call_timeout("environmentExecute", &p), ms(7));
        assert_eq!(call_timeout("environmentAcquireLease", &p), ms(9));
        let p = json!({"timeoutMs": u64::MAX});
        assert_eq!(
            call_timeout("environmentExecute", &p),
            ms(u64::from(u32::MAX))
        );
    }
}
