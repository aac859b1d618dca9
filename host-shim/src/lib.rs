//! `paperclip-wasm-host`: runs the exe.dev provider WebAssembly component as a Paperclip plugin
//! worker, granting it outbound HTTP and SSH under an allow-list policy.

pub mod access;
pub mod bench;
pub mod bindings;
pub mod caps;
pub mod client;
pub mod convert;
pub mod demo;
pub mod engine;
pub mod grants;
pub mod harness;
pub mod hex;
mod imports;
pub mod limits;
pub mod orphans;
pub mod package;
pub mod policy;
pub mod state;
pub mod statedir;
pub mod worker;

/// The plugin manifest (its `x-wasm-host` key declares the grants), used when no
/// `--manifest` is given.
pub static EMBEDDED_MANIFEST: &str = include_str!("../../manifest.json");
