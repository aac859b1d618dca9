//! `paperclip-vm-agent`: the VM side of durable executions (see the library's docs for the
//! protocol). The host uploads it once per VM (checked by its SHA-256 before it is put in
//! place) and starts it through the VM's SSH connection for every durable execute:
//!
//! - `run`: store the command's stdin, start the command under a *keeper* (a process in a
//!   session of its own, so the SSH session's end does not touch it) that spools stdout, stderr
//!   and the exit status to files, and stream the spool while it grows;
//! - `attach`: stream a run that started earlier, from the offsets the host already holds.
//!
//! Everything the agent knows about a run is in its spool directory; the agent keeps no other
//! state and talks to nothing but its own stdin and stdout.

mod follow;
mod keeper;
mod spool;
mod sweep;
mod sys;

use std::io::Read as _;

use paperclip_vm_agent::{frame, hello_frame, kind, Header, Op, HEADER_LEN};

/// The agent's version, for `--version`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("paperclip-vm-agent {VERSION}");
        return;
    }
    let mut out = sys::Output::stdout();
    if out.send(&hello_frame()).is_err() {
        return;
    }
    let mut input = sys::stdin();
    let mut raw = [0u8; HEADER_LEN];
    if input.read_exact(&mut raw).is_err() {
        // The host went away before it asked for anything.
        return;
    }
    let header = match Header::decode(&raw) {
        Ok(h) => h,
        Err(e) => return fail(&mut out, &e.to_string()),
    };
    let mut script = vec![0u8; header.script_len as usize];
    if input.read_exact(&mut script).is_err() {
        return;
    }
    let root = match spool::root() {
        Ok(r) => r,
        Err(e) => return fail(&mut out, &e),
    };
    sweep::maybe_sweep(&root);
    let run = spool::Run::new(&root, header.id);
    match header.op {
        Op::Run => start(out, input, run, header, script),
        Op::Attach => {
            if !run.started() {
                let _ = out.send(&frame(kind::NOT_STARTED, b""));
                return;
            }
            if out.send(&frame(kind::STARTED, b"")).is_err() {
                return;
            }
            let wake = follow::Wake::Dir(sys::DirWatch::new(&run.dir));
            follow::follow(&mut out, &mut input, &run, &header, &wake);
        }
    }
}

/// `run`: store stdin and start the command (unless this run already started), then stream:
/// this process keeps the command, a thread of it streams the spool.
fn start(
    mut out: sys::Output,
    mut input: std::fs::File,
    run: spool::Run,
    header: Header,
    script: Vec<u8>,
) {
    if let Err(e) = run.create_dir() {
        return fail(&mut out, &e);
    }
    let stored = if run.started() {
        // Started by an earlier request whose answer was lost: never start it twice.
        spool::Stored::Lost
    } else {
        match run.store_stdin(&mut input, header.stdin_len) {
            Ok(stored) => stored,
            Err(e) => return fail(&mut out, &e),
        }
    };
    let started = match stored {
        spool::Stored::Incomplete => return,
        spool::Stored::Lost => None,
        spool::Stored::Won => match keeper::start(&run, &header, script) {
            Ok(started) => Some(started),
            Err(e) => {
                run.write_status_failure(&e);
                return fail(&mut out, &e);
            }
        },
    };
    if out.send(&frame(kind::STARTED, b"")).is_err() && started.is_none() {
        return;
    }
    let Some(started) = started else {
        let wake = follow::Wake::Dir(sys::DirWatch::new(&run.dir));
        return follow::follow(&mut out, &mut input, &run, &header, &wake);
    };
    let wake = std::sync::Arc::new(follow::Wake::local());
    let stream = {
        let (wake, run, header) = (wake.clone(), run.clone(), header.clone());
        std::thread::spawn(move || follow::follow(&mut out, &mut input, &run, &header, &wake))
    };
    let status = started.keep(&wake);
    let _ = run.write_status(&status);
    wake.finish();
    let _ = stream.join();
}

/// Report a failure to the host (best effort: the host may be gone).
fn fail(out: &mut sys::Output, why: &str) {
    let _ = out.send(&frame(kind::FAILED, why.as_bytes()));
}
