//! The components the tests load: the product component (built by this crate's build script,
//! the worker's, exactly as the worker embeds it) and the test-fixture components under
//! `host-shim/test-support/fixtures/` (built on first use).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The product component built by build.rs.
pub fn product_wasm() -> &'static str {
    env!("PAPERCLIP_EXE_DEV_WASM")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

/// Build (once per test binary) and return the misbehaving test-fixture component.
pub fn fixture_wasm() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let root = workspace_root();
        let manifest = root.join("host-shim/test-support/fixtures/misbehaving-provider/Cargo.toml");
        let target_dir = root.join("target/fixtures");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .status()
            .expect("running cargo for the fixture");
        assert!(status.success(), "building the fixture component failed");
        target_dir.join("wasm32-wasip2/release/misbehaving_provider.wasm")
    })
}
