//! Fault injection for the simulator. Every knob can be turned while the simulator runs; counted
//! faults ("N times") are consumed one per matching event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Matches every command (API faults) or every VM (SSH faults).
pub const ANY: &str = "*";

/// The marker exe.dev prints (then exits 1) when a session's SSH key is not registered.
pub const ONBOARDING_MARKER: &str = "Please complete registration by running: ssh exe.dev\r\n";

/// A counted API failure: answer `status` with `body` instead of running the command.
#[derive(Clone, Debug)]
struct Failure {
    status: u16,
    body: String,
    remaining: u32,
}

#[derive(Default, Debug)]
struct State {
    failures: HashMap<String, Vec<Failure>>,
    delays: HashMap<String, Duration>,
    lost: HashMap<String, (Option<u16>, u32)>,
    abandoned: HashMap<String, (Duration, u32)>,
    ssh_drops: HashMap<String, u32>,
    onboarding: HashMap<String, bool>,
    ready_delay: Option<Duration>,
    rate_limits: HashMap<String, (u32, u32)>,
}

/// Thread-safe fault switches, shared by the API server and every VM's SSH server.
///
/// Command keys are exe.dev command names (`"new"`, `"ls"`, `"rm"`, `"cp"`, `"whoami"`) or
/// [`ANY`]; VM keys are VM names or [`ANY`].
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
    /// Cuts the live SSH connections of a VM (or of all VMs for [`ANY`]); set by the simulator.
    disconnect: Mutex<Option<DisconnectHook>>,
}

type DisconnectHook = Box<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

/// What the API should do instead of (or after) running a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ApiFault {
    /// Answer with this status and JSON body, without running the command.
    Fail { status: u16, body: String },
    /// Answer 429 with a `Retry-After` of this many seconds, without running the command.
    RateLimited { retry_after_secs: u32 },
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps inconsistent, so recover.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `times` calls of `cmd` get `status` with exe.dev's usual `{"error":…}` body for
    /// that status, and the command does not run.
    pub fn fail_command(&self, cmd: &str, status: u16, times: u32) {
        let body = serde_json::json!({ "error": default_error_text(status) }).to_string();
        self.fail_command_with_body(cmd, status, &body, times);
    }

    /// Like [`Faults::fail_command`] with an exact response body (e.g. `upstream boom`).
    pub fn fail_command_with_body(&self, cmd: &str, status: u16, body: &str, times: u32) {
        self.lock()
            .failures
            .entry(cmd.to_owned())
            .or_default()
            .push(Failure {
                status,
                body: body.to_owned(),
                remaining: times,
            });
    }

    /// The next `times` calls of `cmd` are answered 429 `rate limit exceeded` with
    /// `Retry-After: <retry_after_secs>`, and the command does not run.
    pub fn rate_limit_command(&self, cmd: &str, retry_after_secs: u32, times: u32) {
        self.lock()
            .rate_limits
            .insert(cmd.to_owned(), (retry_after_secs, times));
    }

    /// Every call of `cmd` takes effect at once but its response is held back by `delay`
    /// (a slow `new` still creates the VM). A total past the simulator's exec timeout answers
    /// 504 `command timed out`. `Duration::ZERO` removes the delay.
    pub fn delay_command(&self, cmd: &str, delay: Duration) {
        let mut s = self.lock();
        if delay.is_zero() {
            s.delays.remove(cmd);
        } else {
            s.delays.insert(cmd.to_owned(), delay);
        }
    }

    /// The next `times` calls of `cmd` run (a `new` creates its VM) and then the HTTP connection
    /// is dropped without any response.
    pub fn lose_response(&self, cmd: &str, times: u32) {
        self.lock().lost.insert(cmd.to_owned(), (None, times));
    }

    /// Like [`Faults::lose_response`], but the response is replaced by `status` (e.g. a 502
    /// from a proxy in front of exe.dev) with an `{"error":…}` body.
    pub fn lose_response_with_status(&self, cmd: &str, status: u16, times: u32) {
        self.lock()
            .lost
            .insert(cmd.to_owned(), (Some(status), times));
    }

    /// The next `times` calls of `cmd` are never answered, and the command runs only `after`
    /// once the client has given up on the request (closed its connection): a `new` whose VM
    /// appears `after` after the request was abandoned, as exe.dev keeps working on it.
    pub fn complete_after_abandon(&self, cmd: &str, after: Duration, times: u32) {
        self.lock().abandoned.insert(cmd.to_owned(), (after, times));
    }

    /// The next `times` SSH connections to `vm` (or any VM with [`ANY`]) are accepted and closed
    /// at once, before the SSH version exchange; connections already open to it are cut now,
    /// as a network blip would, so a pooled (ControlMaster) connection cannot hide the fault.
    pub fn drop_ssh(&self, vm: &str, times: u32) {
        self.lock().ssh_drops.insert(vm.to_owned(), times);
        if let Some(hook) = &*self.disconnect.lock().unwrap_or_else(|e| e.into_inner()) {
            hook(vm);
        }
    }

    pub(crate) fn set_disconnect_hook(&self, hook: DisconnectHook) {
        *self.disconnect.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// While on, every exec on `vm` (or every VM with [`ANY`]) prints [`ONBOARDING_MARKER`] to
    /// stdout and exits 1, as exe.dev does for an unregistered SSH key.
    pub fn set_onboarding(&self, vm: &str, on: bool) {
        self.lock().onboarding.insert(vm.to_owned(), on);
    }

    /// VMs created from now on start listening for SSH only after `delay` (connections are
    /// refused until then; the ssh config entry exists at once and `ls` says `starting`).
    pub fn set_ssh_ready_delay(&self, delay: Option<Duration>) {
        self.lock().ready_delay = delay;
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    pub(crate) fn take_api_failure(&self, cmd: &str) -> Option<ApiFault> {
        let mut s = self.lock();
        if let Some((retry_after_secs, _)) = take_counted(&mut s.rate_limits, cmd) {
            return Some(ApiFault::RateLimited { retry_after_secs });
        }
        for key in [cmd, ANY] {
            if let Some(list) = s.failures.get_mut(key) {
                if let Some(f) = list.iter_mut().find(|f| f.remaining > 0) {
                    f.remaining -= 1;
                    return Some(ApiFault::Fail {
                        status: f.status,
                        body: f.body.clone(),
                    });
                }
            }
        }
        None
    }

    pub(crate) fn api_delay(&self, cmd: &str) -> Option<Duration> {
        let s = self.lock();
        s.delays.get(cmd).or_else(|| s.delays.get(ANY)).copied()
    }

    /// `Some(None)`: drop the connection; `Some(Some(status))`: answer that status instead.
    pub(crate) fn take_lost_response(&self, cmd: &str) -> Option<Option<u16>> {
        take_counted(&mut self.lock().lost, cmd).map(|(status, _)| status)
    }

    /// `Some(after)`: hold the request unanswered; run the command `after` it is abandoned.
    pub(crate) fn take_abandoned(&self, cmd: &str) -> Option<Duration> {
        take_counted(&mut self.lock().abandoned, cmd).map(|(after, _)| after)
    }

    pub(crate) fn take_ssh_drop(&self, vm: &str) -> bool {
        let mut s = self.lock();
        for key in [vm, ANY] {
            if let Some(n) = s.ssh_drops.get_mut(key) {
                if *n > 0 {
                    *n -= 1;
                    return true;
                }
            }
        }
        false
    }

    pub(crate) fn onboarding(&self, vm: &str) -> bool {
        let s = self.lock();
        s.onboarding.get(vm).copied().unwrap_or(false)
            || s.onboarding.get(ANY).copied().unwrap_or(false)
    }

    pub(crate) fn ready_delay(&self) -> Option<Duration> {
        self.lock().ready_delay
    }
}

fn take_counted<T: Clone>(map: &mut HashMap<String, (T, u32)>, cmd: &str) -> Option<(T, u32)> {
    for key in [cmd, ANY] {
        if let Some((v, n)) = map.get_mut(key) {
            if *n > 0 {
                *n -= 1;
                return Some((v.clone(), *n));
            }
        }
    }
    None
}

/// exe.dev's error texts for the statuses tests usually inject.
pub(crate) fn default_error_text(status: u16) -> &'static str {
    match status {
        400 => "bad request",
        401 => "invalid token",
        403 => "command not allowed by token permissions",
        404 => "unknown command",
        409 => "conflict",
        422 => "command failed",
        429 => "rate limit exceeded",
        502 => "bad gateway",
        503 => "service unavailable",
        504 => "command timed out",
        _ => "internal error",
    }
}
