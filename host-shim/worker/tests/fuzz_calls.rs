//! Arbitrary JSON through the real component: every method, arbitrary config and params. The
//! component must never trap; every call ends in a valid answer or a typed JSON-RPC error, and
//! no error carries the config's secrets.
//!
//! The component is granted nothing (HTTP and SSH are refused), so every call ends quickly in
//! whatever the provider makes of its input. `PROPTEST_CASES` raises the number of cases.

use std::sync::Arc;

use paperclip_provider_types::Method;
use paperclip_wasm_host::dispatch;
use paperclip_wasm_host::rpc::RpcError;
use paperclip_wasm_runtime::caps::log::CallSink;
use paperclip_wasm_runtime::engine::{Limits, ProviderHost};
use paperclip_wasm_runtime::grants;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

/// Every method of the table (so a new one is fuzzed, and must be reached, from the start),
/// minus `shutdown`.
fn methods() -> Vec<&'static str> {
    Method::ALL
        .into_iter()
        .filter(|m| *m != Method::Shutdown)
        // Channels and PTYs reach the component only for a lease the worker has served
        // (`e2e_sessions` drives them).
        .filter(|m| !m.is_session_stream())
        .filter(|m| !matches!(m, Method::DuplexChannelOpen | Method::LoginPtyOpen))
        .map(Method::name)
        .collect()
}

/// Codes a call may end in: invalid params, worker error (typed provider error),
/// not implemented.
const TYPED_CODES: &[i64] = &[-32602, -32002, -32004];

const API_KEY: &str = "fuzz-secret-api-key-1234";
const SSH_KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nfuzzsecretkeybody5678\n-----END OPENSSH PRIVATE KEY-----\n";

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::String),
        // Numeric-looking strings, which the config accepts for numbers.
        prop_oneof![
            Just("600000"),
            Just(" 1500.9 "),
            Just("-1"),
            Just("1e9"),
            Just("0"),
            Just("NaN"),
            Just("")
        ]
        .prop_map(|s| Value::String(s.to_string())),
    ]
}

fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn url() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("https://exe.dev/exec")),
        Just(json!("https://exe.dev")),
        Just(json!("http://127.0.0.1:1/exec")),
        Just(json!("https://[::1]:99999/")),
        Just(json!("ftp://exe.dev")),
        Just(json!("https://user@exe.dev/")),
        Just(json!("not a url")),
        any_json(),
    ]
}

/// An object with some of `keys` (each drawn from its strategy) plus arbitrary extra keys.
fn object_of(keys: Vec<(&'static str, BoxedStrategy<Value>)>) -> BoxedStrategy<Value> {
    let picks: Vec<_> = keys
        .into_iter()
        .map(|(k, s)| prop::option::weighted(0.6, s).prop_map(move |v| v.map(|v| (k, v))))
        .collect();
    (
        picks,
        prop::collection::btree_map(".{0,6}", any_json(), 0..2),
    )
        .prop_map(move |(picked, extra)| {
            let mut obj: Map<String, Value> = extra.into_iter().collect();
            for (k, v) in picked.into_iter().flatten() {
                obj.insert(k.to_string(), v);
            }
            Value::Object(obj)
        })
        .boxed()
}

fn config() -> BoxedStrategy<Value> {
    let key = |s: &'static str| prop_oneof![Just(json!(s)), any_json()].boxed();
    let j = || any_json().boxed();
    prop_oneof![
        1 => any_json().boxed(),
        6 => object_of(vec![
            ("apiKey", key(API_KEY)),
            ("apiUrl", url().boxed()),
            ("namePrefix", j()),
            ("sourceVm", j()),
            ("image", j()),
            ("cpu", j()),
            ("memory", j()),
            ("env", j()),
            ("tags", j()),
            ("integrations", j()),
            ("setupScript", j()),
            ("timeoutMs", j()),
            ("reuseLease", j()),
            ("sshUser", j()),
            ("sshPrivateKey", key(SSH_KEY)),
            ("sshIdentityFile", j()),
            ("sshPort", j()),
            ("strictHostKeyChecking", j()),
        ]),
    ]
    .boxed()
}

/// Mostly a value of the shape the field takes (so calls get past the params checks into the
/// component), sometimes anything at all.
fn mostly(typed: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![9 => typed.boxed(), 1 => any_json().boxed()].boxed()
}

fn text() -> BoxedStrategy<Value> {
    mostly(".{0,12}".prop_map(Value::String))
}

fn texts() -> BoxedStrategy<Value> {
    mostly(prop::collection::vec(".{0,8}".prop_map(Value::String), 0..4).prop_map(Value::Array))
}

fn text_map() -> BoxedStrategy<Value> {
    mostly(
        prop::collection::btree_map(".{0,6}", ".{0,8}".prop_map(Value::String), 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
    )
}

fn lease() -> BoxedStrategy<Value> {
    mostly(object_of(vec![
        (
            "providerLeaseId",
            prop_oneof![Just(json!("paperclip-env-run")), text()].boxed(),
        ),
        ("metadata", any_json().boxed()),
        ("expiresAt", text()),
    ]))
}

fn params() -> BoxedStrategy<Value> {
    mostly(object_of(vec![
        ("config", config()),
        ("driverKey", text()),
        ("environmentId", text()),
        ("companyId", text()),
        ("runId", text()),
        ("requestedCwd", text()),
        ("workspaceMode", text()),
        ("providerLeaseId", text()),
        ("leaseMetadata", any_json().boxed()),
        (
            "cancelActiveWork",
            mostly(any::<bool>().prop_map(Value::Bool)),
        ),
        ("lease", lease()),
        (
            "workspace",
            mostly(object_of(vec![
                ("localPath", text()),
                ("remotePath", text()),
                ("mode", text()),
            ])),
        ),
        ("command", prop_oneof![Just(json!("sh")), text()].boxed()),
        ("args", texts()),
        ("cwd", text()),
        ("env", text_map()),
        ("stdin", text()),
        ("timeoutMs", mostly(any::<u64>().prop_map(Value::from))),
        ("operations", operations()),
    ]))
}

/// Sync operations: mostly Paperclip's shape (with paths that are often absolute), sometimes
/// anything.
fn operations() -> BoxedStrategy<Value> {
    let path = || {
        prop_oneof![
            "/[a-z.]{0,6}(/[a-z.]{0,4}){0,2}".prop_map(Value::String),
            text()
        ]
        .boxed()
    };
    let mapping = object_of(vec![
        ("sourcePath", path()),
        ("targetPath", path()),
        (
            "kind",
            mostly(prop_oneof![Just(json!("file")), Just(json!("directory"))]),
        ),
        ("mode", mostly(any::<u32>().prop_map(Value::from))),
        ("exclude", texts()),
        (
            "followSymlinks",
            mostly(any::<bool>().prop_map(Value::Bool)),
        ),
    ]);
    let command = object_of(vec![
        ("command", text()),
        ("cwd", text()),
        ("timeoutMs", mostly(any::<u64>().prop_map(Value::from))),
    ]);
    let operation = object_of(vec![
        (
            "operationId",
            prop_oneof![Just(json!("sync-op-1")), text()].boxed(),
        ),
        (
            "files",
            mostly(prop::collection::vec(mapping, 0..3).prop_map(Value::Array)),
        ),
        (
            "postUploadCommands",
            mostly(prop::collection::vec(command, 0..2).prop_map(Value::Array)),
        ),
    ]);
    mostly(prop::collection::vec(operation, 0..3).prop_map(Value::Array))
}

#[test]
fn arbitrary_config_and_params_never_trap_any_method() {
    let wasm = std::fs::read(env!("PAPERCLIP_EXE_DEV_WASM")).expect("the built component");
    let host = Arc::new(
        ProviderHost::load(&wasm, None, grants::nothing(None), Limits::default())
            .expect("the component loads"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: Config::default().cases.max(512),
        failure_persistence: None,
        ..Config::default()
    });
    // `execute` has the most typed params to get past: drawn more often.
    let method = prop_oneof![
        3 => prop::sample::select(methods()),
        1 => Just("environmentExecute"),
    ];
    let strategy = (method, params());
    // Per method: calls that reached the provider (a result or a provider error).
    let reached: std::sync::Mutex<std::collections::BTreeMap<&str, usize>> = Default::default();
    runner
        .run(&strategy, |(method, params)| {
            let answer = rt.block_on(dispatch::dispatch(
                &host,
                method,
                params.clone(),
                CallSink::stderr_only(),
            ));
            if matches!(&answer, Ok(_) | Err(RpcError { code: -32002, .. })) {
                *reached.lock().unwrap().entry(method).or_default() += 1;
            }
            match answer {
                Ok(v) => {
                    let text = v.to_string();
                    if method != "environmentValidateConfig" {
                        // validate echoes the config (secrets included) as normalizedConfig,
                        // as Paperclip expects; nothing else may carry them.
                        prop_assert!(!text.contains(API_KEY), "{method}: {text}");
                        prop_assert!(!text.contains("fuzzsecretkeybody"), "{method}: {text}");
                    }
                }
                Err(e) => {
                    prop_assert!(
                        e.data.as_ref().and_then(|d| d.get("kind")) != Some(&json!("trap")),
                        "{method} trapped: {} (params {params})",
                        e.message
                    );
                    prop_assert!(
                        TYPED_CODES.contains(&e.code),
                        "{method}: unexpected code {} ({})",
                        e.code,
                        e.message
                    );
                    prop_assert!(!e.message.contains(API_KEY), "{}", e.message);
                    prop_assert!(!e.message.contains("fuzzsecretkeybody"), "{}", e.message);
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // The generators must get past the params checks into the component for every method.
    let reached = reached.into_inner().unwrap();
    eprintln!("calls that reached the provider, per method: {reached:?}");
    for m in methods() {
        assert!(
            reached.get(m).copied().unwrap_or(0) > 0,
            "{m} never reached: {reached:?}"
        );
    }
}
