//! Calling the component for one Paperclip method: the [`Method`] picks the provider export, the
//! JSON params become its WIT arguments (see [`crate::convert`]), the call gets Paperclip's own
//! deadline for the method, and the result comes back as Paperclip's JSON or a typed
//! [`CallError`]. The worker wraps this in JSON-RPC; operator commands call it directly.

use std::time::Duration;

use paperclip_provider_types::{Method, ProviderError, Purpose, SessionPlan};
use serde_json::Value;
use wasmtime::Store;

use crate::bindings::provider::Guest;
use crate::bindings::types::ProviderError as WitProviderError;
use crate::caps::log::CallSink;
use crate::convert;
use crate::engine::ProviderHost;
use crate::state::HostState;

/// Why a call produced no result.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The params do not have the shape the method needs (nothing ran).
    InvalidParams(String),
    /// The provider answered with an error. `remedies` say what the operator can do about the
    /// HTTP requests the host's policy refused during the call.
    Provider {
        /// The provider's error.
        error: ProviderError,
        /// One sentence per refused authority.
        remedies: Vec<String>,
    },
    /// The component trapped, ran past its deadline or hit its memory limit; the detail says
    /// which. The worker carries on (the store is gone).
    ComponentFailed(String),
}

/// Answer one call of `method`. `Initialize` and `Shutdown` are the worker's own and never reach
/// the component: they are answered here as `InvalidParams` only if a caller routes them here by
/// mistake.
pub async fn invoke(
    host: &ProviderHost,
    method: Method,
    params: Value,
    sink: CallSink,
) -> Result<Value, CallError> {
    let deadline = method.paperclip_timeout(&convert::timer_inputs(&params));
    let call = Call {
        host,
        method,
        sink,
        deadline,
    };
    let params_error = |e: convert::ParamsError| CallError::InvalidParams(e.to_string());
    match method {
        Method::Initialize | Method::Shutdown => Err(answered_by_worker(method)),
        // The opens plan through `plan_session`; the rest concern what the worker holds.
        Method::DuplexChannelOpen
        | Method::DuplexChannelWrite
        | Method::DuplexChannelStop
        | Method::DuplexChannelClose
        | Method::LoginPtyOpen
        | Method::LoginPtyInput
        | Method::LoginPtyStop
        | Method::LoginPtyClose => Err(answered_by_worker(method)),
        Method::Health => {
            let h = call.infallible(async |s, g| g.call_health(s).await).await?;
            Ok(convert::health_json(h))
        }
        Method::EnvironmentValidateConfig => {
            let config = convert::validate_params(&params);
            let v = call
                .infallible(async |s, g| g.call_validate_config(s, &config).await)
                .await?;
            let mut out = convert::validation_json(v);
            check_api_url_access(host, &mut out);
            Ok(out)
        }
        Method::EnvironmentProbe => {
            let ctx = convert::call_context(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_probe(s, &ctx).await,
                convert::probe_json,
            )
            .await
        }
        Method::EnvironmentAcquireLease => {
            let req = convert::acquire_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_acquire_lease(s, &req).await,
                convert::lease_json,
            )
            .await
        }
        Method::EnvironmentResumeLease => {
            let req = convert::resume_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_resume_lease(s, &req).await,
                convert::lease_json,
            )
            .await
        }
        Method::EnvironmentReleaseLease => {
            let req = convert::release_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_release_lease(s, &req).await,
                convert::receipt_json,
            )
            .await
        }
        Method::EnvironmentDestroyLease => {
            let req = convert::release_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_destroy_lease(s, &req).await,
                convert::receipt_json,
            )
            .await
        }
        Method::EnvironmentRealizeWorkspace => {
            let req = convert::realize_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_realize_workspace(s, &req).await,
                convert::realized_json,
            )
            .await
        }
        Method::EnvironmentExecute => {
            let req = convert::execute_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_execute(s, &req).await,
                convert::execute_json,
            )
            .await
        }
        Method::EnvironmentSyncIn => {
            let req = convert::sync_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_sync_in(s, &req).await,
                convert::sync_json,
            )
            .await
        }
        Method::EnvironmentSyncOut => {
            let req = convert::sync_params(&params, deadline).map_err(params_error)?;
            call.fallible(
                async |s, g| g.call_sync_out(s, &req).await,
                convert::sync_json,
            )
            .await
        }
    }
}

fn answered_by_worker(method: Method) -> CallError {
    CallError::InvalidParams(format!(
        "{} is answered by the worker, not the provider",
        method.name()
    ))
}

/// Ask the component what a duplex channel or login PTY runs (`plan-session`), for `method`
/// (whose timer is the call's deadline). `params` are the lease's remembered context:
/// `{config, environmentId, companyId, lease: {providerLeaseId, metadata}}`.
pub async fn plan_session(
    host: &ProviderHost,
    method: Method,
    params: &Value,
    purpose: &Purpose,
    sink: CallSink,
) -> Result<SessionPlan, CallError> {
    let deadline = method.paperclip_timeout(&convert::timer_inputs(params));
    let req = convert::session_params(params, deadline, purpose)
        .map_err(|e| CallError::InvalidParams(e.to_string()))?;
    let call = Call {
        host,
        method,
        sink: sink.clone(),
        deadline,
    };
    let result = call
        .infallible(async |s, g| g.call_plan_session(s, &req).await)
        .await?;
    result.map(Into::into).map_err(|e| CallError::Provider {
        error: e.into(),
        remedies: remedies(host, &sink),
    })
}

/// One provider call: a fresh instance, the method's deadline, traps and typed errors mapped
/// the same way for every method.
pub(crate) struct Call<'a> {
    pub(crate) host: &'a ProviderHost,
    pub(crate) method: Method,
    pub(crate) sink: CallSink,
    pub(crate) deadline: Duration,
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

/// Name the remedies in a probe result, as one more error diagnostic.
fn probe_with_remedies(mut probe: Value, remedies: &[String]) -> Value {
    if let Some(diagnostics) = probe["diagnostics"].as_array_mut() {
        for r in remedies {
            diagnostics.push(
                serde_json::json!({ "severity": "error", "code": "host-policy", "message": r }),
            );
        }
    }
    probe
}

impl Call<'_> {
    /// A provider function that cannot fail (only trap).
    pub(crate) async fn infallible<T>(
        self,
        f: impl AsyncFnOnce(&mut Store<HostState>, &Guest) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        let method = self.method;
        self.host
            .call(self.sink, self.deadline, f)
            .await
            .map_err(|e| component_failed(method.name(), e))
    }

    /// A provider function returning `result<T, provider-error>`; `to_json` shapes the result.
    pub(crate) async fn fallible<T>(
        self,
        f: impl AsyncFnOnce(
            &mut Store<HostState>,
            &Guest,
        ) -> wasmtime::Result<Result<T, WitProviderError>>,
        to_json: fn(T) -> Value,
    ) -> Result<Value, CallError> {
        let (method, host, sink) = (self.method, self.host, self.sink.clone());
        let result = self.infallible(f).await?;
        let remedies = remedies(host, &sink);
        match result {
            Ok(v) if method == Method::EnvironmentProbe => {
                Ok(probe_with_remedies(to_json(v), &remedies))
            }
            Ok(v) => Ok(to_json(v)),
            Err(e) => Err(CallError::Provider {
                error: e.into(),
                remedies,
            }),
        }
    }
}

/// A trap or instantiation failure, said the way an operator can act on.
pub(crate) fn component_failed(what: &str, e: wasmtime::Error) -> CallError {
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
    tracing::error!("{what}: the provider component failed: {detail}");
    CallError::ComponentFailed(detail)
}
