//! The host's private state directory: compiled-component cache, SSH `known_hosts`, temp keys.
//!
//! Under Paperclip the worker runs without `HOME`, so the location never depends on it unless
//! nothing better is given.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// Pick the state directory: the explicit flag, else `$XDG_STATE_HOME` / `$HOME/.local/state`,
/// else a per-user directory under the system temp dir.
pub fn resolve(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("paperclip-wasm-host");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/paperclip-wasm-host");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("paperclip-wasm-host-{uid}"))
}

/// Create `dir` (and parents) with mode 0700 if missing, and refuse one that another user
/// owns or that others can read: it holds known_hosts and, briefly, private keys.
pub fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let meta = std::fs::metadata(dir)?;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        bail!(
            "state directory {} belongs to another user; pass --state-dir",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
