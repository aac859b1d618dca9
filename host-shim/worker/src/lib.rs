//! `paperclip-wasm-host`: runs the exe.dev provider WebAssembly component as a Paperclip plugin
//! worker, granting it outbound HTTP and SSH under an allow-list policy.
//!
//! The component runtime is `paperclip-wasm-runtime`; this crate adds Paperclip's JSON-RPC: the
//! protocol loop ([`worker`]), routing by the method table ([`dispatch`]), error codes and
//! objects ([`rpc`]), the stdout writer and notifications ([`notify`]), stdin and stdout on the
//! event loop ([`stdio`]); the command line ([`cli`], [`commands`]), the plugin package
//! ([`package`]), the background VM reconciler ([`reconciler`]) and the operator's orphan
//! listing ([`orphans`]); and it embeds the component, the VM agent and the manifest.

pub mod cli;
pub mod commands;
pub mod dispatch;
pub mod leases;
pub mod notify;
pub mod orphans;
pub mod package;
pub mod reconciler;
pub mod rpc;
pub mod sessions;
pub mod stdio;
pub mod worker;

/// The exe.dev provider component, built by `build.rs` and embedded so the binary works alone.
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("PAPERCLIP_EXE_DEV_WASM"));

/// The VM agent (static x86_64 Linux), built by `build.rs`: uploaded to VMs for durable
/// executions.
pub static EMBEDDED_VM_AGENT: &[u8] = include_bytes!(env!("PAPERCLIP_VM_AGENT"));

/// The plugin manifest (its `x-wasm-host` key declares the grants), used when no
/// `--manifest` is given.
pub static EMBEDDED_MANIFEST: &str = include_str!("../../../manifest.json");
