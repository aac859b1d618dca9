//! Routing one Paperclip request: the method name becomes a [`Method`] (the one table of what
//! this worker answers), `initialize` is answered here, every other method goes to the
//! component through the runtime's [`invoke`], and the outcome becomes JSON-RPC's `result` or
//! `error`. Names outside the table get `-32004` when Paperclip knows them as optional methods
//! (as the SDK answers), else `-32601`.

use paperclip_provider_types::Method;
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::engine::ProviderHost;
use paperclip_wasm_runtime::invoke::invoke;
use serde_json::{json, Value};

use crate::rpc::{codes, RpcError};

/// Plugin methods Paperclip knows that this plugin does not implement: they get `-32004`
/// rather than `-32601`, as the SDK does. So does any other `environment…` name.
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

/// The methods `initialize` announces: every entry of the table but the handshake itself.
pub fn supported_methods() -> Vec<&'static str> {
    Method::ALL
        .into_iter()
        .filter(|m| m.is_announced())
        .map(Method::name)
        .collect()
}

/// Answer one request. `shutdown` is the protocol loop's own (it drains first); here it is
/// answered at once, as operator commands need.
pub async fn dispatch(
    host: &ProviderHost,
    method: &str,
    params: Value,
    sink: CallSink,
) -> Result<Value, RpcError> {
    match Method::from_name(method) {
        Some(Method::Initialize) => {
            Ok(json!({ "ok": true, "supportedMethods": supported_methods() }))
        }
        Some(Method::Shutdown) => Ok(Value::Null),
        Some(m) => invoke(host, m, params, sink)
            .await
            .map_err(|e| RpcError::from_method(m, e)),
        None if method.starts_with("environment") || KNOWN_UNIMPLEMENTED.contains(&method) => {
            Err(RpcError::new(
                codes::METHOD_NOT_IMPLEMENTED,
                format!("{method} is not implemented by this plugin"),
            ))
        }
        None => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("Method not found: {method}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_methods_come_from_the_table() {
        let listed = supported_methods();
        assert_eq!(listed.len(), Method::ALL.len() - 1);
        assert!(!listed.contains(&"initialize"));
        for name in [
            "environmentExecute",
            "environmentSyncOut",
            "health",
            "shutdown",
        ] {
            assert!(listed.contains(&name), "{name}");
        }
    }
}
