//! Every `*.rs` directly in a `tests/` directory of the workspace (the top-level one and each
//! crate's) is a registered test target. The top-level end-to-end tests are `[[test]]` entries
//! of this crate (the guest crate has `autotests = false`), so a new `tests/e2e_*.rs` that nobody
//! registers would otherwise never run. Support modules live in subdirectories
//! (`tests/e2e_support/`, …), which this check leaves alone.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cargo_metadata::MetadataCommand;

/// The files of `files` that are not in `targets`, sorted.
fn unregistered(files: &[PathBuf], targets: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = files
        .iter()
        .filter(|f| !targets.contains(*f))
        .cloned()
        .collect();
    out.sort();
    out
}

/// The `*.rs` files directly in `dir` (none when it does not exist), canonical.
fn rust_files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.canonicalize().unwrap())
        .collect()
}

#[test]
fn every_file_in_a_tests_dir_is_a_registered_test_target() {
    let metadata = MetadataCommand::new()
        .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"))
        .no_deps()
        .exec()
        .expect("cargo metadata");
    let packages = metadata.workspace_packages();
    let targets: BTreeSet<PathBuf> = packages
        .iter()
        .flat_map(|p| &p.targets)
        // `test = false` would register a target that `cargo test` does not run.
        .filter(|t| t.is_test() && t.test)
        .map(|t| t.src_path.canonicalize().unwrap())
        .collect();
    let mut files = Vec::new();
    for p in &packages {
        let dir = p.manifest_path.parent().unwrap().join("tests");
        files.extend(rust_files_in(dir.as_std_path()));
    }
    // The check sees the suites it guards: the top-level e2e tests and this file.
    assert!(
        files.iter().any(|f| f.ends_with("tests/e2e_lifecycle.rs")),
        "{files:?}"
    );
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("worker/tests/test_targets.rs")),
        "{files:?}"
    );

    let missing = unregistered(&files, &targets);
    assert!(
        missing.is_empty(),
        "not a test target, so `cargo test` never runs it: {missing:?}. Register each as a \
         [[test]] in host-shim/worker/Cargo.toml (top-level tests/), or move a support module \
         into a subdirectory (tests/e2e_support/)"
    );
}

#[test]
fn the_check_names_a_file_nobody_registered() {
    let files = [
        PathBuf::from("/w/tests/e2e_lifecycle.rs"),
        PathBuf::from("/w/tests/e2e_new.rs"),
        PathBuf::from("/w/host-shim/sim/tests/sim.rs"),
    ];
    let targets: BTreeSet<PathBuf> = [
        PathBuf::from("/w/tests/e2e_lifecycle.rs"),
        PathBuf::from("/w/host-shim/sim/tests/sim.rs"),
    ]
    .into();
    assert_eq!(
        unregistered(&files, &targets),
        [PathBuf::from("/w/tests/e2e_new.rs")]
    );
    let all: BTreeSet<PathBuf> = files.iter().cloned().collect();
    assert!(unregistered(&files, &all).is_empty());
}

#[test]
fn support_modules_in_subdirectories_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("e2e_support")).unwrap();
    std::fs::write(dir.path().join("e2e_support/mod.rs"), "").unwrap();
    std::fs::write(dir.path().join("e2e_a.rs"), "").unwrap();
    std::fs::write(dir.path().join("notes.md"), "").unwrap();
    assert_eq!(
        rust_files_in(dir.path()),
        [dir.path().join("e2e_a.rs").canonicalize().unwrap()]
    );
    assert!(rust_files_in(&dir.path().join("absent")).is_empty());
}
