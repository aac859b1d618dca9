//! The WIT dependencies are pinned: every file under `wit/deps/` is listed in
//! `wit/deps/SHA256SUMS` with its digest, so a changed or added file fails here until the change
//! is recorded (and shows as a one-line diff).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit/deps")
}

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

#[test]
fn wit_deps_are_pinned() {
    let dir = deps_dir();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).expect("wit/deps/SHA256SUMS");
    let pinned: BTreeMap<String, String> = sums
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (digest, file) = l.split_once("  ").expect("`<sha256>  <file>` lines");
            (file.to_string(), digest.to_string())
        })
        .collect();
    let mut present = Vec::new();
    wit_files(&dir, &dir, &mut present);
    present.sort();
    assert_eq!(
        present,
        pinned.keys().cloned().collect::<Vec<_>>(),
        "every WIT dependency file, and only those, is pinned"
    );
    for (file, digest) in &pinned {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(&actual, digest, "{file} changed without its digest");
    }
}
