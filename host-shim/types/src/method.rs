//! The Paperclip plugin methods this provider answers, and Paperclip's own timer for each: how
//! long the Paperclip server waits for an answer before it gives up on the call (`-32003`).
//!
//! The rule is Paperclip 2026.916.1's (`plugin-worker-manager.js`,
//! `plugin-environment-driver.js`: `resolvePluginSandboxRpcTimeoutMs`,
//! `resolvePluginExecuteRpcTimeoutMs`). The host computes it once per call, stops the component
//! when it passes, and hands it to the component as the call's deadline (WIT
//! `call-context.deadline-ms`), so the component answers before Paperclip stops listening.

use std::time::Duration;

/// Paperclip's default RPC timeout, when the caller names none.
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// What Paperclip adds to a config's or request's `timeoutMs`.
const RPC_TIMEOUT_SLACK_MS: u64 = 30_000;
/// Paperclip's overall deadline for `environmentResumeLease`.
const RESUME_CAP: Duration = Duration::from_secs(60);

/// One Paperclip method this worker answers. Adding a method is one entry here (and in
/// [`Method::ALL`]), plus its handler: `supportedMethods`, dispatch, the call deadline and the
/// protocol tests all come from this table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The handshake (answered by the worker itself).
    Initialize,
    /// Liveness (the component's `health`).
    Health,
    /// Orderly exit (answered by the worker itself).
    Shutdown,
    /// `validate-config`.
    EnvironmentValidateConfig,
    /// `probe`.
    EnvironmentProbe,
    /// `acquire-lease`.
    EnvironmentAcquireLease,
    /// `resume-lease`.
    EnvironmentResumeLease,
    /// `release-lease`.
    EnvironmentReleaseLease,
    /// `destroy-lease`.
    EnvironmentDestroyLease,
    /// `realize-workspace`.
    EnvironmentRealizeWorkspace,
    /// `execute`.
    EnvironmentExecute,
    /// `sync-in`.
    EnvironmentSyncIn,
    /// `sync-out`.
    EnvironmentSyncOut,
    /// The component's `plan-session` decides what runs; the worker opens the channel.
    DuplexChannelOpen,
    /// Bytes for a channel's stdin (the worker's own).
    DuplexChannelWrite,
    /// End a channel's stdin, then its command (the worker's own).
    DuplexChannelStop,
    /// Close a channel, killing what still runs (the worker's own).
    DuplexChannelClose,
    /// The component's `plan-session` decides what runs; the worker opens the PTY.
    LoginPtyOpen,
    /// Text typed into a login PTY (the worker's own).
    LoginPtyInput,
    /// End a login PTY's CLI (the worker's own).
    LoginPtyStop,
    /// Close a login PTY, killing what still runs (the worker's own).
    LoginPtyClose,
}

/// What Paperclip's timer for a call depends on, read from its params.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerInputs {
    /// The driver config's `timeoutMs`, when it is a positive number.
    pub config_timeout_ms: Option<u64>,
    /// The driver config's `bridgeRequestTimeoutMs`, when it is a positive number.
    pub config_bridge_request_timeout_ms: Option<u64>,
    /// The request's own `timeoutMs` (`environmentExecute`), when it is a positive number.
    pub request_timeout_ms: Option<u64>,
}

impl Method {
    /// Every method, in the order `supportedMethods` lists them.
    pub const ALL: [Method; 21] = [
        Method::EnvironmentValidateConfig,
        Method::EnvironmentProbe,
        Method::EnvironmentAcquireLease,
        Method::EnvironmentResumeLease,
        Method::EnvironmentReleaseLease,
        Method::EnvironmentDestroyLease,
        Method::EnvironmentRealizeWorkspace,
        Method::EnvironmentExecute,
        Method::EnvironmentSyncIn,
        Method::EnvironmentSyncOut,
        Method::DuplexChannelOpen,
        Method::DuplexChannelWrite,
        Method::DuplexChannelStop,
        Method::DuplexChannelClose,
        Method::LoginPtyOpen,
        Method::LoginPtyInput,
        Method::LoginPtyStop,
        Method::LoginPtyClose,
        Method::Health,
        Method::Shutdown,
        Method::Initialize,
    ];

    /// The method's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Initialize => "initialize",
            Method::Health => "health",
            Method::Shutdown => "shutdown",
            Method::EnvironmentValidateConfig => "environmentValidateConfig",
            Method::EnvironmentProbe => "environmentProbe",
            Method::EnvironmentAcquireLease => "environmentAcquireLease",
            Method::EnvironmentResumeLease => "environmentResumeLease",
            Method::EnvironmentReleaseLease => "environmentReleaseLease",
            Method::EnvironmentDestroyLease => "environmentDestroyLease",
            Method::EnvironmentRealizeWorkspace => "environmentRealizeWorkspace",
            Method::EnvironmentExecute => "environmentExecute",
            Method::EnvironmentSyncIn => "environmentSyncIn",
            Method::EnvironmentSyncOut => "environmentSyncOut",
            Method::DuplexChannelOpen => "duplexChannelOpen",
            Method::DuplexChannelWrite => "duplexChannelWrite",
            Method::DuplexChannelStop => "duplexChannelStop",
            Method::DuplexChannelClose => "duplexChannelClose",
            Method::LoginPtyOpen => "loginPtyOpen",
            Method::LoginPtyInput => "loginPtyInput",
            Method::LoginPtyStop => "loginPtyStop",
            Method::LoginPtyClose => "loginPtyClose",
        }
    }

    /// The method called `name`, if this worker answers it.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Listed in `initialize`'s `supportedMethods` (everything but the handshake itself).
    pub fn is_announced(self) -> bool {
        self != Method::Initialize
    }

    /// Methods on an open channel or PTY: the worker answers them from what it holds, without
    /// calling the component.
    pub fn is_session_stream(self) -> bool {
        matches!(
            self,
            Method::DuplexChannelWrite
                | Method::DuplexChannelStop
                | Method::DuplexChannelClose
                | Method::LoginPtyInput
                | Method::LoginPtyStop
                | Method::LoginPtyClose
        )
    }

    /// How long Paperclip waits for this call's answer (see the module docs).
    pub fn paperclip_timeout(self, inputs: &TimerInputs) -> Duration {
        match self {
            Method::Initialize => Duration::from_secs(15),
            Method::Shutdown => Duration::from_secs(10),
            Method::Health | Method::EnvironmentValidateConfig => DEFAULT_RPC_TIMEOUT,
            // Paperclip's channel and PTY timers (`plugin-worker-manager.js`): 30 s for an
            // open, a write, an input or a stop; 10 s for the close acknowledgement, after
            // which it kills the worker.
            Method::DuplexChannelOpen
            | Method::DuplexChannelWrite
            | Method::DuplexChannelStop
            | Method::LoginPtyOpen
            | Method::LoginPtyInput
            | Method::LoginPtyStop => DEFAULT_RPC_TIMEOUT,
            Method::DuplexChannelClose | Method::LoginPtyClose => Duration::from_secs(10),
            Method::EnvironmentProbe => Duration::from_secs(120),
            Method::EnvironmentResumeLease => sandbox_rpc_timeout(inputs).min(RESUME_CAP),
            Method::EnvironmentAcquireLease
            | Method::EnvironmentReleaseLease
            | Method::EnvironmentDestroyLease
            | Method::EnvironmentRealizeWorkspace
            | Method::EnvironmentSyncIn
            | Method::EnvironmentSyncOut => sandbox_rpc_timeout(inputs),
            Method::EnvironmentExecute => inputs
                .request_timeout_ms
                .or(inputs.config_timeout_ms)
                .map_or(DEFAULT_RPC_TIMEOUT, plus_slack),
        }
    }
}

/// Paperclip's timer for the sandbox lease and workspace methods:
/// `max(config.timeoutMs, config.bridgeRequestTimeoutMs) + 30 s`, or 30 s with neither. The
/// worker's own calls that take a driver config (the operator's VM listing) use it too.
pub fn sandbox_rpc_timeout(inputs: &TimerInputs) -> Duration {
    let longest = match (
        inputs.config_timeout_ms,
        inputs.config_bridge_request_timeout_ms,
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    longest.map_or(DEFAULT_RPC_TIMEOUT, plus_slack)
}

fn plus_slack(ms: u64) -> Duration {
    Duration::from_millis(ms.saturating_add(RPC_TIMEOUT_SLACK_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        let mut names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Method::ALL.len());
        assert_eq!(Method::from_name("environmentexecute"), None);
        assert_eq!(Method::from_name("listVms"), None);
    }

    #[test]
    fn paperclip_timer_rule() {
        let none = TimerInputs::default();
        let config = TimerInputs {
            config_timeout_ms: Some(60_000),
            ..none
        };
        let both = TimerInputs {
            config_bridge_request_timeout_ms: Some(90_000),
            ..config
        };
        let s = Duration::from_secs;
        assert_eq!(
            Method::EnvironmentAcquireLease.paperclip_timeout(&none),
            s(30)
        );
        assert_eq!(
            Method::EnvironmentAcquireLease.paperclip_timeout(&config),
            s(90)
        );
        assert_eq!(Method::EnvironmentSyncOut.paperclip_timeout(&both), s(120));
        assert_eq!(
            Method::EnvironmentResumeLease.paperclip_timeout(&both),
            s(60)
        );
        assert_eq!(
            Method::EnvironmentResumeLease.paperclip_timeout(&none),
            s(30)
        );
        assert_eq!(Method::EnvironmentProbe.paperclip_timeout(&both), s(120));
        assert_eq!(
            Method::EnvironmentValidateConfig.paperclip_timeout(&both),
            s(30)
        );
        assert_eq!(Method::EnvironmentExecute.paperclip_timeout(&none), s(30));
        assert_eq!(Method::EnvironmentExecute.paperclip_timeout(&config), s(90));
        let request = TimerInputs {
            request_timeout_ms: Some(5_000),
            ..both
        };
        assert_eq!(
            Method::EnvironmentExecute.paperclip_timeout(&request),
            s(35)
        );
        let huge = TimerInputs {
            request_timeout_ms: Some(u64::MAX),
            ..none
        };
        assert_eq!(
            Method::EnvironmentExecute.paperclip_timeout(&huge),
            Duration::from_millis(u64::MAX)
        );
    }
}
