//! JSON-RPC 2.0 as Paperclip's plugin protocol uses it: the error codes, the error object, and
//! how a failed provider call becomes one.

use paperclip_provider_types::{Method, ProviderError};
use paperclip_wasm_runtime::invoke::CallError;
use serde_json::{json, Value};

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

    /// A failed call of `method` as Paperclip expects it.
    pub fn from_method(method: Method, e: CallError) -> Self {
        let method = method.name();
        match e {
            CallError::InvalidParams(detail) => RpcError::invalid_params(detail),
            CallError::Provider { error, remedies } => {
                with_remedies(provider_error(method, error), &remedies)
            }
            CallError::ComponentFailed(detail) => RpcError {
                code: codes::WORKER_ERROR,
                message: format!("{method} failed: the provider component failed: {detail}"),
                data: Some(json!({ "kind": "trap" })),
            },
        }
    }
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

/// Name the remedies in a failed call's error (message and `data.remedy`).
fn with_remedies(mut err: RpcError, remedies: &[String]) -> RpcError {
    if remedies.is_empty() {
        return err;
    }
    for r in remedies {
        err.message.push(' ');
        err.message.push_str(r);
    }
    let data = err.data.get_or_insert_with(|| json!({}));
    if data.is_object() {
        data["remedy"] = Value::String(remedies.join(" "));
    }
    err
}
