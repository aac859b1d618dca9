//! The shipped Paperclip plugin: the npm packages an operator installs by name, and the folder
//! an operator who builds from source installs by path (`paperclip-wasm-host package`).
//!
//! Paperclip runs every worker as `node <entrypoint>` and imports the manifest as a JS module,
//! so the plugin is a tiny npm package around the native host. Published to npm
//! ([`build_npm`], `package --npm DIR`), it is three packages of one version:
//!
//! ```text
//! @paperclipai/plugin-exe-dev              (any platform)
//!   package.json               "type": "module", paperclipPlugin.{manifest,worker},
//!                              optionalDependencies: the host packages below, same version
//!   dist/manifest.js           export default {…}: manifest.json minus host-only keys
//!   dist/worker.js             launcher: finds this platform's host package, execs (or spawns)
//!                              its bin/paperclip-wasm-host worker …
//!   bin/paperclip_exe_dev.wasm the provider component
//!   bin/manifest.json          the full manifest, which the host reads its grants from
//!   bin/worker-args.json       optional, written by the operator: extra `worker` flags
//!   SHA256SUMS
//! @paperclipai/plugin-exe-dev-linux-x64    os ["linux"], cpu ["x64"]
//! @paperclipai/plugin-exe-dev-linux-arm64  os ["linux"], cpu ["arm64"]
//!   package.json
//!   bin/paperclip-wasm-host    the static host binary (0755)
//!   SHA256SUMS
//! ```
//!
//! npm installs only the host package whose `os`/`cpu` match (Paperclip installs with
//! `--ignore-scripts`, so nothing may depend on an install script), and the launcher finds it by
//! Node's module resolution. On a platform with no host package the launcher exits with one line
//! on stderr (which Paperclip shows in the plugin's error) saying so and how to build from source.
//!
//! The folder ([`build_package`], `package --out DIR`) is the main package with the host in its
//! own `bin/`, which the launcher prefers when present.
//!
//! Paperclip starts the worker with no arguments and a scrubbed environment, so operator flags
//! (`--state-dir`, `--allow-http`, `--allow-ssh`, `--ssh-config`, …) can only reach the host
//! through the package itself: the launcher appends the JSON array of strings in
//! `bin/worker-args.json` when that file exists (a malformed file makes it exit 78, EX_CONFIG,
//! rather than run with flags silently dropped).
//!
//! Every file is written to a temporary name and renamed into place, so re-packaging over a
//! folder whose worker is running never hits "text file busy" and never leaves a torn file.
//! One version, the manifest's `version`, names every package (and the worker crate's version
//! must equal it; a test holds them together).

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

/// The launcher's exit status when this platform has no host (EX_UNAVAILABLE).
pub const EXIT_NO_HOST: i32 = 69;

/// A platform the npm release ships a prebuilt, static host for.
#[derive(Debug, PartialEq, Eq)]
pub struct Platform {
    /// `<process.platform>-<process.arch>` as Node names them: the launcher's key and the
    /// suffix of the host package's name.
    pub key: &'static str,
    /// npm's `os` and `cpu` for the host package.
    pub os: &'static str,
    pub cpu: &'static str,
    /// The Rust target the host is built for (`cargo dist --npm`).
    pub rust_target: &'static str,
    /// ELF `e_machine` of a host binary for this platform.
    elf_machine: u16,
}

/// Every platform with a host package, in the order the launcher names them.
pub const PLATFORMS: &[Platform] = &[
    Platform {
        key: "linux-x64",
        os: "linux",
        cpu: "x64",
        rust_target: "x86_64-unknown-linux-musl",
        elf_machine: object::elf::EM_X86_64,
    },
    Platform {
        key: "linux-arm64",
        os: "linux",
        cpu: "arm64",
        rust_target: "aarch64-unknown-linux-musl",
        elf_machine: object::elf::EM_AARCH64,
    },
];

impl Platform {
    /// The platform named `key` (`linux-x64`, …).
    pub fn by_key(key: &str) -> Option<&'static Platform> {
        PLATFORMS.iter().find(|p| p.key == key)
    }

    /// The platform this binary was built for, when it is one of [`PLATFORMS`].
    pub fn current() -> Option<&'static Platform> {
        let cpu = match std::env::consts::ARCH {
            "x86_64" => "x64",
            "aarch64" => "arm64",
            other => other,
        };
        PLATFORMS
            .iter()
            .find(|p| p.os == std::env::consts::OS && p.cpu == cpu)
    }

    /// The npm name of this platform's host package.
    pub fn package_name(&self) -> String {
        format!("{PACKAGE_NAME}-{}", self.key)
    }

    /// Check that `binary` can be this platform's host: an ELF executable for its architecture
    /// with no program interpreter (statically linked), so it starts whatever the C library of
    /// the Paperclip host.
    pub fn check_host_binary(&self, binary: &Path) -> anyhow::Result<()> {
        use object::read::elf::{FileHeader as _, ProgramHeader as _};
        let bytes = std::fs::read(binary)
            .with_context(|| format!("reading the host binary {}", binary.display()))?;
        let what = || format!("{} (for {})", binary.display(), self.key);
        let header = object::elf::FileHeader64::<object::Endianness>::parse(&*bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a 64-bit ELF file: {e}", what()))?;
        let endian = header
            .endian()
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        let machine = header.e_machine(endian);
        ensure!(
            machine == self.elf_machine,
            "{} is built for another architecture (ELF machine {machine}, expected {}); build it with --target {}",
            what(),
            self.elf_machine,
            self.rust_target
        );
        let headers = header
            .program_headers(endian, &*bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", what()))?;
        ensure!(
            headers
                .iter()
                .all(|h| h.p_type(endian) != object::elf::PT_INTERP),
            "{} is dynamically linked (it has a program interpreter); the npm host must be static: build it with --target {}",
            what(),
            self.rust_target
        );
        Ok(())
    }
}

/// The `worker-args.json` that configures the worker binary `exe`, when `exe` sits in an
/// installed plugin package's `bin/` (beside the package's `manifest.json`).
pub fn worker_args_beside(exe: &Path) -> Option<PathBuf> {
    let bin = exe.parent()?;
    bin.join("manifest.json")
        .is_file()
        .then(|| bin.join("worker-args.json"))
}

/// The `worker-args.json` of the plugin package whose `bin/manifest.json` is `manifest` (what
/// the launcher passes as `--manifest`): the launcher reads the flags from beside it. An npm
/// install's host lives in another package, so its own directory cannot tell.
pub fn worker_args_beside_manifest(manifest: &Path) -> Option<PathBuf> {
    let bin = manifest.parent()?;
    let in_package = manifest.file_name()? == "manifest.json"
        && bin.file_name()? == "bin"
        && bin.parent()?.join("package.json").is_file();
    in_package.then(|| bin.join("worker-args.json"))
}

/// One file of a package: its path in the package, its bytes, its mode.
struct PackageFile {
    path: String,
    bytes: Vec<u8>,
    mode: u32,
}

impl PackageFile {
    fn new(path: &str, bytes: impl Into<Vec<u8>>, mode: u32) -> Self {
        Self {
            path: path.to_string(),
            bytes: bytes.into(),
            mode,
        }
    }
}

/// The manifest as read from `manifest_json`: its text and its parsed, checked form.
struct Manifest {
    text: String,
    value: Value,
    /// The version of every package (the manifest's `version`).
    version: String,
}

fn read_manifest(manifest_json: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(manifest_json)
        .with_context(|| format!("reading {}", manifest_json.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", manifest_json.display()))?;
    paperclip_manifest(&value)?;
    // The grants must parse now, not at the first worker start on an operator's server.
    Policy::from_manifest(&value, &[], &[]).context("the manifest's host grants")?;
    let version = value["version"].as_str().unwrap_or_default().to_string();
    Ok(Manifest {
        text,
        value,
        version,
    })
}

/// The files of the main package except `package.json` (which differs between the folder and
/// the npm package).
fn main_files(manifest: &Manifest, component_wasm: &Path) -> anyhow::Result<Vec<PackageFile>> {
    let wasm = std::fs::read(component_wasm)
        .with_context(|| format!("reading the component {}", component_wasm.display()))?;
    Ok(vec![
        PackageFile::new(
            "dist/manifest.js",
            manifest_module(&paperclip_manifest(&manifest.value)?)?,
            0o644,
        ),
        PackageFile::new("dist/worker.js", worker_js(), 0o644),
        PackageFile::new(COMPONENT_PATH, wasm, 0o644),
        PackageFile::new("bin/manifest.json", manifest.text.as_bytes(), 0o644),
    ])
}

/// `SHA256SUMS` of `files` (`sha256sum -c SHA256SUMS` in the package checks an installation),
/// and each file with its digest.
fn sums(files: &[PackageFile]) -> (PackageFile, Vec<(String, String)>) {
    let digests: Vec<(String, String)> = files
        .iter()
        .map(|f| {
            let digest = paperclip_wasm_runtime::hex::hex(&Sha256::digest(&f.bytes));
            (f.path.clone(), digest)
        })
        .collect();
    let text: String = digests
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect();
    (PackageFile::new(SUMS_FILE, text, 0o644), digests)
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
    let manifest = read_manifest(manifest_json)?;
    let host = std::fs::read(host_binary)
        .with_context(|| format!("reading the host binary {}", host_binary.display()))?;
    let package_json = json_file(&folder_package_json(&manifest.value))?;
    let mut files = vec![PackageFile::new("package.json", package_json, 0o644)];
    let mut rest = main_files(&manifest, component_wasm)?;
    rest.insert(2, PackageFile::new(HOST_BINARY_PATH, host, 0o755));
    files.extend(rest);
    let (sums_file, digests) = sums(&files);
    files.push(sums_file);
    for dir in [out, &out.join("dist"), &out.join("bin")] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for file in &files {
        write_atomic(&out.join(&file.path), &file.bytes, file.mode)?;
    }
    Ok(digests)
}

/// One tarball [`build_npm`] wrote.
#[derive(Debug)]
pub struct Tarball {
    /// The npm package it holds.
    pub package: String,
    /// Its file name in the output folder (npm's `<scope>-<name>-<version>.tgz`).
    pub file_name: String,
    /// The SHA-256 of the tarball.
    pub sha256: String,
    /// Each file in the package with its SHA-256 (as in its `SHA256SUMS`).
    pub files: Vec<(String, String)>,
}

/// Write the npm release into `out` (created if missing): `npm pack`-format tarballs of the
/// main package and of one host package per entry of [`PLATFORMS`], all at the manifest's
/// version, plus a `SHA256SUMS` of the tarballs. `hosts` gives the host binary of every
/// platform (checking that each fits its platform is [`Platform::check_host_binary`]'s job).
///
/// Fails without writing anything when the manifest is unusable or a platform has no host.
pub fn build_npm(
    out: &Path,
    hosts: &[(&Platform, PathBuf)],
    component_wasm: &Path,
    manifest_json: &Path,
) -> anyhow::Result<Vec<Tarball>> {
    let manifest = read_manifest(manifest_json)?;
    for platform in PLATFORMS {
        let n = hosts.iter().filter(|(p, _)| *p == platform).count();
        ensure!(
            n == 1,
            "the npm release needs exactly one host binary for {} (got {n})",
            platform.key
        );
    }
    let mut packages = Vec::new();
    let mut main = vec![PackageFile::new(
        "package.json",
        json_file(&npm_package_json(&manifest.value, &manifest.version))?,
        0o644,
    )];
    main.extend(main_files(&manifest, component_wasm)?);
    packages.push((PACKAGE_NAME.to_string(), main));
    for platform in PLATFORMS {
        let (_, path) = hosts
            .iter()
            .find(|(p, _)| *p == platform)
            .expect("checked above");
        let host = std::fs::read(path).with_context(|| {
            format!(
                "reading the {} host binary {}",
                platform.key,
                path.display()
            )
        })?;
        let package_json = json_file(&host_package_json(
            platform,
            &manifest.value,
            &manifest.version,
        ))?;
        packages.push((
            platform.package_name(),
            vec![
                PackageFile::new("package.json", package_json, 0o644),
                PackageFile::new(HOST_BINARY_PATH, host, 0o755),
            ],
        ));
    }

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tarballs = Vec::new();
    for (package, mut files) in packages {
        let (sums_file, digests) = sums(&files);
        files.push(sums_file);
        let tgz = npm_tarball(&files)?;
        let file_name = format!(
            "{}-{}.tgz",
            package.trim_start_matches('@').replace('/', "-"),
            manifest.version
        );
        write_atomic(&out.join(&file_name), &tgz, 0o644)?;
        tarballs.push(Tarball {
            package,
            file_name,
            sha256: paperclip_wasm_runtime::hex::hex(&Sha256::digest(&tgz)),
            files: digests,
        });
    }
    let list: String = tarballs
        .iter()
        .map(|t| format!("{}  {}\n", t.sha256, t.file_name))
        .collect();
    write_atomic(&out.join(SUMS_FILE), list.as_bytes(), 0o644)?;
    Ok(tarballs)
}

/// A gzipped tar of `files` under `package/`, as `npm pack` writes it: regular files only, owner
/// 0, npm's fixed timestamp (1985-10-26T08:15:00Z), so the same inputs give the same bytes.
fn npm_tarball(files: &[PackageFile]) -> anyhow::Result<Vec<u8>> {
    const NPM_MTIME: u64 = 499_162_500;
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    for file in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(format!("package/{}", file.path))?;
        header.set_size(file.bytes.len() as u64);
        header.set_mode(file.mode);
        header.set_mtime(NPM_MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, &*file.bytes)
            .with_context(|| format!("adding {} to a tarball", file.path))?;
    }
    Ok(tar.into_inner()?.finish()?)
}

/// The digest list `build_package` (in the folder) and `build_npm` (in every package and beside
/// the tarballs) write.
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

fn json_file(value: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

/// The fields every main `package.json` has.
fn main_package_json(manifest: &Value) -> Map<String, Value> {
    let version = manifest["version"].as_str().unwrap_or("0.0.0");
    let description = manifest["description"].as_str().unwrap_or("");
    let Value::Object(map) = json!({
        "name": PACKAGE_NAME,
        "version": version,
        "description": description,
        "type": "module",
        "license": "MIT",
        "paperclipPlugin": {
            "manifest": "./dist/manifest.js",
            "worker": WORKER_ENTRYPOINT,
        },
    }) else {
        unreachable!("a JSON object literal")
    };
    map
}

/// The folder's `package.json`: the host in `bin/` is for the platform this binary was built
/// for.
fn folder_package_json(manifest: &Value) -> Value {
    let cpu = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut map = main_package_json(manifest);
    map.insert("os".into(), json!([std::env::consts::OS]));
    map.insert("cpu".into(), json!([cpu]));
    map.insert("files".into(), json!(["dist", "bin", SUMS_FILE]));
    Value::Object(map)
}

/// The npm main package's `package.json`: any platform; the hosts are optional dependencies
/// pinned to exactly this version, of which npm installs the one matching the machine.
fn npm_package_json(manifest: &Value, version: &str) -> Value {
    let mut map = main_package_json(manifest);
    map.insert("files".into(), json!(["dist", "bin", SUMS_FILE]));
    let hosts: Map<String, Value> = PLATFORMS
        .iter()
        .map(|p| (p.package_name(), json!(version)))
        .collect();
    map.insert("optionalDependencies".into(), Value::Object(hosts));
    Value::Object(map)
}

/// A host package's `package.json`: npm installs it only on its `os`/`cpu`.
fn host_package_json(platform: &Platform, manifest: &Value, version: &str) -> Value {
    let name = manifest["displayName"].as_str().unwrap_or("exe.dev");
    json!({
        "name": platform.package_name(),
        "version": version,
        "description": format!(
            "The static {} host of {PACKAGE_NAME} (the {name} sandbox provider for Paperclip); installed by that package, not used alone.",
            platform.key
        ),
        "license": "MIT",
        "os": [platform.os],
        "cpu": [platform.cpu],
        "files": ["bin", SUMS_FILE],
        "preferUnplugged": true,
    })
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

/// `dist/worker.js`: the launcher Paperclip forks with `node` ([`WORKER_JS`] with the platform
/// table filled in).
pub fn worker_js() -> String {
    let supported: Vec<&str> = PLATFORMS.iter().map(|p| p.key).collect();
    WORKER_JS
        .replace(
            "@SUPPORTED@",
            &serde_json::to_string(&supported).expect("strings"),
        )
        .replace("@PACKAGE@", PACKAGE_NAME)
        .replace("@EXIT_NO_HOST@", &EXIT_NO_HOST.to_string())
}

/// The launcher's template (see [`worker_js`]).
///
/// - Finds the host: `bin/paperclip-wasm-host` of its own package when there is one (a folder
///   built from source), else the binary of `@paperclipai/plugin-exe-dev-<platform>-<arch>`,
///   resolved with Node's module resolution from this file. When neither exists it writes one
///   line on stderr (the platform, the supported ones, how to build from source) and exits
///   with EX_UNAVAILABLE; Paperclip shows the line in the plugin's error.
/// - Finds the component and the manifest next to itself via `import.meta.url` (the server's
///   cwd is arbitrary), and appends the operator's optional `bin/worker-args.json` flags.
/// - Removes `NODE_CHANNEL_FD` / `NODE_CHANNEL_SERIALIZATION_MODE`, which `fork` adds and which
///   would make any Node code the host might start try to adopt the IPC channel.
/// - `process.execve` (Node >= 22.15) replaces the launcher, so the host keeps the pid and stdio
///   and receives Paperclip's SIGTERM/SIGKILL directly. Otherwise it spawns the host with
///   inherited stdio, forwards SIGTERM/SIGINT/SIGHUP and exits with the host's status.
/// - Never touches `process.stdin/stdout/stderr`: stdout carries the host's JSON-RPC lines, and
///   Node's stdio streams could switch the shared descriptors to non-blocking mode.
const WORKER_JS: &str = r#"// Generated by `paperclip-wasm-host package`; do not edit.
// Paperclip forks this file with node; it only hands over to the native host. It never writes to
// stdout (JSON-RPC only), and to stderr only the one line saying this platform has no host.
import { spawn } from "node:child_process";
import { existsSync, readFileSync, writeSync } from "node:fs";
import { createRequire } from "node:module";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const bin = (name) => fileURLToPath(new URL(`../bin/${name}`, import.meta.url));

// The native host: this package's own (a folder built from source), else the host package npm
// installed for this platform (an optional dependency of this one).
const SUPPORTED = @SUPPORTED@;
const platform = `${process.platform}-${process.arch}`;
function noHost(reason) {
  writeSync(
    2,
    `@PACKAGE@: ${reason}; prebuilt hosts exist for ${SUPPORTED.join(" and ")}. ` +
      "On other platforms build the plugin from source (`cargo dist --out DIR` in the " +
      "paperclip-exe-dev repository) and install that folder as a local path.\n",
  );
  process.exit(@EXIT_NO_HOST@);
}
function findHost() {
  const own = bin("paperclip-wasm-host");
  if (existsSync(own)) return own;
  if (!SUPPORTED.includes(platform)) noHost(`no native host for ${platform}`);
  const pkg = `@PACKAGE@-${platform}`;
  let dir;
  try {
    dir = dirname(createRequire(import.meta.url).resolve(`${pkg}/package.json`));
  } catch {
    noHost(`the native host for ${platform}, package ${pkg}, is not installed (reinstall the plugin with optional dependencies)`);
  }
  return join(dir, "bin", "paperclip-wasm-host");
}
const host = findHost();

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
        // One version: the packages take the manifest's, and the host reports its crate's.
        assert_eq!(
            m["version"],
            env!("CARGO_PKG_VERSION"),
            "manifest.json's version and the worker crate's version must be bumped together"
        );
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

    #[test]
    fn worker_args_are_found_beside_a_packaged_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let manifest = bin.join("manifest.json");
        std::fs::write(&manifest, "{}").unwrap();
        // Not in a package (no package.json above bin/), or not named manifest.json: none.
        assert_eq!(worker_args_beside_manifest(&manifest), None);
        std::fs::write(dir.path().join("package.json"), "{}").unwrap();
        assert_eq!(
            worker_args_beside_manifest(&manifest),
            Some(bin.join("worker-args.json"))
        );
        assert_eq!(worker_args_beside_manifest(&bin.join("other.json")), None);
        assert_eq!(
            worker_args_beside_manifest(&dir.path().join("manifest.json")),
            None
        );
    }

    #[test]
    fn host_binaries_must_be_static_and_for_their_platform() {
        let x64 = Platform::by_key("linux-x64").unwrap();
        let arm64 = Platform::by_key("linux-arm64").unwrap();
        assert_eq!(
            arm64.package_name(),
            "@paperclipai/plugin-exe-dev-linux-arm64"
        );
        assert_eq!(
            Platform::current(),
            Some(x64),
            "these tests run on x86_64 Linux"
        );
        // The VM agent is a static x86_64 musl executable.
        let agent = Path::new(env!("PAPERCLIP_VM_AGENT"));
        x64.check_host_binary(agent).unwrap();
        let err = arm64.check_host_binary(agent).unwrap_err().to_string();
        assert!(
            err.contains("another architecture") && err.contains("aarch64-unknown-linux-musl"),
            "{err}"
        );
        // This test binary links glibc dynamically.
        let me = std::env::current_exe().unwrap();
        let err = x64.check_host_binary(&me).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        let err = x64
            .check_host_binary(Path::new(env!("PAPERCLIP_EXE_DEV_WASM")))
            .unwrap_err();
        assert!(err.to_string().contains("not a 64-bit ELF"), "{err}");
    }

    #[test]
    fn the_launcher_names_every_platform_and_the_package() {
        let js = worker_js();
        assert!(
            js.contains(r#"const SUPPORTED = ["linux-x64","linux-arm64"];"#),
            "{js}"
        );
        assert!(js.contains("`@paperclipai/plugin-exe-dev-${platform}`"));
        assert!(js.contains("process.exit(69)"));
        for placeholder in ["@SUPPORTED@", "@PACKAGE@", "@EXIT_NO_HOST@"] {
            assert!(
                !js.contains(placeholder),
                "{placeholder} left in the launcher"
            );
        }
    }

    #[test]
    fn npm_tarballs_are_reproducible() {
        let files = [
            PackageFile::new("a.txt", "a", 0o644),
            PackageFile::new("bin/x", "x", 0o755),
        ];
        assert_eq!(npm_tarball(&files).unwrap(), npm_tarball(&files).unwrap());
    }
}
