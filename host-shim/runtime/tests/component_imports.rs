//! Import audit: the shipped component may import only what its world declares, and never
//! `wasi:sockets` or `wasi:filesystem`.

use paperclip_wasm_runtime::engine::{Limits, ProviderHost};
use paperclip_wasm_runtime::grants;

/// Interfaces the component may import (without version): the declared world (the wall clock
/// for lease expiry included) plus the inert `wasi:cli` pieces Rust's std references for panics
/// and `std::env`, and the HashMap seed.
const ALLOWED: &[&str] = &[
    "paperclip:sandbox-provider/types",
    // Types only (the session plan's records): the component calls nothing there.
    "paperclip:sandbox-provider/session",
    "paperclip:sandbox-provider/ssh",
    "paperclip:sandbox-provider/transfer",
    "paperclip:sandbox-provider/log",
    "paperclip:vm-ledger/ledger",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure-seed",
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
];

fn audit(imports: &[String]) -> Vec<String> {
    imports
        .iter()
        .filter(|name| {
            let bare = name.split('@').next().unwrap_or(name);
            bare.starts_with("wasi:sockets")
                || bare.starts_with("wasi:filesystem")
                || !ALLOWED.contains(&bare)
        })
        .cloned()
        .collect()
}

#[test]
fn the_audit_rejects_sockets_filesystem_and_undeclared_imports() {
    let bad = audit(&[
        "wasi:http/types@0.2.12".into(),
        "wasi:sockets/tcp@0.2.12".into(),
        "wasi:filesystem/preopens@0.2.12".into(),
        "acme:evil/thing".into(),
    ]);
    assert_eq!(
        bad,
        vec![
            "wasi:sockets/tcp@0.2.12",
            "wasi:filesystem/preopens@0.2.12",
            "acme:evil/thing"
        ]
    );
}

#[test]
fn the_product_component_imports_nothing_beyond_its_world() {
    let wasm = std::fs::read(paperclip_test_support::components::product_wasm()).unwrap();
    let host = ProviderHost::load(&wasm, None, grants::nothing(None), Limits::default())
        .expect("the component instantiates against the granted linker");
    let imports = host.component_imports();
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:http/outgoing-handler")),
        "{imports:?}"
    );
    assert_eq!(
        audit(&imports),
        Vec::<String>::new(),
        "all imports: {imports:?}"
    );
}
