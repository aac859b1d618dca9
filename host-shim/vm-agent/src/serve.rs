//! `serve`: one agent per SSH connection that starts runs on request, so an execute costs the
//! request's round trip on a channel that is already open, and no program start besides the
//! command's own (see `paperclip_vm_agent::serve` for the messages).
//!
//! A served run is exactly a run of [`crate::handle`]: the same spool, the same keeper (here a
//! thread of this process), the same stream (a thread that sends the run's tagged frames), the
//! same attach. Only the way in and out differs: this thread reads the host's messages and
//! hands each run its stdin chunks and its acknowledgement; the runs' streams share stdout, one
//! whole frame at a time.
//!
//! When the connection ends (stdin closes) the runs go on: their keepers are threads of this
//! process, which ignores `SIGHUP` and `SIGPIPE` like the single-run agent and exits only once
//! every run it started has recorded its status. A host that reconnects attaches to them from
//! the spool, through a serving agent of the new connection. A run whose stdin had not arrived
//! whole never starts, as before.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use paperclip_vm_agent::serve::{self as wire, msg};
use paperclip_vm_agent::{frame, kind, Header, HEADER_LEN};

use crate::follow::{Link, ACK_WAIT};
use crate::{spool, sweep, sys};

/// stdout shared by every run's stream.
struct SharedOutput {
    out: Mutex<Output>,
}

struct Output {
    out: sys::Output,
    /// A write failed (the host is gone or stalled past the agent's limit): every later write
    /// fails at once instead of stalling again.
    broken: bool,
}

impl SharedOutput {
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut o = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if o.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let r = o.out.send(bytes);
        o.broken = r.is_err();
        r
    }
}

/// One served run's share of the channel.
struct Tagged {
    out: Arc<SharedOutput>,
    id: u64,
    ack: Receiver<()>,
}

impl Link for Tagged {
    fn send(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.out.send(&wire::tagged(kind, self.id, payload))
    }

    fn acknowledged(&mut self) -> bool {
        // A closed channel (the connection ended) is no acknowledgement: the spool stays for
        // the host's attach.
        self.ack.recv_timeout(ACK_WAIT).is_ok()
    }
}

/// A run's stdin as the host's chunks arrive; ends early (a short read of 0) when the
/// connection ends first, which `store_stdin` reports as incomplete.
struct Chunks {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// What the reading thread hands a live run.
struct Inbox {
    stdin: Sender<Vec<u8>>,
    ack: Sender<()>,
}

/// Runs in flight: their inboxes by id, and how many threads still keep one.
#[derive(Default)]
struct Runs {
    inboxes: Mutex<HashMap<u64, Inbox>>,
    live: Mutex<usize>,
    ended: Condvar,
}

impl Runs {
    fn inboxes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Inbox>> {
        self.inboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self) {
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn end(&self, id: u64) {
        self.inboxes().remove(&id);
        *self.live.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        self.ended.notify_all();
    }

    fn wait_all(&self) {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        drop(
            self.ended
                .wait_while(live, |n| *n > 0)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

/// Serve until the connection ends, then until every run started here has ended.
pub(crate) fn serve() {
    let out = Arc::new(SharedOutput {
        out: Mutex::new(Output {
            out: sys::Output::stdout(),
            broken: false,
        }),
    });
    if out.send(&wire::hello_frame()).is_err() {
        return;
    }
    let root = match spool::root() {
        Ok(r) => r,
        Err(e) => {
            let _ = out.send(&frame(kind::FAILED, e.as_bytes()));
            return;
        }
    };
    // The keepers ignore these too; set before any run so a connection that ends between two
    // runs cannot end this process.
    // SAFETY: plain signal dispositions of this process; commands get the defaults back
    // through posix_spawn's SETSIGDEF.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let runs = Arc::new(Runs::default());
    let mut input = BufReader::with_capacity(256 * 1024, sys::stdin());
    while let Ok(Some((k, id, payload))) = wire::read_tagged(&mut input, wire::MAX_MESSAGE) {
        match k {
            msg::REQUEST => request(&root, &out, &runs, id, payload),
            msg::STDIN => {
                if let Some(inbox) = runs.inboxes().get(&id) {
                    let _ = inbox.stdin.send(payload);
                }
            }
            msg::ACK => {
                if let Some(inbox) = runs.inboxes().remove(&id) {
                    let _ = inbox.ack.send(());
                }
            }
            other => {
                let why = format!("unknown message kind {other:#04x}");
                let _ = out.send(&wire::tagged(kind::FAILED, id, why.as_bytes()));
            }
        }
    }
    // The connection ended (or sent something that is not this protocol): runs whose stdin
    // is incomplete start nothing, streams waiting for an acknowledgement stop waiting, and
    // keepers keep their commands to the end.
    runs.inboxes().clear();
    runs.wait_all();
}

/// A run or attach request: checked here, then served by a thread of its own.
fn request(
    root: &std::path::Path,
    out: &Arc<SharedOutput>,
    runs: &Arc<Runs>,
    id: u64,
    payload: Vec<u8>,
) {
    let refuse = |why: &str| {
        let _ = out.send(&wire::tagged(kind::FAILED, id, why.as_bytes()));
    };
    let Some(raw) = payload.first_chunk::<HEADER_LEN>() else {
        return refuse("a request shorter than its header");
    };
    let header = match Header::decode(raw) {
        Ok(h) => h,
        Err(e) => return refuse(&e.to_string()),
    };
    if header.id != id || payload.len() != HEADER_LEN + header.script_len as usize {
        return refuse("a request whose header does not match its message");
    }
    sweep::maybe_sweep(root);
    let script = payload[HEADER_LEN..].to_vec();
    let (stdin_tx, stdin_rx) = mpsc::channel();
    let (ack_tx, ack_rx) = mpsc::channel();
    runs.inboxes().insert(
        id,
        Inbox {
            stdin: stdin_tx,
            ack: ack_tx,
        },
    );
    runs.begin();
    let link = Tagged {
        out: out.clone(),
        id,
        ack: ack_rx,
    };
    let stdin = Chunks {
        rx: stdin_rx,
        chunk: Vec::new(),
        at: 0,
    };
    let run = spool::Run::new(root, id);
    let mine = runs.clone();
    let spawned = std::thread::Builder::new().spawn(move || {
        crate::handle(link, stdin, run, header, script);
        mine.end(id);
    });
    if let Err(e) = spawned {
        // Nothing started; the host hears why (a VM out of threads).
        runs.end(id);
        let why = format!("starting a thread for the run on the VM: {e}");
        let _ = out.send(&wire::tagged(kind::FAILED, id, why.as_bytes()));
    }
}
