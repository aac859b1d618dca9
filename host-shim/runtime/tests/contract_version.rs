//! The host speaks one version of the contract, and refuses a component built for another one
//! by name. The components here are real ones, encoded from each archived release's WIT (and
//! from the working package) by `wit-component`, with core functions that only trap: enough to
//! load, which is all the version check is about.

use std::path::{Path, PathBuf};

use paperclip_wasm_runtime::engine::{contract_package, Limits, ProviderHost};
use paperclip_wasm_runtime::grants;
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve};

const WORLD: &str = "exe-dev-provider";

fn wit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit")
}

/// The archived releases, as (version, folder).
fn releases() -> Vec<(String, PathBuf)> {
    let mut releases: Vec<(String, PathBuf)> = std::fs::read_dir(wit_dir().join("released"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let version = name
                .strip_prefix("paperclip-sandbox-provider@")?
                .to_string();
            Some((version, path))
        })
        .collect();
    releases.sort();
    assert!(releases.len() >= 3, "{releases:?}");
    releases
}

/// A component of `world` from the package in `dir` (its `deps/` beside it), as a guest
/// toolchain would emit it, with trapping bodies.
fn component_of(dir: &Path) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(dir).unwrap();
    let world = resolve.select_world(&[package], Some(WORLD)).unwrap();
    let mangling = ManglingAndAbi::Legacy(LiftLowerAbi::Sync);
    let mut module = wit_component::dummy_module(&resolve, world, mangling);
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .unwrap();
    ComponentEncoder::default()
        .module(&module)
        .unwrap()
        .encode()
        .unwrap()
}

/// The same for an archived release: its files with today's `wit/deps/`, which holds every
/// version of the dependencies the releases use.
fn component_of_release(dir: &Path) -> Vec<u8> {
    let package = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, package.path().join(path.file_name().unwrap())).unwrap();
    }
    std::os::unix::fs::symlink(wit_dir().join("deps"), package.path().join("deps")).unwrap();
    component_of(package.path())
}

fn load(wasm: &[u8]) -> anyhow::Result<ProviderHost> {
    ProviderHost::load(wasm, None, grants::nothing(None), Limits::default())
}

#[test]
fn the_host_speaks_the_working_package() {
    let working = std::fs::read_to_string(wit_dir().join("world.wit")).unwrap();
    let declared = working
        .lines()
        .find_map(|l| l.strip_prefix("package "))
        .unwrap()
        .trim_end_matches(';');
    assert_eq!(contract_package(), declared);
    let (name, version) = declared.split_once('@').unwrap();
    assert_eq!(name, "paperclip:sandbox-provider");
    // The product component, built from the same WIT, exports the provider of that version.
    let wasm = std::fs::read(paperclip_test_support::components::product_wasm()).unwrap();
    let engine = wasmtime::Engine::new(wasmtime::Config::new().wasm_component_model(true)).unwrap();
    let component = wasmtime::component::Component::new(&engine, &wasm).unwrap();
    let exports: Vec<String> = component
        .component_type()
        .exports(&engine)
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(exports, [format!("{name}/provider@{version}")]);
}

/// The archive is not part of the working package: the parsers read a package's top-level
/// files and `deps/` only, so `wit/` holds exactly one version of the contract.
#[test]
fn the_wit_parsers_read_only_the_working_package() {
    let mut resolve = Resolve::default();
    resolve.push_dir(wit_dir()).unwrap();
    let ours: Vec<String> = resolve
        .packages
        .iter()
        .map(|(_, p)| p.name.to_string())
        .filter(|n| n.starts_with("paperclip:sandbox-provider"))
        .collect();
    assert_eq!(ours, [contract_package()]);
}

#[test]
fn a_component_of_the_working_contract_loads() {
    load(&component_of(&wit_dir())).expect("a component of the host's own contract loads");
}

/// Every release but the host's own is refused, naming both versions; the host's own loads.
#[test]
fn a_component_of_another_release_is_refused_by_name() {
    let host = contract_package();
    let mut refused = 0;
    for (version, dir) in releases() {
        let wasm = component_of_release(&dir);
        let theirs = format!("paperclip:sandbox-provider@{version}");
        if theirs == host {
            load(&wasm).unwrap_or_else(|e| panic!("{theirs}: {e:#}"));
            continue;
        }
        let err = load(&wasm)
            .err()
            .unwrap_or_else(|| panic!("{theirs} loaded"));
        assert_eq!(
            format!("{err:#}"),
            format!(
                "the component implements {theirs}, this host speaks {host}; use a component \
                 and host from the same release"
            )
        );
        refused += 1;
    }
    assert!(refused >= 2, "0.1.0 and 0.2.0 at least");
}
