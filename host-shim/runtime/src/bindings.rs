//! Generated bindings for the `exe-dev-provider` world (generated code only).
//!
//! WASI interfaces are mapped onto wasmtime-wasi / wasmtime-wasi-http so that one implementation
//! serves them; our own `ssh`, `log` and `vm-ledger` imports are implemented in `imports.rs`.

#![allow(missing_docs, reason = "bindgen-generated code")]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "exe-dev-provider",
    imports: { default: async },
    exports: { default: async },
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:random": wasmtime_wasi::p2::bindings::random,
    },
});

pub use exports::paperclip::sandbox_provider::provider;
pub use paperclip::sandbox_provider::{log, session, ssh, transfer, types};
// Two versions of the ledger package are in `wit/deps` (0.1.0 is released and kept), so the
// bindings name its module with the version the world imports.
pub use paperclip::vm_ledger0_2_0::ledger;
