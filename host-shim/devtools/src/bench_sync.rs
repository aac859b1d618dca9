//! The sync rows of the bench: a 100 MiB workspace (many small files and a few large ones) in
//! and out of a VM three ways, in one run — native `environmentSyncIn`/`SyncOut`, Paperclip's
//! fallback emulated exactly (3 MiB chunks through `environmentExecute`, base64 inside JSON)
//! and a raw `tar | ssh` over a master connection to the same VM — plus the worker's resident
//! memory during the native sync.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use base64::Engine as _;
use serde_json::{json, Value};

use paperclip_test_support::client::WorkerClient;

/// Paperclip's fallback chunk: 3 MiB of raw data per execute.
const CHUNK: usize = 3 << 20;

/// The figures of one link (loopback or the link model).
pub struct SyncFigures {
    /// Bytes of file content in the workspace.
    pub bytes: u64,
    /// Native sync-in / sync-out.
    pub native_in: Duration,
    /// Native sync-out.
    pub native_out: Duration,
    /// Fallback sync-in.
    pub fallback_in: Duration,
    /// Fallback sync-out.
    pub fallback_out: Duration,
    /// `tar -cf - | ssh host 'tar -xf -'`.
    pub raw_in: Duration,
    /// `ssh host 'tar -cf -' | tar -xf -`.
    pub raw_out: Duration,
    /// Worker resident memory above idle during the native sync (bytes).
    pub rss_above_idle: u64,
}

/// Write the bench workspace under `root`: 3,000 small source-like files (24 MiB) and four
/// large files (two of text, two of random bytes), about 100 MiB in all.
pub fn workspace(root: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let line = b"    let value = compute(input, &config).expect(\"a value\"); // keep going\n";
    for i in 0..3000 {
        let dir = root.join(format!("src/mod{:02}", i % 40));
        std::fs::create_dir_all(&dir)?;
        let mut text = Vec::with_capacity(8192);
        while text.len() < 8192 {
            text.extend_from_slice(format!("// file {i}\n").as_bytes());
            text.extend_from_slice(line);
        }
        std::fs::write(dir.join(format!("f{i}.rs")), &text)?;
        total += text.len() as u64;
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for (name, random, size) in [
        ("assets/a.log", false, 25 << 20),
        ("assets/b.log", false, 25 << 20),
        ("assets/c.bin", true, 13 << 20),
        ("assets/d.bin", true, 13 << 20),
    ] {
        std::fs::create_dir_all(root.join("assets"))?;
        let mut data = Vec::with_capacity(size);
        while data.len() < size {
            if random {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(&x.to_le_bytes());
            } else {
                data.extend_from_slice(format!("{} INFO request served\n", data.len()).as_bytes());
            }
        }
        data.truncate(size);
        std::fs::write(root.join(name), &data)?;
        total += size as u64;
    }
    Ok(total)
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One call's result; fails unless it succeeded.
async fn ok(worker: &WorkerClient, method: &str, params: Value) -> anyhow::Result<Value> {
    worker.request(method, params).await
}

/// The three ways, on one lease. `base` builds call params; `raw` runs the baseline over its
/// master connection to the same VM.
pub async fn measure(
    worker: &WorkerClient,
    worker_pid: Option<u32>,
    base: &dyn Fn(Value) -> Value,
    lease: &Value,
    vm_home: &Path,
    raw: &dyn Fn(&str) -> tokio::process::Command,
) -> anyhow::Result<SyncFigures> {
    let scratch = tempfile::tempdir()?;
    let source = scratch.path().join("ws");
    let bytes = workspace(&source)?;
    let remote = |n: &str| vm_home.join(n).display().to_string();
    let sync = |direction: &str, from: &str, to: &str| {
        base(json!({
            "lease": lease,
            "operations": [{"operationId": direction, "files": [
                {"sourcePath": from, "targetPath": to, "kind": "directory"}
            ]}],
        }))
    };

    // Native, with the worker's memory sampled throughout.
    let idle = worker_pid.map_or(0, rss);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = worker_pid.map(|pid| {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let t = Instant::now();
    ok(
        worker,
        "environmentSyncIn",
        sync("in", source.to_str().unwrap(), &remote("native")),
    )
    .await?;
    let native_in = t.elapsed();
    let restored = scratch.path().join("native-out");
    let t = Instant::now();
    ok(
        worker,
        "environmentSyncOut",
        sync("out", &remote("native"), restored.to_str().unwrap()),
    )
    .await?;
    let native_out = t.elapsed();
    if let Some(s) = sampler {
        s.abort();
    }
    let rss_above_idle = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(idle);
    ensure!(
        same_files(&source, &restored)?,
        "the native round trip changed the tree"
    );

    let (fallback_in, fallback_out) = fallback(
        worker,
        base,
        lease,
        &source,
        &remote("fallback"),
        scratch.path(),
    )
    .await?;

    // Raw: local tar into ssh, and back.
    let t = Instant::now();
    let dst = remote("raw");
    pipe_local_to_remote(
        &source,
        raw(&format!("mkdir -p '{dst}' && tar -xf - -C '{dst}'")),
    )
    .await?;
    let raw_in = t.elapsed();
    let back = scratch.path().join("raw-out");
    std::fs::create_dir(&back)?;
    let t = Instant::now();
    pipe_remote_to_local(raw(&format!("tar -cf - -C '{dst}' .")), &back).await?;
    let raw_out = t.elapsed();

    Ok(SyncFigures {
        bytes,
        native_in,
        native_out,
        fallback_in,
        fallback_out,
        raw_in,
        raw_out,
        rss_above_idle,
    })
}

/// Paperclip's fallback, as `sandbox-managed-runtime` does it: in, `mkdir -p D && : > TMP`, one
/// execute per 3 MiB (`base64 -d >> TMP` fed 4 MiB of base64 on stdin), `mv`, extract; out,
/// `tar -cf`, `wc -c`, one `dd … | base64` per 3 MiB, `rm`.
async fn fallback(
    worker: &WorkerClient,
    base: &dyn Fn(Value) -> Value,
    lease: &Value,
    source: &Path,
    remote_dir: &str,
    scratch: &Path,
) -> anyhow::Result<(Duration, Duration)> {
    let sh = |script: String, stdin: Option<String>| {
        let mut p = base(json!({"lease": lease, "command": "sh", "args": ["-c", script]}));
        if let Some(s) = stdin {
            p["stdin"] = json!(s);
        }
        p
    };
    let exec = async |params: Value| -> anyhow::Result<Value> {
        let answer = ok(worker, "environmentExecute", params).await?;
        ensure!(
            answer["exitCode"] == 0,
            "fallback step failed: {}",
            answer["stderr"]
        );
        Ok(answer)
    };
    let b64 = base64::engine::general_purpose::STANDARD;

    let t = Instant::now();
    let archive = scratch.join("fallback-in.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(source)
        .arg(".")
        .status()?;
    ensure!(status.success(), "local tar failed");
    let data = std::fs::read(&archive)?;
    let tmp = format!("{remote_dir}.upload.tar.tmp");
    let target = format!("{remote_dir}.upload.tar");
    exec(sh(format!("mkdir -p '{remote_dir}' && : > '{tmp}'"), None)).await?;
    for chunk in data.chunks(CHUNK) {
        exec(sh(format!("base64 -d >> '{tmp}'"), Some(b64.encode(chunk)))).await?;
    }
    exec(sh(format!("mv -f '{tmp}' '{target}'"), None)).await?;
    exec(sh(
        format!("tar -xf '{target}' -C '{remote_dir}' && rm -f '{target}'"),
        None,
    ))
    .await?;
    let fallback_in = t.elapsed();

    let t = Instant::now();
    let out_tar = format!("{remote_dir}.restore.tar");
    exec(sh(format!("tar -cf '{out_tar}' -C '{remote_dir}' ."), None)).await?;
    let size: usize = exec(sh(format!("wc -c < '{out_tar}'"), None)).await?["stdout"]
        .as_str()
        .unwrap_or("")
        .trim()
        .parse()
        .context("wc -c")?;
    let mut restored = Vec::with_capacity(size);
    for i in 0..size.div_ceil(CHUNK) {
        let part = exec(sh(
            format!("dd if='{out_tar}' bs=3145728 skip={i} count=1 2>/dev/null | base64"),
            None,
        ))
        .await?;
        let text: String = part["stdout"]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        restored.extend_from_slice(&b64.decode(text)?);
    }
    exec(sh(format!("rm -f '{out_tar}'"), None)).await?;
    ensure!(restored.len() == size, "the fallback restore lost bytes");
    let dest = scratch.join("fallback-out");
    std::fs::create_dir(&dest)?;
    let local = scratch.join("fallback-out.tar");
    std::fs::write(&local, &restored)?;
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&local)
        .arg("-C")
        .arg(&dest)
        .status()?;
    ensure!(status.success(), "extracting the fallback restore failed");
    Ok((fallback_in, t.elapsed()))
}

async fn pipe_local_to_remote(
    source: &Path,
    mut ssh: tokio::process::Command,
) -> anyhow::Result<()> {
    let mut tar = std::process::Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(source)
        .arg(".")
        .stdout(Stdio::piped())
        .spawn()?;
    let out: std::process::ChildStdout = tar.stdout.take().expect("piped");
    let status = ssh
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(out)))
        .stdout(Stdio::null())
        .status()
        .await?;
    ensure!(
        status.success() && tar.wait()?.success(),
        "raw tar | ssh failed"
    );
    Ok(())
}

async fn pipe_remote_to_local(mut ssh: tokio::process::Command, dest: &Path) -> anyhow::Result<()> {
    let mut child = ssh.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped").into_owned_fd()?;
    let tar = std::process::Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(dest)
        .stdin(Stdio::from(out))
        .status()?;
    ensure!(
        child.wait().await?.success() && tar.success(),
        "raw ssh | tar failed"
    );
    Ok(())
}

/// The same relative files with the same bytes (directories and links compared by presence).
fn same_files(a: &Path, b: &Path) -> anyhow::Result<bool> {
    fn walk(root: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((p.strip_prefix(root)?.to_path_buf(), std::fs::read(&p)?));
                }
            }
        }
        out.sort();
        Ok(out)
    }
    Ok(walk(a)? == walk(b)?)
}

/// Print one link's rows.
pub fn print(f: &SyncFigures, link: &str) {
    let mib = f.bytes as f64 / f64::from(1 << 20);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("sync of a {mib:.0} MiB workspace (3,000 small files + 4 large), {link}:");
    println!(
        "  {:<10} {:>10} {:>10} {:>10} {:>12} {:>14}",
        "direction", "native", "raw tar|ssh", "fallback", "native/raw", "fallback/native"
    );
    for (name, native, raw, fallback) in [
        ("in", f.native_in, f.raw_in, f.fallback_in),
        ("out", f.native_out, f.raw_out, f.fallback_out),
    ] {
        println!(
            "  {:<10} {:>8.0}ms {:>8.0}ms {:>8.0}ms {:>11.2}x {:>13.2}x",
            name,
            ms(native),
            ms(raw),
            ms(fallback),
            ms(native) / ms(raw),
            ms(fallback) / ms(native)
        );
    }
    println!(
        "  worker resident memory during the native sync: {:.1} MiB above idle",
        f.rss_above_idle as f64 / f64::from(1 << 20)
    );
}
