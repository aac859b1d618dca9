//! Answering one Paperclip environment call with the component: the method name picks the
//! provider export, the JSON params become its WIT arguments (see [`crate::convert`]), and the
//! result or failure comes back as JSON-RPC's `result` or `error`.
//!
//! The worker's JSON-RPC loop calls [`dispatch`] once per request; the operator commands call it
//! directly with the same params.

use serde_json::{json, Value};
use wasmtime::Store;

use crate::bindings::provider::Guest;
use crate::bindings::types::ProviderError;
use crate::caps::log::CallSink;
use crate::convert::{self, codes, RpcError};
use crate::engine::ProviderHost;
use crate::state::HostState;

/// Every method this worker answers, as announced in `initialize`.
pub const SUPPORTED_METHODS: &[&str] = &[
    "environmentValidateConfig",
    "environmentProbe",
    "environmentAcquireLease",
    "environmentResumeLease",
    "environmentReleaseLease",
    "environmentDestroyLease",
    "environmentRealizeWorkspace",
    "environmentExecute",
    "environmentSyncIn",
    "environmentSyncOut",
    "health",
    "shutdown",
];

/// Plugin methods Paperclip knows that this plugin does not implement: they get `-32004`
/// rather than `-32601`, as the SDK does.
const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "configChanged",
    "validateConfig",
    "onEvent",
    "runJob",
    "handleWebhook",
    "getData",
    "performAction",
    "executeTool",
];

/// Answer one request. Also used by the operator CLI, which builds the same params.
pub async fn dispatch(
    host: &ProviderHost,
    method: &str,
    params: Value,
    sink: CallSink,
) -> Result<Value, RpcError> {
    let call = Call {
        host,
        method,
        sink,
        timeout: convert::call_timeout(method, &params),
    };
    match method {
        "initialize" => Ok(json!({ "ok": true, "supportedMethods": SUPPORTED_METHODS })),
        "health" => {
            let h = call.infallible(async |s, g| g.call_health(s).await).await?;
            Ok(convert::health_json(h))
        }
        "environmentValidateConfig" => {
            let config = convert::validate_params(&params);
            let v = call
                .infallible(async |s, g| g.call_validate_config(s, &config).await)
                .await?;
            let mut out = convert::validation_json(v);
            check_api_url_access(host, &mut out);
            Ok(out)
        }
        "environmentProbe" => {
            let ctx = convert::call_context(&params)?;
            call.fallible(
                async |s, g| g.call_probe(s, &ctx).await,
                convert::probe_json,
            )
            .await
        }
        "environmentAcquireLease" => {
            let req = convert::acquire_params(&params)?;
            call.fallible(
                async |s, g| g.call_acquire_lease(s, &req).await,
                convert::lease_json,
            )
            .await
        }
        "environmentResumeLease" => {
            let req = convert::resume_params(&params)?;
            call.fallible(
                async |s, g| g.call_resume_lease(s, &req).await,
                convert::lease_json,
            )
            .await
        }
        "environmentReleaseLease" => {
            let req = convert::release_params(&params)?;
            call.fallible(
                async |s, g| g.call_release_lease(s, &req).await,
                convert::receipt_json,
            )
            .await
        }
        "environmentDestroyLease" => {
            let req = convert::release_params(&params)?;
            call.fallible(
                async |s, g| g.call_destroy_lease(s, &req).await,
                convert::receipt_json,
            )
            .await
        }
        "environmentRealizeWorkspace" => {
            let req = convert::realize_params(&params)?;
            call.fallible(
                async |s, g| g.call_realize_workspace(s, &req).await,
                convert::realized_json,
            )
            .await
        }
        "environmentExecute" => {
            let req = convert::execute_params(&params)?;
            call.fallible(
                async |s, g| g.call_execute(s, &req).await,
                convert::execute_json,
            )
            .await
        }
        "environmentSyncIn" => {
            let req = convert::sync_params(&params)?;
            call.fallible(
                async |s, g| g.call_sync_in(s, &req).await,
                convert::sync_json,
            )
            .await
        }
        "environmentSyncOut" => {
            let req = convert::sync_params(&params)?;
            call.fallible(
                async |s, g| g.call_sync_out(s, &req).await,
                convert::sync_json,
            )
            .await
        }
        m if m.starts_with("environment") || KNOWN_UNIMPLEMENTED.contains(&m) => {
            Err(RpcError::new(
                codes::METHOD_NOT_IMPLEMENTED,
                format!("{m} is not implemented by this plugin"),
            ))
        }
        m => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {m}"),
        )),
    }
}

/// One provider call: a fresh instance, the method's deadline, traps and typed errors mapped
/// to JSON-RPC errors the same way for every method.
struct Call<'a> {
    host: &'a ProviderHost,
    method: &'a str,
    sink: CallSink,
    timeout: std::time::Duration,
}

/// The host's own say on a config the guest accepted: the `apiUrl` it will call (as the guest
/// normalised it) must be one the HTTP policy allows, or the environment is refused when it is
/// saved, with the remedy, rather than failing at its first probe.
fn check_api_url_access(host: &ProviderHost, validation: &mut Value) {
    let Some(access) = host.http_access() else {
        return;
    };
    let Some(url) = validation
        .pointer("/normalizedConfig/apiUrl")
        .and_then(Value::as_str)
    else {
        return;
    };
    if let Err(problem) = access.check_url("apiUrl", url) {
        validation["ok"] = Value::Bool(false);
        if let Some(errors) = validation["errors"].as_array_mut() {
            errors.push(Value::String(problem.to_string()));
        }
        if let Some(obj) = validation.as_object_mut() {
            obj.remove("normalizedConfig");
        }
    }
}

/// What the operator can do about the HTTP requests the policy refused during a call.
fn remedies(host: &ProviderHost, sink: &CallSink) -> Vec<String> {
    let Some(access) = host.http_access() else {
        return Vec::new();
    };
    sink.denied_http()
        .iter()
        .filter_map(|url| {
            let remedy = access.remedy_for_url(url)?;
            Some(format!("The worker refused HTTP to {url}. {remedy}"))
        })
        .collect()
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

/// Name the remedies in a probe result, as one more error diagnostic.
fn probe_with_remedies(mut probe: Value, remedies: &[String]) -> Value {
    if let Some(diagnostics) = probe["diagnostics"].as_array_mut() {
        for r in remedies {
            diagnostics.push(json!({ "severity": "error", "code": "host-policy", "message": r }));
        }
    }
    probe
}

impl Call<'_> {
    /// A provider function that cannot fail (only trap).
    async fn infallible<T>(
        self,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Guest) -> wasmtime::Result<T>,
    ) -> Result<T, RpcError> {
        let method = self.method;
        self.host
            .call(self.sink, self.timeout, f)
            .await
            .map_err(|e| trap_error(method, e))
    }

    /// A provider function returning `result<T, provider-error>`; `to_json` shapes the result.
    async fn fallible<T>(
        self,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Guest) -> wasmtime::Result<Result<T, ProviderError>>,
        to_json: fn(T) -> Value,
    ) -> Result<Value, RpcError> {
        let (method, host, sink) = (self.method, self.host, self.sink.clone());
        let result = self.infallible(f).await?;
        let remedies = remedies(host, &sink);
        match result {
            Ok(v) if method == "environmentProbe" => Ok(probe_with_remedies(to_json(v), &remedies)),
            Ok(v) => Ok(to_json(v)),
            Err(e) => Err(with_remedies(convert::provider_error(method, e), &remedies)),
        }
    }
}

/// A trap or instantiation failure: the call failed, the worker carries on (the store is gone).
fn trap_error(method: &str, e: wasmtime::Error) -> RpcError {
    let detail = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "it ran past its deadline and was stopped".to_string(),
        Some(trap) => format!("it trapped: {trap}"),
        None => match e.downcast_ref::<crate::limits::MemoryLimitExceeded>() {
            Some(limit) => limit.to_string(),
            // The outer message of a trap raised by a host limit is a wasm backtrace; the
            // cause is what an operator needs.
            None => format!("it trapped: {}", e.root_cause()),
        },
    };
    tracing::error!("{method}: the provider component failed: {detail}");
    RpcError {
        code: codes::WORKER_ERROR,
        message: format!("{method} failed: the provider component failed: {detail}"),
        data: Some(json!({ "kind": "trap" })),
    }
}
