//! Why a provider call failed (WIT `paperclip:sandbox-provider/types.provider-error`).
//!
//! Every message is safe to show an operator: it never contains the API token, a private key or
//! an environment value. Code that builds these errors only ever uses redacted command lines.

use std::fmt;

/// A failed `/exec` API call (WIT `api-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status code, or 0 when no response arrived.
    pub status: u16,
    /// The redacted exe.dev command line that failed.
    pub command: String,
    /// The API's own `{"error": …}` text (or the raw body).
    pub message: String,
    /// What the operator can do about it.
    pub hint: Option<String>,
    /// The response's `Retry-After`, in milliseconds (429, 503). The guest's own scheduling
    /// input: not part of the WIT record, so always `None` on the host side.
    pub retry_after_ms: Option<u64>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 0 {
            write!(
                f,
                "exe.dev API command `{}` failed: {}",
                self.command, self.message
            )?;
        } else {
            write!(
                f,
                "exe.dev API command `{}` failed ({}): {}",
                self.command, self.status, self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Why a provider call failed (WIT `provider-error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The driver config is missing a required field or has an invalid value.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// The `/exec` API failed.
    #[error("{0}")]
    Api(ApiError),
    /// SSH to the VM failed before the remote command could run.
    #[error("{0}")]
    Ssh(String),
    /// The VM or lease does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The host refused a capability.
    #[error("denied by host policy: {0}")]
    Denied(String),
    /// A deadline passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A file transfer failed; the old target is in place.
    #[error("{0}")]
    Transfer(String),
    /// The request itself is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Not implemented by this build.
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}
