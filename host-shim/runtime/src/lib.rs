//! `paperclip-wasm-runtime`: what any embedder of the exe.dev provider component needs. The
//! wasmtime engine and its compiled-component cache, one store per call with its limits, the
//! generated bindings and their conversions to and from Paperclip's JSON, the capabilities the
//! host grants (HTTP and SSH under an allow-list policy, logs, the VM ledger), and the private
//! state directory they keep their files in.
//!
//! It speaks no transport: the Paperclip worker (`paperclip-wasm-host`) wraps it in the
//! JSON-RPC protocol and the operator commands.

pub mod access;
pub mod bindings;
pub mod caps;
pub mod convert;
pub mod dispatch;
pub mod engine;
pub mod grants;
pub mod hex;
mod imports;
pub mod limits;
pub mod policy;
pub mod state;
pub mod statedir;
pub mod transfer_roots;
