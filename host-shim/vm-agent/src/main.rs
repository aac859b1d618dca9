//! `paperclip-vm-agent`: the VM side of durable executions (see the library's docs for the
//! protocol). The host uploads it once per VM (checked by its SHA-256 before it is put in
//! place) and starts it through the VM's SSH connection for every durable execute:
//!
//! - `run`: store the command's stdin, start the command under a *keeper* (a process in a
//!   session of its own, so the SSH session's end does not touch it) that spools stdout, stderr
//!   and the exit status to files, and stream the spool while it grows;
//! - `attach`: stream a run that started earlier, from the offsets the host already holds;
//! - `serve` (the argument): both, for any number of runs, over one session that stays open
//!   while its connection lives (see `paperclip_vm_agent::serve`), so an execute costs the
//!   request's round trip and no program start besides the command's.
//!
//! Everything the agent knows about a run is in its spool directory; the agent keeps no other
//! state and talks to nothing but its own stdin and stdout.

mod follow;
mod keeper;
mod serve;
mod spool;
mod sweep;
mod sys;

use std::io::Read as _;

use paperclip_vm_agent::{frame, hello_frame, kind, Header, Op, HEADER_LEN};

/// The agent's version, for `--version`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--version") => {
            println!("paperclip-vm-agent {VERSION}");
            return;
        }
        Some(paperclip_vm_agent::serve::ARG) => return serve::serve(),
        _ => {}
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
    // The ACK byte comes on the same stdin, after the command's stdin: one descriptor, read
    // unbuffered by both.
    let stdin = match input.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(&mut out, &format!("duplicating stdin on the VM: {e}")),
    };
    let run = spool::Run::new(&root, header.id);
    handle(follow::Session { out, input }, stdin, run, header, script);
}

/// Serve one request: a run (started unless it already was) or an attach, streamed over `link`
/// until its exit frame is acknowledged or the host is gone.
pub(crate) fn handle<L: follow::Link + Send + 'static>(
    mut link: L,
    stdin: impl std::io::Read,
    run: spool::Run,
    header: Header,
    script: Vec<u8>,
) {
    match header.op {
        Op::Run => start(link, stdin, run, header, script),
        Op::Attach => {
            if !run.started() {
                let _ = link.send(kind::NOT_STARTED, b"");
                return;
            }
            if link.send(kind::STARTED, b"").is_err() {
                return;
            }
            let wake = follow::Wake::Dir(sys::DirWatch::new(&run.dir));
            follow::follow(&mut link, &run, &header, &wake);
        }
    }
}

/// `run`: store stdin and start the command (unless this run already started), then stream:
/// this thread keeps the command, another one streams the spool.
fn start<L: follow::Link + Send + 'static>(
    mut link: L,
    mut stdin: impl std::io::Read,
    run: spool::Run,
    header: Header,
    script: Vec<u8>,
) {
    if let Err(e) = run.create_dir() {
        let _ = link.send(kind::FAILED, e.as_bytes());
        return;
    }
    let stored = if run.started() {
        // Started by an earlier request whose answer was lost: never start it twice.
        spool::Stored::Lost
    } else {
        match run.store_stdin(&mut stdin, header.stdin_len) {
            Ok(stored) => stored,
            Err(e) => {
                let _ = link.send(kind::FAILED, e.as_bytes());
                return;
            }
        }
    };
    let started = match stored {
        spool::Stored::Incomplete => return,
        spool::Stored::Lost => None,
        spool::Stored::Won => match keeper::start(&run, &header, script) {
            Ok(started) => Some(started),
            Err(e) => {
                run.write_status_failure(&e);
                let _ = link.send(kind::FAILED, e.as_bytes());
                return;
            }
        },
    };
    if link.send(kind::STARTED, b"").is_err() && started.is_none() {
        return;
    }
    let Some(started) = started else {
        let wake = follow::Wake::Dir(sys::DirWatch::new(&run.dir));
        return follow::follow(&mut link, &run, &header, &wake);
    };
    let wake = std::sync::Arc::new(follow::Wake::local());
    let stream = {
        let (wake, run, header) = (wake.clone(), run.clone(), header.clone());
        std::thread::spawn(move || follow::follow(&mut link, &run, &header, &wake))
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
