//! `paperclip-provider-types`: the one home of every plain type that crosses the boundary
//! between the provider component (the guest, `paperclip-exe-dev`) and the host that runs it
//! (`paperclip-wasm-runtime`, `paperclip-wasm-host`).
//!
//! Both sides speak these types in their logic; each side keeps exactly one module that converts
//! them to and from its generated WIT bindings (the guest's `src/convert.rs`, the runtime's
//! `convert` module). No side defines a mirror of its own. The crate builds for `wasm32-wasip2`
//! and natively, and depends on nothing that needs an operating system.

pub mod error;
pub mod ledger;
pub mod log;
pub mod method;
pub mod session;
pub mod ssh;
pub mod transfer;

pub use error::{ApiError, ProviderError};
pub use ledger::{Account, LedgerEntry, LedgerError, LedgerReason, Recorded};
pub use log::LogLevel;
pub use method::{Method, TimerInputs};
pub use session::{LoginCli, LoginRequest, Purpose, SessionPlan, TerminalSize};
pub use ssh::{Connected, HostKeyPolicy, Identity, SshError, SshOutput, SshRequest, SshTarget};
pub use transfer::{DownloadRequest, EntryKind, TransferError, TransferReport, UploadRequest};
