//! Log severities (WIT `paperclip:sandbox-provider/log.level`).

/// How severe a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Very detailed tracing.
    Trace,
    /// Developer detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected but handled.
    Warn,
    /// A failure.
    Error,
}
