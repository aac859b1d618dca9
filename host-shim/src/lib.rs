//! `paperclip-wasm-host`: runs the exe.dev provider WebAssembly component as a Paperclip plugin
//! worker, granting it outbound HTTP and SSH under an allow-list policy.

pub mod caps;
pub mod policy;
pub mod sim;
