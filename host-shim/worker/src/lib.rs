//! `paperclip-wasm-host`: runs the exe.dev provider WebAssembly component as a Paperclip plugin
//! worker, granting it outbound HTTP and SSH under an allow-list policy.

pub mod bench;
pub mod demo;
pub mod orphans;
pub mod package;
pub mod worker;

/// The plugin manifest (its `x-wasm-host` key declares the grants), used when no
/// `--manifest` is given.
pub static EMBEDDED_MANIFEST: &str = include_str!("../../../manifest.json");
