//! The Paperclip plugin-worker protocol: newline-delimited JSON-RPC 2.0 on stdin/stdout.
//!
//! Requests are handled concurrently (one task each); every line written to stdout goes through
//! one writer task. `shutdown` is answered, flushed, and ends the loop; so does stdin EOF.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bindings::provider::Guest;
use crate::bindings::types::ProviderError;
use crate::caps::log::{CallSink, Outbox, Outgoing};
use crate::convert::{self, codes, RpcError};
use crate::engine::ProviderHost;
use crate::state::HostState;
use wasmtime::Store;

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

/// How long `shutdown` waits for in-flight calls before answering (Paperclip allows 10 s).
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(8);

/// Why the loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// The host sent `shutdown`.
    Shutdown,
    /// stdin closed.
    Eof,
}

/// Serve the protocol until `shutdown` or EOF. All stdout lines are flushed before returning.
pub async fn serve(
    host: Arc<ProviderHost>,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite + Unpin + Send + 'static,
) -> anyhow::Result<Exit> {
    let (outbox, rx) = Outbox::new();
    let writer = tokio::spawn(write_lines(rx, output));
    let mut in_flight = JoinSet::new();
    let mut lines = BufReader::new(input).lines();
    let exit = loop {
        // Reap finished calls as we go so the set only holds what is running.
        while in_flight.try_join_next().is_some() {}
        let Some(line) = lines.next_line().await? else {
            break Exit::Eof;
        };
        if line.trim().is_empty() {
            continue;
        }
        match classify(&line) {
            Incoming::Request { id, method, .. } if method == "shutdown" => {
                // Answer what is already running first, within Paperclip's shutdown budget
                // (10 s before it escalates to signals); longer calls are abandoned.
                let drain = async { while in_flight.join_next().await.is_some() {} };
                if tokio::time::timeout(SHUTDOWN_DRAIN, drain).await.is_err() {
                    tracing::warn!("shutdown: abandoning calls still running");
                }
                outbox.send_line(response(&id, Ok(Value::Null)));
                break Exit::Shutdown;
            }
            Incoming::Request { id, method, params } => {
                let host = host.clone();
                let outbox = outbox.clone();
                in_flight.spawn(async move {
                    let sink = CallSink::new(invocation_id(&params), Some(outbox.clone()));
                    let result = dispatch(&host, &method, params, sink).await;
                    outbox.send_line(response(&id, result));
                });
            }
            Incoming::Ignored => {}
            Incoming::Invalid { id, error } => outbox.send_line(response(&id, Err(error))),
        }
    };
    // On EOF, calls already accepted still get their answers (each is bounded by its deadline).
    while in_flight.join_next().await.is_some() {}
    outbox.flush().await;
    drop(outbox);
    drop(writer);
    Ok(exit)
}

async fn write_lines(
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    mut output: impl AsyncWrite + Unpin,
) -> std::io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Outgoing::Line(mut line) => {
                line.push('\n');
                output.write_all(line.as_bytes()).await?;
                // Flush per line unless more is queued: Paperclip reads line by line and a
                // response must not sit in a buffer.
                if rx.is_empty() {
                    output.flush().await?;
                }
            }
            Outgoing::Flush(ack) => {
                output.flush().await?;
                let _ = ack.send(());
            }
        }
    }
    output.flush().await
}

enum Incoming {
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    Ignored,
    Invalid {
        id: Value,
        error: RpcError,
    },
}

fn classify(line: &str) -> Incoming {
    let msg: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Incoming::Invalid {
                id: Value::Null,
                error: RpcError::new(codes::PARSE_ERROR, format!("Parse error: {e}")),
            }
        }
    };
    let Some(obj) = msg.as_object() else {
        return Incoming::Invalid {
            id: Value::Null,
            error: RpcError::new(codes::INVALID_REQUEST, "Invalid request: not an object"),
        };
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    match obj.get("method") {
        // A notification (no id): nothing to answer; Paperclip's events are not needed here.
        Some(Value::String(_)) if !obj.contains_key("id") || id.is_null() => Incoming::Ignored,
        Some(Value::String(method)) => Incoming::Request {
            method: method.clone(),
            params: obj.get("params").cloned().unwrap_or_else(|| json!({})),
            id,
        },
        Some(_) => Incoming::Invalid {
            id,
            error: RpcError::new(codes::INVALID_REQUEST, "Invalid request: bad method"),
        },
        // A response to a worker→host request; this worker sends none, so nothing waits on it.
        None if obj.contains_key("result") || obj.contains_key("error") => Incoming::Ignored,
        None => Incoming::Invalid {
            id,
            error: RpcError::new(codes::INVALID_REQUEST, "Invalid request: no method"),
        },
    }
}

fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    match result {
        Ok(v) => json!({ "jsonrpc": "2.0", "id": id, "result": v }),
        Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": e.to_json() }),
    }
    .to_string()
}

fn invocation_id(params: &Value) -> Option<String> {
    params
        .pointer("/paperclipInvocation/id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

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
        timeout: convert::call_timeout(&params),
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
            Ok(convert::validation_json(v))
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
        let method = self.method;
        self.infallible(f)
            .await?
            .map(to_json)
            .map_err(|e| convert::provider_error(method, e))
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
