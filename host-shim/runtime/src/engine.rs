//! The wasmtime engine: compiles (or loads from the on-disk cache) the component once, links the
//! world's imports (never `wasi:sockets` or `wasi:filesystem`) into an `InstancePre`, and runs
//! every call in a fresh `Store` with a memory limit and an epoch deadline. What each import may
//! reach is the [`Grants`]' decision, made per request (a capability not granted refuses).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::access::HttpAccess;
use crate::bindings::{self, provider, ExeDevProviderPre};
use crate::caps::ledger::VmLedger;
use crate::caps::log::CallSink;
use crate::limits::CallLimits;
use crate::state::{HooksFactory, HostState, SshBackend, TransferBackend};

/// How often the epoch advances. Deadlines are counted in these ticks, so a runaway call is
/// stopped up to one tick late. Deadlines are seconds (Paperclip's timers plus the grace), and
/// each tick wakes a thread for as long as the worker lives: at 10 ms the ticker alone was
/// about 8 % of a bridge-polling worker's CPU.
const EPOCH_TICK: Duration = Duration::from_millis(100);

/// The contract this host speaks, `paperclip:sandbox-provider@<version>`: the `package` line of
/// `wit/world.wit`, compiled in from the directory the bindings are generated from, so the two
/// cannot disagree.
pub fn contract_package() -> &'static str {
    include_str!("../../../wit/world.wit")
        .lines()
        .find_map(|line| line.strip_prefix("package "))
        .and_then(|rest| rest.split_once(';'))
        .map(|(name, _)| name.trim())
        .expect("wit/world.wit declares its package")
}

/// Tunables of the sandbox every call runs in.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Linear-memory cap per call. Execute results of two 32 MiB streams pass through guest
    /// memory a few times, so the default leaves room for that and no more.
    pub max_memory_bytes: usize,
    /// Added to a call's deadline (Paperclip's timer for the method, which the component is
    /// told) to form its hard wall-clock deadline: the component answers before the deadline,
    /// so this only stops one that does not.
    pub call_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_bytes: 512 << 20,
            call_grace: Duration::from_secs(30),
        }
    }
}

/// What the host grants the component.
#[derive(Clone)]
pub struct Grants {
    /// The HTTP policy (wasi-http hooks), one instance per store.
    pub http_hooks: HooksFactory,
    /// The SSH capability.
    pub ssh: Arc<dyn SshBackend>,
    /// The file-transfer capability.
    pub transfer: Arc<dyn TransferBackend>,
    /// `EXE_API_KEY`, the only environment variable the component may see.
    pub exe_api_key: Option<String>,
    /// The durable VM ledger (in the state directory); none keeps no ledger.
    pub ledger: Option<Arc<VmLedger>>,
    /// The HTTP policy with its operator remedy, for the worker's checks around a call
    /// (`validate`'s `apiUrl`, the remedy after a refusal). `None`: the hooks alone decide
    /// (test doubles).
    pub http_access: Option<Arc<HttpAccess>>,
}

/// A loaded component, ready to be instantiated once per call.
pub struct ProviderHost {
    engine: Engine,
    component: Component,
    pre: ExeDevProviderPre<HostState>,
    grants: Grants,
    limits: Limits,
}

impl ProviderHost {
    /// Load the component from `wasm` (bytes of a component), using `cache_dir` for compiled
    /// artifacts when given.
    pub fn load(
        wasm: &[u8],
        cache_dir: Option<&Path>,
        grants: Grants,
        limits: Limits,
    ) -> anyhow::Result<Self> {
        let engine = new_engine()?;
        let component = load_component(&engine, wasm, cache_dir)?;
        check_contract(&engine, &component)?;
        let linker = granted_linker(&engine)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component needs a capability this host does not grant")?;
        let pre = ExeDevProviderPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("the component does not export {}", provider_interface()))?;
        start_epoch_ticker(&engine);
        Ok(Self {
            engine,
            component,
            pre,
            grants,
            limits,
        })
    }

    /// Close the capabilities' pooled connections (SSH masters); call when the worker exits.
    pub async fn close_connections(&self) {
        self.grants.ssh.close_all().await;
    }

    /// Open the session a component planned (`plan-session`) on the SSH capability, within
    /// `timeout`; the caller holds it from then on.
    pub async fn open_session(
        &self,
        plan: paperclip_provider_types::SessionPlan,
        timeout: Duration,
    ) -> Result<crate::caps::session::OpenSession, paperclip_provider_types::SshError> {
        self.grants.ssh.open_session(plan, timeout).await
    }

    /// The HTTP policy and its remedy, when the grants carry one.
    pub fn http_access(&self) -> Option<&HttpAccess> {
        self.grants.http_access.as_deref()
    }

    /// The durable VM ledger, when the host keeps one (the worker's reconciler works through it).
    pub fn ledger(&self) -> Option<Arc<VmLedger>> {
        self.grants.ledger.clone()
    }

    /// `EXE_API_KEY` as granted to the component: after a restart, the only token the host has
    /// for accounts whose entries are on disk.
    pub fn exe_api_key(&self) -> Option<&str> {
        self.grants.exe_api_key.as_deref()
    }

    /// The names of every interface the component imports (for audits).
    pub fn component_imports(&self) -> Vec<String> {
        self.component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Run `f` against a fresh instance in a fresh store, with `timeout` plus the grace period
    /// as the hard deadline. A trap (including a blown deadline or memory limit) is an `Err`.
    pub async fn call<R>(
        &self,
        sink: CallSink,
        timeout: Duration,
        f: impl AsyncFnOnce(&mut Store<HostState>, &provider::Guest) -> wasmtime::Result<R>,
    ) -> wasmtime::Result<R> {
        let mut store = self.new_store(sink, timeout.saturating_add(self.limits.call_grace));
        let instance = self.pre.instantiate_async(&mut store).await?;
        f(&mut store, instance.paperclip_sandbox_provider_provider()).await
    }

    fn new_store(&self, sink: CallSink, deadline: Duration) -> Store<HostState> {
        let mut wasi = WasiCtx::builder();
        // The component sees no host environment except the exe.dev token, and no stdio except
        // stderr (panic messages); stdout carries the protocol and must stay clean.
        if let Some(key) = &self.grants.exe_api_key {
            wasi.env("EXE_API_KEY", key);
        }
        wasi.inherit_stderr();
        let state = HostState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: (self.grants.http_hooks)(&sink),
            ssh: self.grants.ssh.clone(),
            transfer: self.grants.transfer.clone(),
            sink,
            ledger: self.grants.ledger.clone(),
            limits: CallLimits::new(self.limits.max_memory_bytes),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }
}

/// `paperclip:sandbox-provider/provider@<version>`, the interface a component must export.
fn provider_interface() -> String {
    let (name, version) = split_version(contract_package());
    format!("{name}/provider@{version}")
}

fn split_version(package: &str) -> (&str, &str) {
    package.rsplit_once('@').unwrap_or((package, ""))
}

/// Refuse a component built for another version of the contract, by name. Without this the
/// linker would only report the first import it lacks (`paperclip:sandbox-provider/ssh@0.2.0`),
/// which reads like a missing capability. The versions are read from the component's own
/// export and import names; the exported provider's comes first, being what the component
/// implements.
fn check_contract(engine: &Engine, component: &Component) -> anyhow::Result<()> {
    let contract = contract_package();
    let (ours, version) = split_version(contract);
    let prefix = format!("{ours}/");
    let ty = component.component_type();
    let names = ty
        .exports(engine)
        .map(|(name, _)| name)
        .chain(ty.imports(engine).map(|(name, _)| name));
    let other = names
        .filter_map(|name| name.strip_prefix(&prefix))
        .map(|interface| interface.split_once('@').map_or("", |(_, v)| v))
        .find(|v| *v != version);
    match other {
        None => Ok(()),
        Some("") => anyhow::bail!(
            "the component implements an unversioned {ours}, this host speaks \
             {contract}; use a component and host from the same release"
        ),
        Some(theirs) => anyhow::bail!(
            "the component implements {ours}@{theirs}, this host speaks {contract}; use \
             a component and host from the same release"
        ),
    }
}

fn new_engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    Ok(Engine::new(&config)?)
}

/// Link the world's imports and nothing more: wasi:http (through the policy hooks), the I/O,
/// clock and random interfaces it depends on, the inert `wasi:cli` pieces and hash seed Rust's
/// std references (environment holds only `EXE_API_KEY`), and our `ssh`, `transfer`, `log` and
/// `vm-ledger` (each refuses what the grants do not allow). No sockets, no filesystem: a
/// component importing them fails to instantiate.
fn granted_linker(engine: &Engine) -> anyhow::Result<Linker<HostState>> {
    use wasmtime_wasi::p2::bindings::{cli, random};
    use wasmtime_wasi::random::WasiRandom;
    let mut linker = Linker::new(engine);
    wasmtime_wasi_http::p2::add_to_linker_async(&mut linker)?;
    // Rust std seeds its HashMap hasher from `insecure-seed`: not a capability.
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(&mut linker, |s| {
        s.wasi.random()
    })?;
    cli::environment::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::exit::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(&mut linker, HostState::cli)?;
    bindings::ssh::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::transfer::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::log::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    bindings::ledger::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Compile `wasm`, or load the artifact a previous run cached. The cache key covers the
/// component bytes and the engine's compatibility hash, so a changed component or wasmtime
/// never loads a stale artifact.
fn load_component(
    engine: &Engine,
    wasm: &[u8],
    cache_dir: Option<&Path>,
) -> anyhow::Result<Component> {
    let Some(dir) = cache_dir else {
        return compile(engine, wasm);
    };
    let path = cache_path(engine, wasm, dir);
    if path.is_file() {
        // SAFETY: the artifact lives in the host's private (0700) state directory and was
        // written by `Component::serialize` of this same engine configuration; wasmtime
        // still checks its header and compatibility before use.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok(component),
            Err(e) => tracing::warn!("ignoring unusable compiled-component cache entry: {e:#}"),
        }
    }
    let component = compile(engine, wasm)?;
    if let Err(e) = write_cache(&component, dir, &path) {
        tracing::warn!("could not cache the compiled component: {e:#}");
    }
    Ok(component)
}

fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Component> {
    Component::new(engine, wasm)
        .map_err(anyhow::Error::from)
        .context("compiling the component")
}

/// The artifact's file name: a SHA-256 over the component's bytes, the engine's compatibility
/// fingerprint (wasmtime version, target, compiler settings) and this runtime's version. Unlike
/// `DefaultHasher`, whose output may change between Rust releases, the digest is stable, so a
/// rebuilt host with the same engine finds its cache.
fn cache_path(engine: &Engine, wasm: &[u8], dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    digest.update(b"paperclip-wasm-host compiled component v1\0");
    digest.update(Sha256::digest(wasm));
    let mut fingerprint = DigestHasher(Sha256::new());
    engine
        .precompile_compatibility_hash()
        .hash(&mut fingerprint);
    digest.update(fingerprint.0.finalize());
    digest.update(env!("CARGO_PKG_VERSION").as_bytes());
    let name = crate::hex::hex(&digest.finalize()[..16]);
    dir.join(format!("{name}.cwasm"))
}

/// Feeds what a `Hash` impl writes into a SHA-256 (wasmtime exposes its engine fingerprint only
/// as `impl Hash`). `finish` is unused: the digest is read from the inner hasher.
struct DigestHasher(sha2::Sha256);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        sha2::Digest::update(&mut self.0, bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

fn write_cache(component: &Component, dir: &Path, path: &Path) -> anyhow::Result<()> {
    crate::statedir::ensure_private_dir(dir)?;
    let bytes = component.serialize()?;
    // Write then rename, so a concurrent worker never reads a half-written artifact.
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Advance the engine's epoch from a background thread for as long as the engine lives.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch ticker thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache key depends on the component's bytes and the engine configuration only: two
    /// engines of the same configuration agree (a restarted worker finds its artifact), another
    /// component gets another key.
    #[test]
    fn cache_key_is_a_stable_content_digest() {
        let dir = Path::new("/cache");
        let (a, b) = (new_engine().unwrap(), new_engine().unwrap());
        let key = cache_path(&a, b"component one", dir);
        assert_eq!(key, cache_path(&b, b"component one", dir));
        assert_ne!(key, cache_path(&a, b"component two", dir));
        let name = key.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 32 + ".cwasm".len(), "{name}");
        assert!(name[..32].bytes().all(|c| c.is_ascii_hexdigit()), "{name}");
    }
}
