//! `paperclip-wasm-runtime`: what any embedder of a `paperclip:sandbox-provider` component
//! needs. The wasmtime engine and its compiled-component cache, one store per call with its
//! limits and Paperclip's deadline for the method ([`invoke`]), the generated bindings and the
//! one module of conversions to and from them ([`convert`]), the capabilities the host grants
//! (HTTP and SSH under an allow-list policy, file transfers, logs, the VM ledger), and the
//! private state directory they keep their files in.
//!
//! It knows nothing of exe.dev (it does not depend on the guest crate) and speaks no
//! transport: the Paperclip worker (`paperclip-wasm-host`) wraps it in JSON-RPC (codes, the
//! stdout writer, notifications, dispatch) and the operator commands.

pub mod access;
pub mod bindings;
pub mod caps;
pub mod convert;
pub mod engine;
pub mod grants;
pub mod hex;
mod imports;
pub mod invoke;
pub mod limits;
pub mod policy;
pub mod state;
pub mod statedir;
pub mod transfer_roots;
