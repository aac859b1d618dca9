//! Nothing accumulates on the VM: a spool is removed as soon as the host acknowledged its
//! result; what is left (the host gave up, or never came back) is swept here, at most once a
//! minute, by whichever request comes next.
//!
//! Each spool is bounded in size by the output cap (the keeper keeps at most the cap plus one
//! byte per stream, plus the command's stdin), and in age by [`MAX_AGE`] once its command ended.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::spool::Run;
use crate::sys;

/// How long an ended run's spool waits for a host that may still come back for it.
const MAX_AGE: Duration = Duration::from_secs(3600);
/// Sweep at most this often.
const EVERY: Duration = Duration::from_secs(60);

/// Sweep `root` unless it was swept less than [`EVERY`] ago.
pub(crate) fn maybe_sweep(root: &Path) {
    let stamp = root.join(".swept");
    let now = SystemTime::now();
    let recent = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() < EVERY);
    if recent || std::fs::write(&stamp, b"").is_err() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .filter(|n| n.len() == 16)
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        else {
            continue;
        };
        let run = Run::new(root, id);
        if stale(&run, now) {
            run.remove();
        }
    }
}

/// An ended run older than [`MAX_AGE`], or one whose keeper is gone (or never came) that old.
fn stale(run: &Run, now: SystemTime) -> bool {
    let age = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .map(|t| now.duration_since(t).unwrap_or_default())
            .unwrap_or_default()
    };
    if run.path("status").exists() {
        return age(&run.path("status")) > MAX_AGE;
    }
    let running = run.keeper_pid().is_some_and(sys::alive);
    !running && age(&run.dir) > MAX_AGE
}
