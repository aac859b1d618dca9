//! The WIT files are pinned by digest.
//!
//! - `wit/deps/SHA256SUMS` lists every file under `wit/deps/`, so a changed or added dependency
//!   fails here until the change is recorded (and shows as a one-line diff).
//! - `wit/released/SHA256SUMS` lists every released version of our own contract, archived under
//!   `wit/released/`, and the VM-ledger packages those versions import. That list only grows: a
//!   released version is never edited, and the working package in `wit/*.wit` may not be one of
//!   them edited either. A working version that is not archived is in development.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Our contract's package name; its released versions are `released/<folder>@<version>`.
const CONTRACT: &str = "paperclip:sandbox-provider";

fn wit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit")
}

/// The folder name of a package version, as in `wit/deps/` and `wit/released/`:
/// `paperclip:vm-ledger` 0.2.0 is `paperclip-vm-ledger@0.2.0`.
fn folder(package: &str, version: &str) -> String {
    format!("{}@{version}", package.replace(':', "-"))
}

/// Every `*.wit` file under `dir`, recursively, as paths relative to `root`.
fn wit_files(dir: &Path, root: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            wit_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "wit") {
            out.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

/// The top-level `*.wit` files of one package directory (what the WIT parsers read as the
/// package), by file name.
fn package_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = Vec::new();
    wit_files(dir, dir, &mut files);
    files
        .into_iter()
        .filter(|f| !f.contains('/'))
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// A `sha256sum` list: file (relative to the list's base) → digest.
fn read_sums(path: &Path) -> BTreeMap<String, String> {
    let sums = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    sums.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (digest, file) = l.split_once("  ").expect("`<sha256>  <file>` lines");
            (file.to_string(), digest.to_string())
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The files of `pinned` (relative to `base`) whose content is not their digest, each with why.
fn mismatches(base: &Path, pinned: &BTreeMap<String, String>) -> Vec<String> {
    pinned
        .iter()
        .filter_map(|(file, digest)| match std::fs::read(base.join(file)) {
            Ok(bytes) if sha256_hex(&bytes) == *digest => None,
            Ok(bytes) => Some(format!(
                "{file}: sha256 {} (pinned {digest})",
                sha256_hex(&bytes)
            )),
            Err(e) => Some(format!("{file}: {e}")),
        })
        .collect()
}

/// The version in `package <name>@<version>;` of a package's files.
fn declared_version(files: &BTreeMap<String, Vec<u8>>, package: &str) -> Option<String> {
    let prefix = format!("package {package}@");
    files.values().find_map(|bytes| {
        String::from_utf8_lossy(bytes).lines().find_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            Some(rest.split_once(';')?.0.to_string())
        })
    })
}

/// The archived versions, oldest first.
fn released_versions() -> Vec<String> {
    let prefix = folder(CONTRACT, "");
    let mut versions: Vec<String> = std::fs::read_dir(wit_dir().join("released"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_prefix(&prefix).map(str::to_string))
        .collect();
    versions.sort_by_key(|v| semver(v));
    versions
}

fn semver(version: &str) -> (u64, u64, u64) {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().expect(version));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

#[test]
fn wit_deps_are_pinned() {
    let dir = wit_dir().join("deps");
    let pinned = read_sums(&dir.join("SHA256SUMS"));
    let mut present = Vec::new();
    wit_files(&dir, &dir, &mut present);
    present.sort();
    assert_eq!(
        present,
        pinned.keys().cloned().collect::<Vec<_>>(),
        "every WIT dependency file, and only those, is pinned"
    );
    let changed = mismatches(&dir, &pinned);
    assert!(
        changed.is_empty(),
        "changed without their digest in wit/deps/SHA256SUMS:\n{}",
        changed.join("\n")
    );
}

/// Every archived file is listed, and every listed file (archived, or a released VM-ledger
/// package in `wit/deps/`) still has its digest.
#[test]
fn released_contracts_are_unchanged() {
    let wit = wit_dir();
    let pinned = read_sums(&wit.join("released/SHA256SUMS"));
    let mut archived = Vec::new();
    wit_files(&wit.join("released"), &wit, &mut archived);
    let unlisted: Vec<&String> = archived
        .iter()
        .filter(|f| !pinned.contains_key(*f))
        .collect();
    assert!(
        unlisted.is_empty(),
        "archived without a digest in wit/released/SHA256SUMS: {unlisted:?}"
    );
    let changed = mismatches(&wit, &pinned);
    assert!(
        changed.is_empty(),
        "released WIT files changed (a released version is never edited; the change goes into \
         a new package version):\n{}",
        changed.join("\n")
    );
    assert!(
        released_versions().len() >= 3,
        "0.1.0, 0.2.0 and 0.3.0 at least"
    );
}

/// The working package is either a released version, file for file, or a newer one in
/// development.
#[test]
fn the_working_package_is_a_release_unedited_or_a_new_version() {
    let wit = wit_dir();
    let working = package_files(&wit);
    let version = declared_version(&working, CONTRACT).expect("wit/*.wit declares the package");
    let archive = wit.join("released").join(folder(CONTRACT, &version));
    if !archive.is_dir() {
        let newest = released_versions().pop().unwrap();
        assert!(
            semver(&version) > semver(&newest),
            "the working package {CONTRACT}@{version} is not released, so it must be newer than \
             the last release {newest}"
        );
        return;
    }
    let released = package_files(&archive);
    let mut differences = Vec::new();
    for (file, bytes) in &working {
        match released.get(file) {
            None => differences.push(format!("wit/{file} is not in the release")),
            Some(r) if r != bytes => {
                differences.push(format!("wit/{file} differs from the release"))
            }
            Some(_) => {}
        }
    }
    for file in released.keys().filter(|f| !working.contains_key(*f)) {
        differences.push(format!("wit/{file} of the release is missing"));
    }
    assert!(
        differences.is_empty(),
        "{CONTRACT}@{version} is released (wit/released/{}); bump the working package to a new \
         version to change it:\n{}",
        folder(CONTRACT, &version),
        differences.join("\n")
    );
}

/// The other packages of ours a released version uses (`paperclip:vm-ledger/ledger@0.2.0`)
/// are released with it: their files in `wit/deps/` are pinned in `wit/released/SHA256SUMS`,
/// whose digests `released_contracts_are_unchanged` checks.
#[test]
fn packages_a_release_imports_are_pinned_with_it() {
    let wit = wit_dir();
    let pinned = read_sums(&wit.join("released/SHA256SUMS"));
    let mut missing = Vec::new();
    for version in released_versions() {
        let files = package_files(&wit.join("released").join(folder(CONTRACT, &version)));
        for (package, dep_version) in files.values().flat_map(|b| our_references(b)) {
            if package == CONTRACT {
                continue;
            }
            let dir = format!("deps/{}", folder(&package, &dep_version));
            let mut dep_files = Vec::new();
            wit_files(&wit.join(&dir), &wit, &mut dep_files);
            assert!(
                !dep_files.is_empty(),
                "{dir} (imported by {version}) holds no WIT"
            );
            missing.extend(
                dep_files
                    .into_iter()
                    .filter(|f| !pinned.contains_key(f))
                    .map(|f| format!("{f} (imported by {CONTRACT}@{version})")),
            );
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "released with a contract but not pinned in wit/released/SHA256SUMS:\n{}",
        missing.join("\n")
    );
}

/// The versioned `paperclip:<name>/<item>@<version>` references in a WIT file, as
/// (`paperclip:<name>`, version).
fn our_references(bytes: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    let kebab = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    text.match_indices("paperclip:")
        .filter_map(|(at, _)| {
            // `paperclip:<name>/<item>@<version>`, each part only what WIT allows there.
            let rest = &text[at + "paperclip:".len()..];
            let name_len = rest.find(|c| !kebab(c))?;
            let (name, rest) = rest.split_at(name_len);
            let rest = rest.strip_prefix('/')?;
            let rest = rest.trim_start_matches(kebab).strip_prefix('@')?;
            let version = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .next()?;
            let version = version.trim_end_matches('.');
            (!name.is_empty() && !version.is_empty())
                .then(|| (format!("paperclip:{name}"), version.to_string()))
        })
        .collect()
}

#[test]
fn references_to_our_packages_are_found() {
    let wit = b"use paperclip:vm-ledger/ledger@0.2.0.{reason, account};\n\
        import paperclip:vm-ledger/ledger@0.1.0;\n\
        /// see paperclip:sandbox-provider for the rest\n\
        import paperclip:sandbox-provider/ssh@0.3.0;";
    assert_eq!(
        our_references(wit),
        [
            ("paperclip:vm-ledger", "0.2.0"),
            ("paperclip:vm-ledger", "0.1.0"),
            ("paperclip:sandbox-provider", "0.3.0"),
        ]
        .map(|(p, v)| (p.to_string(), v.to_string()))
    );
}
