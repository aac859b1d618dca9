//! The Paperclip package: the folder built by `package::build_package` and the npm release built
//! by `package::build_npm`, checked by Node the way a Paperclip server loads them
//! (`tests/node/check-package.mjs`), the npm release after a real `npm install`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use paperclip_wasm_host::package::{build_npm, build_package, Platform, EXIT_NO_HOST};

const HOST: &str = env!("CARGO_BIN_EXE_paperclip-wasm-host");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

fn checker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/check-package.mjs")
}

/// Node checks are skipped on a developer machine without Node, never in CI (`.ci/run`
/// installs Node and sets `CI`), so a missing Node cannot hide a broken package there.
fn node_available() -> bool {
    let found = Command::new("node").arg("--version").output().is_ok();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "node is required when CI is set"
    );
    found
}

fn checker_output(pkg: &Path, extra: &[&str]) -> std::process::Output {
    checker_output_with("node", pkg, extra)
}

/// `fork()` runs the worker with the checker's own node, so the node chosen here decides
/// which launcher path runs: `process.execve` (Node >= 22.15) or the spawn fallback.
fn checker_output_with(node: &str, pkg: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(node)
        .arg(checker())
        .arg(pkg)
        .args(extra)
        .output()
        .expect("running node")
}

fn run_checker(pkg: &Path, extra: &[&str]) {
    run_checker_with("node", pkg, extra);
}

fn run_checker_with(node: &str, pkg: &Path, extra: &[&str]) {
    let out = checker_output_with(node, pkg, extra);
    assert!(
        out.status.success(),
        "check-package.mjs failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn package_layout_and_manifest_follow_paperclips_rules() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("small.wasm");
    std::fs::write(&wasm, b"\0asm\x0d\0\x01\0").unwrap();
    let out = dir.path().join("pkg");
    let manifest = repo_root().join("manifest.json");
    build_package(&out, Path::new(HOST), &wasm, &manifest).unwrap();
    // Re-packaging over an existing package replaces the files in place.
    let digests = build_package(&out, Path::new(HOST), &wasm, &manifest).unwrap();

    // Every file written is recorded with its SHA-256, and `sha256sum -c` agrees.
    let names: Vec<&str> = digests.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "package.json",
            "dist/manifest.js",
            "dist/worker.js",
            "bin/paperclip-wasm-host",
            "bin/paperclip_exe_dev.wasm",
            "bin/manifest.json"
        ]
    );
    let package_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("package.json")).unwrap()).unwrap();
    assert_eq!(package_json["os"], serde_json::json!(["linux"]));
    assert_eq!(package_json["cpu"], serde_json::json!(["x64"]));
    assert!(package_json.get("optionalDependencies").is_none());
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&check.stdout)
            .matches(": OK")
            .count(),
        6
    );

    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("bin/paperclip-wasm-host"), 0o755);
    assert_eq!(mode("dist/worker.js"), 0o644);
    assert_eq!(
        std::fs::read(out.join("bin/paperclip_exe_dev.wasm")).unwrap(),
        std::fs::read(&wasm).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("bin/manifest.json")).unwrap(),
        std::fs::read(&manifest).unwrap()
    );
    let js = std::fs::read_to_string(out.join("dist/manifest.js")).unwrap();
    assert!(js.contains("export default"));
    assert!(!js.contains("x-wasm-host"), "host-only grants leaked");
    let worker = std::fs::read_to_string(out.join("dist/worker.js")).unwrap();
    assert!(
        !worker.contains("console."),
        "the launcher must never print"
    );
    assert!(!worker.contains("process.stdout") && !worker.contains("process.stderr"));
    let leftovers: Vec<_> = std::fs::read_dir(out.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".pkg-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    if !node_available() {
        eprintln!("skipping the Node checks: node is not installed");
        return;
    }
    run_checker(&out, &["--manifest-only"]);

    // The checker is not vacuous: a driver key Paperclip's strict schema rejects, or a leaked
    // host-only key, fails it.
    for (from, to, why) in [
        (
            "\"driverKey\"",
            "\"bogus\": 1, \"driverKey\"",
            "unknown key bogus",
        ),
        (
            "\"id\"",
            "\"x-wasm-host\": {}, \"id\"",
            "host-only key x-wasm-host",
        ),
    ] {
        let original = std::fs::read_to_string(out.join("dist/manifest.js")).unwrap();
        std::fs::write(out.join("dist/manifest.js"), original.replacen(from, to, 1)).unwrap();
        let result = checker_output(&out, &["--manifest-only"]);
        assert!(!result.status.success(), "tampered manifest passed ({why})");
        assert!(
            String::from_utf8_lossy(&result.stderr).contains(why),
            "{why}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        std::fs::write(out.join("dist/manifest.js"), original).unwrap();
    }

    // A malformed operator flags file stops the launcher with EX_CONFIG, silently.
    for bad in ["{\"not\": \"an array\"}", "[1]", "not json"] {
        std::fs::write(out.join("bin/worker-args.json"), bad).unwrap();
        let run = Command::new("node")
            .arg(out.join("dist/worker.js"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(78), "{bad}");
        assert!(run.stdout.is_empty() && run.stderr.is_empty(), "{bad}");
    }
}

#[test]
fn an_unusable_manifest_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        r#"{"id":"x","version":"0.1.0","entrypoints":{"worker":"./dist/worker.js"},
            "x-wasm-host":{"http":["http://exe.dev"]}}"#,
    )
    .unwrap();
    let wasm = dir.path().join("a.wasm");
    std::fs::write(&wasm, b"\0asm").unwrap();
    let out = dir.path().join("pkg");
    let err = build_package(&out, Path::new(HOST), &wasm, &manifest).unwrap_err();
    assert!(format!("{err:#}").contains("https://"), "{err:#}");
    assert!(!out.exists());
}

/// The real host and component, launched through `dist/worker.js` with `fork()`.
#[test]
fn packaged_worker_initializes_and_shuts_down_through_node() {
    if !node_available() {
        eprintln!("skipping: node is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    build_package(
        &out,
        Path::new(HOST),
        Path::new(env!("PAPERCLIP_EXE_DEV_WASM")),
        &repo_root().join("manifest.json"),
    )
    .unwrap();
    // Operator flags reach the host through bin/worker-args.json.
    let state = dir.path().join("state");
    std::fs::write(
        out.join("bin/worker-args.json"),
        serde_json::to_string(&[
            "--state-dir",
            state.to_str().unwrap(),
            "--allow-ssh",
            "127.0.0.1",
        ])
        .unwrap(),
    )
    .unwrap();
    // The system node (20 here: no `process.execve`, so the spawn fallback runs) ...
    run_checker(&out, &[]);
    assert!(
        state.is_dir(),
        "--state-dir from worker-args.json was not used"
    );
    // ... and, when given, a newer node for the execve path Paperclip's Node >= 24.11 takes.
    if let Ok(node) = std::env::var("PAPERCLIP_TEST_NODE") {
        run_checker_with(&node, &out, &[]);
    }
}

/// A packaged worker names its own `bin/worker-args.json` in the remedy for a refused apiUrl.
#[test]
fn a_packaged_worker_names_its_own_worker_args_file_in_the_remedy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pkg");
    build_package(
        &out,
        Path::new(HOST),
        Path::new(env!("PAPERCLIP_EXE_DEV_WASM")),
        &repo_root().join("manifest.json"),
    )
    .unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"apiKey": "tok", "apiUrl": "https://api.example.com:8443"}"#,
    )
    .unwrap();
    let run = Command::new(out.join("bin/paperclip-wasm-host"))
        .arg("validate")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stdout = String::from_utf8_lossy(&run.stdout);
    let args_file = out.join("bin/worker-args.json");
    let expected = format!(
        r#"add \"--allow-http\", \"api.example.com:8443\" to the JSON array in {}"#,
        args_file.display()
    );
    assert!(stdout.contains(&expected), "{stdout}");
}

/// `--version` says exactly what runs: the host's version, the SHA-256 of the component it
/// embeds and the WIT package that component was built against.
#[test]
fn version_names_the_component_digest_and_wit_package() {
    use sha2::{Digest, Sha256};
    let out = Command::new(HOST).arg("--version").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let wasm = std::fs::read(env!("PAPERCLIP_EXE_DEV_WASM")).unwrap();
    let digest: String = Sha256::digest(&wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        text,
        format!(
            "paperclip-wasm-host {}\ncomponent sha256:{digest} ({} bytes)\nwit paperclip:sandbox-provider@0.5.0\n",
            env!("CARGO_PKG_VERSION"),
            wasm.len()
        )
    );
}

/// `sha256sum --check --strict SHA256SUMS` in `dir`: passes, and checks exactly `n` files.
fn sums_check(dir: &Path, n: usize) {
    let check = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}: {stdout}", dir.display());
    assert_eq!(
        stdout.matches(": OK").count(),
        n,
        "{}: {stdout}",
        dir.display()
    );
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The npm release: three `npm pack`-format tarballs at the manifest's version, each package with
/// a `SHA256SUMS` of its files; `npm install --ignore-scripts` of them into an empty prefix, with
/// no Rust toolchain on `PATH`, gives a plugin Node can import and whose launcher finds the
/// linux-x64 host package by module resolution and completes `initialize` and `shutdown`.
/// Without a host for the platform, the launcher exits with one line saying so.
#[test]
fn npm_release_installs_and_runs_without_a_rust_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("npm");
    let manifest_path = repo_root().join("manifest.json");
    let version = json_file(&manifest_path)["version"]
        .as_str()
        .unwrap()
        .to_string();
    let x64 = Platform::by_key("linux-x64").unwrap();
    let arm64 = Platform::by_key("linux-arm64").unwrap();
    // The test build of the host stands in for both static builds (`cargo dist --npm` builds
    // those, and the `package --npm` command refuses a host that is not a static ELF for its
    // platform, which the unit tests check).
    let hosts = [(x64, PathBuf::from(HOST)), (arm64, PathBuf::from(HOST))];
    let wasm = Path::new(env!("PAPERCLIP_EXE_DEV_WASM"));
    let tarballs = build_npm(&out, &hosts, wasm, &manifest_path).unwrap();
    let names: Vec<&str> = tarballs.iter().map(|t| t.file_name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("paperclipai-plugin-exe-dev-{version}.tgz"),
            format!("paperclipai-plugin-exe-dev-linux-x64-{version}.tgz"),
            format!("paperclipai-plugin-exe-dev-linux-arm64-{version}.tgz"),
        ]
    );
    sums_check(&out, 3);
    // A platform without a host is refused, and writes nothing.
    let partial = dir.path().join("partial");
    let err = build_npm(&partial, &hosts[..1], wasm, &manifest_path).unwrap_err();
    assert!(err.to_string().contains("linux-arm64"), "{err:#}");
    assert!(!partial.exists());

    // Each tarball unpacks to package/…, whose SHA256SUMS checks every other file.
    let unpacked = |t: &paperclip_wasm_host::package::Tarball| {
        let to = dir.path().join("unpacked").join(&t.file_name);
        std::fs::create_dir_all(&to).unwrap();
        let tar = Command::new("tar")
            .arg("xzf")
            .arg(out.join(&t.file_name))
            .arg("-C")
            .arg(&to)
            .status()
            .unwrap();
        assert!(tar.success());
        let pkg = to.join("package");
        sums_check(&pkg, t.files.len());
        pkg
    };
    let main = unpacked(&tarballs[0]);
    let files: Vec<&str> = tarballs[0].files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        files,
        [
            "package.json",
            "dist/manifest.js",
            "dist/worker.js",
            "bin/paperclip_exe_dev.wasm",
            "bin/manifest.json"
        ]
    );
    let main_json = json_file(&main.join("package.json"));
    assert_eq!(main_json["name"], "@paperclipai/plugin-exe-dev");
    assert_eq!(main_json["version"], version.as_str());
    assert!(main_json.get("os").is_none() && main_json.get("cpu").is_none());
    assert_eq!(
        main_json["optionalDependencies"],
        serde_json::json!({
            "@paperclipai/plugin-exe-dev-linux-x64": version,
            "@paperclipai/plugin-exe-dev-linux-arm64": version,
        })
    );
    assert_eq!(
        std::fs::read(main.join("bin/paperclip_exe_dev.wasm")).unwrap(),
        std::fs::read(wasm).unwrap()
    );
    for (t, cpu) in [(&tarballs[1], "x64"), (&tarballs[2], "arm64")] {
        let pkg = unpacked(t);
        let files: Vec<&str> = t.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(files, ["package.json", "bin/paperclip-wasm-host"]);
        let host_json = json_file(&pkg.join("package.json"));
        assert_eq!(
            host_json["name"],
            format!("@paperclipai/plugin-exe-dev-linux-{cpu}")
        );
        assert_eq!(host_json["version"], version.as_str());
        assert_eq!(host_json["os"], serde_json::json!(["linux"]));
        assert_eq!(host_json["cpu"], serde_json::json!([cpu]));
        let mode = std::fs::metadata(pkg.join("bin/paperclip-wasm-host"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o755, 0o755);
    }

    if !node_available() {
        eprintln!("skipping the npm install: node is not installed");
        return;
    }
    // PATH holds only node's and npm's directories and the system's, so no cargo or rustc can
    // be found while installing or running.
    let node = which("node").expect("node on PATH");
    let Some(npm) = which("npm") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "npm is required when CI is set"
        );
        eprintln!("skipping the npm install: npm is not installed");
        return;
    };
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        node.parent().unwrap().display(),
        npm.parent().unwrap().display()
    );
    for tool in ["cargo", "rustc", "rustup"] {
        assert!(
            !path.split(':').any(|d| Path::new(d).join(tool).exists()),
            "{tool} is on the test's PATH {path}"
        );
    }
    let prefix = dir.path().join("plugins");
    std::fs::create_dir_all(&prefix).unwrap();
    // What Paperclip runs (`npm install <spec> --prefix ~/.paperclip/plugins --save
    // --ignore-scripts`), with the tarballs as specs; offline, npm skips the arm64 host as an
    // optional dependency it cannot fetch (and could not install on x64 anyway).
    let install = Command::new(&npm)
        .args(["install", "--prefix"])
        .arg(&prefix)
        .args([
            "--save",
            "--ignore-scripts",
            "--offline",
            "--no-audit",
            "--no-fund",
        ])
        .arg(out.join(&tarballs[0].file_name))
        .arg(out.join(&tarballs[1].file_name))
        .env_clear()
        .env("PATH", &path)
        .env("HOME", dir.path())
        .env("npm_config_cache", dir.path().join("npm-cache"))
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "npm install failed:\n{}\n{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let installed = prefix.join("node_modules/@paperclipai/plugin-exe-dev");
    let host_pkg = prefix.join("node_modules/@paperclipai/plugin-exe-dev-linux-x64");
    assert!(host_pkg.join("bin/paperclip-wasm-host").is_file());
    assert!(!prefix
        .join("node_modules/@paperclipai/plugin-exe-dev-linux-arm64")
        .exists());
    sums_check(&installed, 5);
    sums_check(&host_pkg, 2);
    let checker = Command::new(&node)
        .arg(checker())
        .arg(&installed)
        .env_clear()
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        checker.status.success(),
        "check-package.mjs on the npm install failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&checker.stdout),
        String::from_utf8_lossy(&checker.stderr)
    );
    let ok = String::from_utf8_lossy(&checker.stdout);
    assert!(
        ok.starts_with(&format!("ok: {}", installed.display())),
        "{ok}"
    );

    // No host for the platform: one line on stderr, nothing on stdout, EX_UNAVAILABLE. First
    // with the host package gone (npm told to omit optional dependencies) ...
    let launch = |preload: Option<&str>| {
        let mut cmd = Command::new(&node);
        if let Some(p) = preload {
            cmd.arg("--import").arg(p);
        }
        let run = cmd
            .arg(installed.join("dist/worker.js"))
            .env_clear()
            .env("PATH", &path)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(EXIT_NO_HOST), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        let stderr = String::from_utf8(run.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.ends_with('\n'));
        for needle in [
            "linux-x64 and linux-arm64",
            "cargo dist --out DIR",
            "build the plugin from source",
        ] {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
        eprintln!("the launcher without a host: {stderr}");
        stderr
    };
    std::fs::rename(&host_pkg, dir.path().join("moved-host")).unwrap();
    let missing = launch(None);
    assert!(
        missing.starts_with("@paperclipai/plugin-exe-dev: the native host for linux-x64, package @paperclipai/plugin-exe-dev-linux-x64, is not installed"),
        "{missing}"
    );
    std::fs::rename(dir.path().join("moved-host"), &host_pkg).unwrap();
    // ... then on a platform with no host package at all (this test's preload makes Node report
    // another architecture; the launcher itself only reads `process.arch`).
    let other_arch = "data:text/javascript,Object.defineProperty(process,'arch',{value:'riscv64'})";
    let unsupported = launch(Some(other_arch));
    assert!(
        unsupported.starts_with("@paperclipai/plugin-exe-dev: no native host for linux-riscv64; prebuilt hosts exist for linux-x64 and linux-arm64."),
        "{unsupported}"
    );
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The component stays within its budget: 700 KB, room for the `url` crate's IDNA tables
/// (issue 19) and some growth. It is embedded in the host and hashed at every start (the
/// compiled-code cache is named by its digest), so going past the budget should be a decision.
#[test]
fn the_component_is_within_its_size_budget() {
    const BUDGET: usize = 700_000;
    let size = paperclip_wasm_host::EMBEDDED_COMPONENT.len();
    assert!(
        size <= BUDGET,
        "the component is {size} bytes, over its budget of {BUDGET}"
    );
}
