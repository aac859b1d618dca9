//! Builds the installable Paperclip plugin folder (`paperclip-wasm-host package --out DIR`).
//!
//! Paperclip runs every worker as `node <entrypoint>` and imports the manifest as a JS module,
//! so the folder is a tiny npm-style package around the native host:
//!
//! ```text
//! DIR/
//!   package.json               "type": "module", paperclipPlugin.{manifest,worker}
//!   dist/manifest.js           export default {…}: manifest.json minus host-only keys
//!   dist/worker.js             launcher: execs (or spawns) bin/paperclip-wasm-host worker …
//!   bin/paperclip-wasm-host    the host binary (0755)
//!   bin/paperclip_exe_dev.wasm the provider component
//!   bin/manifest.json          the full manifest, which the host reads its grants from
//!   bin/worker-args.json       optional, written by the operator: extra `worker` flags
//! ```
//!
//! Paperclip starts the worker with no arguments and a scrubbed environment, so operator flags
//! (`--state-dir`, `--allow-http`, `--allow-ssh`, `--ssh-config`, …) can only reach the host
//! through the package itself: the launcher appends the JSON array of strings in
//! `bin/worker-args.json` when that file exists (a malformed file makes it exit 78, EX_CONFIG,
//! rather than run with flags silently dropped).
//!
//! Every file is written to a temporary name and renamed into place, so re-packaging over a
//! folder whose worker is running never hits "text file busy" and never leaves a torn file.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use paperclip_wasm_runtime::policy::{Policy, MANIFEST_GRANTS_KEY};

/// The npm package name. Paperclip passes `EXE_API_KEY` through only to this exact name (with
/// driver key `exe-dev`, installed from the registry or the bundled catalog).
pub const PACKAGE_NAME: &str = "@paperclipai/plugin-exe-dev";

/// File name of the host binary inside `bin/`.
pub const HOST_BINARY_NAME: &str = "paperclip-wasm-host";

/// Where the host binary goes in the package.
const HOST_BINARY_PATH: &str = "bin/paperclip-wasm-host";

/// File name of the component inside `bin/`.
pub const COMPONENT_NAME: &str = "paperclip_exe_dev.wasm";

/// Where the component goes in the package.
const COMPONENT_PATH: &str = "bin/paperclip_exe_dev.wasm";

/// The worker entrypoint the manifest must declare (the launcher this module writes).
pub const WORKER_ENTRYPOINT: &str = "./dist/worker.js";

/// The `worker-args.json` that configures the worker binary `exe`, when `exe` sits in an
/// installed plugin package's `bin/` (beside the package's `manifest.json`).
pub fn worker_args_beside(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    bin.join("manifest.json")
        .is_file()
        .then(|| bin.join("worker-args.json"))
}

/// Build the plugin folder at `out` (created if missing; files this function owns are
/// replaced, anything else in the folder is left alone), with a `SHA256SUMS` of every file it
/// wrote. Returns each file (relative path) with its SHA-256.
///
/// Fails without writing anything when the manifest is unusable: not an object, no `id` /
/// `version`, a worker entrypoint other than [`WORKER_ENTRYPOINT`], or malformed host grants.
pub fn build_package(
    out: &Path,
    host_binary: &Path,
    component_wasm: &Path,
    manifest_json: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let manifest_text = std::fs::read_to_string(manifest_json)
        .with_context(|| format!("reading {}", manifest_json.display()))?;
    let manifest: Value = serde_json::from_str(&manifest_text)
        .with_context(|| format!("parsing {}", manifest_json.display()))?;
    let js_manifest = paperclip_manifest(&manifest)?;
    // The grants must parse now, not at the first worker start on an operator's server.
    Policy::from_manifest(&manifest, &[], &[]).context("the manifest's host grants")?;
    let host = std::fs::read(host_binary)
        .with_context(|| format!("reading the host binary {}", host_binary.display()))?;
    let wasm = std::fs::read(component_wasm)
        .with_context(|| format!("reading the component {}", component_wasm.display()))?;

    let dist = out.join("dist");
    let bin = out.join("bin");
    for dir in [out, &dist, &bin] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let package_json = serde_json::to_string_pretty(&package_json(&manifest)?)? + "\n";
    let manifest_js = manifest_module(&js_manifest)?;
    let files: [(&str, &[u8], u32); 6] = [
        ("package.json", package_json.as_bytes(), 0o644),
        ("dist/manifest.js", manifest_js.as_bytes(), 0o644),
        ("dist/worker.js", WORKER_JS.as_bytes(), 0o644),
        (HOST_BINARY_PATH, &host, 0o755),
        (COMPONENT_PATH, &wasm, 0o644),
        ("bin/manifest.json", manifest_text.as_bytes(), 0o644),
    ];
    let mut sums = String::new();
    let mut digests = Vec::new();
    for (name, bytes, mode) in files {
        write_atomic(&out.join(name), bytes, mode)?;
        let digest = paperclip_wasm_runtime::hex::hex(&Sha256::digest(bytes));
        sums.push_str(&format!("{digest}  {name}\n"));
        digests.push((name.to_string(), digest));
    }
    // `sha256sum -c SHA256SUMS` in the folder checks what was installed.
    write_atomic(&out.join(SUMS_FILE), sums.as_bytes(), 0o644)?;
    Ok(digests)
}

/// The digest list `build_package` writes beside what it wrote.
pub const SUMS_FILE: &str = "SHA256SUMS";

/// The manifest as Paperclip sees it: host-only keys (`x-wasm-host`, any other top-level
/// `x-…` key) removed, because Paperclip's validator may reject unknown keys.
pub fn paperclip_manifest(manifest: &Value) -> anyhow::Result<Value> {
    let obj = manifest
        .as_object()
        .context("the manifest must be a JSON object")?;
    for key in ["id", "version"] {
        ensure!(
            obj.get(key)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty()),
            "the manifest needs a non-empty string `{key}`"
        );
    }
    let worker = manifest
        .pointer("/entrypoints/worker")
        .and_then(Value::as_str);
    if worker != Some(WORKER_ENTRYPOINT) {
        bail!("the manifest's entrypoints.worker must be {WORKER_ENTRYPOINT:?} (the launcher the package provides), found {worker:?}");
    }
    let stripped: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| k.as_str() != MANIFEST_GRANTS_KEY && !k.starts_with("x-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Value::Object(stripped))
}

fn package_json(manifest: &Value) -> anyhow::Result<Value> {
    let version = manifest["version"].as_str().unwrap_or("0.0.0");
    let description = manifest["description"].as_str().unwrap_or("");
    // npm's names for the platform the native host binary was built for.
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    Ok(json!({
        "name": PACKAGE_NAME,
        "version": version,
        "description": description,
        "type": "module",
        "license": "MIT",
        "os": [std::env::consts::OS],
        "cpu": [cpu],
        "files": ["dist", "bin"],
        "paperclipPlugin": {
            "manifest": "./dist/manifest.js",
            "worker": WORKER_ENTRYPOINT,
        },
    }))
}

fn manifest_module(manifest: &Value) -> anyhow::Result<String> {
    // JSON is a JS expression (ES2019+ accepts U+2028/2029 in strings too).
    let body = serde_json::to_string_pretty(manifest)?;
    Ok(format!(
        "// Generated from manifest.json by `paperclip-wasm-host package`; do not edit.\n\
         const manifest = {body};\n\nexport default manifest;\n"
    ))
}

/// Write `bytes` to a temp file next to `path`, set `mode`, fsync, rename over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().context("a file path has a parent")?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pkg-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("moving {} into place", path.display()))?;
    Ok(())
}

/// `dist/worker.js`: the launcher Paperclip forks with `node`.
///
/// - Finds the host and the component next to itself via `import.meta.url` (the server's cwd is
///   arbitrary), and appends the operator's optional `bin/worker-args.json` flags.
/// - Removes `NODE_CHANNEL_FD` / `NODE_CHANNEL_SERIALIZATION_MODE`, which `fork` adds and which
///   would make any Node code the host might start try to adopt the IPC channel.
/// - `process.execve` (Node >= 22.15) replaces the launcher, so the host keeps the pid and stdio
///   and receives Paperclip's SIGTERM/SIGKILL directly. Otherwise it spawns the host with
///   inherited stdio, forwards SIGTERM/SIGINT/SIGHUP and exits with the host's status.
/// - Never touches `process.stdin/stdout/stderr`: stdout carries the host's JSON-RPC lines, and
///   Node's stdio streams could switch the shared descriptors to non-blocking mode.
pub const WORKER_JS: &str = r#"// Generated by `paperclip-wasm-host package`; do not edit.
// Paperclip forks this file with node; it only hands over to the native host. It never writes to
// stdout (JSON-RPC only) or stderr.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { constants } from "node:os";
import { fileURLToPath } from "node:url";

const bin = (name) => fileURLToPath(new URL(`../bin/${name}`, import.meta.url));
const host = bin("paperclip-wasm-host");

// Optional operator flags (Paperclip passes no arguments): a JSON array of strings.
let extra = [];
try {
  extra = JSON.parse(readFileSync(bin("worker-args.json"), "utf8"));
} catch (error) {
  if (error?.code !== "ENOENT") process.exit(78);
}
if (!Array.isArray(extra) || !extra.every((arg) => typeof arg === "string")) process.exit(78);

const args = [
  "worker",
  "--component",
  bin("paperclip_exe_dev.wasm"),
  "--manifest",
  bin("manifest.json"),
  ...extra,
];

const env = { ...process.env };
delete env.NODE_CHANNEL_FD;
delete env.NODE_CHANNEL_SERIALIZATION_MODE;

if (typeof process.execve === "function") {
  process.execve(host, [host, ...args], env);
} else {
  const child = spawn(host, args, { stdio: ["inherit", "inherit", "inherit"], env });
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    process.on(signal, () => {
      try {
        child.kill(signal);
      } catch {
        // The host is already gone; its exit handler ends this process.
      }
    });
  }
  child.on("error", () => process.exit(127));
  child.on("exit", (code, signal) => {
    if (code !== null) process.exit(code);
    process.exit(128 + (constants.signals[signal] ?? 0));
  });
  // fork() opened an IPC channel to this process that nobody uses; it must not keep the
  // launcher alive after the host exits.
  process.channel?.unref?.();
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Value {
        json!({
            "id": "paperclip.exe-dev-sandbox-provider",
            "version": "0.1.0",
            "entrypoints": {"worker": "./dist/worker.js"},
            "x-wasm-host": {"http": ["https://exe.dev:443"]},
            "x-other": 1,
        })
    }

    #[test]
    fn host_only_keys_are_stripped() {
        let m = paperclip_manifest(&manifest()).unwrap();
        assert!(m.get("x-wasm-host").is_none());
        assert!(m.get("x-other").is_none());
        assert_eq!(m["id"], "paperclip.exe-dev-sandbox-provider");
    }

    #[test]
    fn wrong_entrypoint_or_missing_id_is_refused() {
        let mut m = manifest();
        m["entrypoints"]["worker"] = json!("./worker.js");
        assert!(paperclip_manifest(&m).is_err());
        let mut m = manifest();
        m.as_object_mut().unwrap().remove("id");
        assert!(paperclip_manifest(&m).is_err());
        assert!(paperclip_manifest(&json!([])).is_err());
    }

    #[test]
    fn repo_manifest_is_packageable() {
        let text = include_str!("../../../manifest.json");
        let m: Value = serde_json::from_str(text).unwrap();
        paperclip_manifest(&m).unwrap();
        Policy::from_manifest(&m, &[], &[]).unwrap();
    }

    #[test]
    fn worker_args_are_found_beside_a_packaged_binary() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("paperclip-wasm-host");
        assert_eq!(worker_args_beside(&exe), None);
        std::fs::write(dir.path().join("manifest.json"), "{}").unwrap();
        assert_eq!(
            worker_args_beside(&exe),
            Some(dir.path().join("worker-args.json"))
        );
    }
}
