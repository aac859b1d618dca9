//! Connection faults at the simulator's SSH entry point. Every connection the entry point
//! accepts (the gateway's, or each VM's own server with direct ports) is a [`Tapped`] stream
//! registered in [`Taps`], so a test can act on every connection live at one moment:
//!
//! * **reset**: the connection's next (or pending) read and write fail with `ECONNRESET`, so
//!   the SSH server owning it ends the session at once and drops the stream, which is closed
//!   with `SO_LINGER` 0: the peer gets an RST, as from a NAT that forgot the flow.
//! * **silence**: from then on every byte read is discarded and every write is reported done
//!   but not sent, and nothing is closed, as on a link that drops every packet. Only the peer
//!   ending the connection (FIN or RST) still gets through, so the session ends when the client
//!   gives up and nothing outlives the connection.
//!
//! The wrapper costs one atomic load per poll, and a mutex-guarded waker store when the socket
//! has nothing to give (so a fault can wake a poll parked on an idle socket); no task is
//! spawned. A connection's state only moves forward (live → silent → reset), so concurrent or
//! repeated calls cannot undo each other.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const LIVE: u8 = 0;
const SILENT: u8 = 1;
const RESET: u8 = 2;

/// The live connections of one entry point.
#[derive(Default)]
pub(crate) struct Taps {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Control>>>,
}

impl Taps {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Control>>> {
        // The map stays consistent whatever panicked while holding the lock.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an accepted connection; it leaves the registry when the wrapper is dropped.
    pub(crate) fn tap(self: &Arc<Self>, stream: TcpStream) -> Tapped {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let ctrl = Arc::new(Control::default());
        self.lock().insert(id, ctrl.clone());
        Tapped {
            stream,
            ctrl,
            id,
            taps: self.clone(),
        }
    }

    /// Resets every live connection; returns how many were not already reset.
    pub(crate) fn reset_all(&self) -> usize {
        self.escalate_all(RESET)
    }

    /// Silences every live connection that is neither silent nor reset; returns how many.
    pub(crate) fn silence_all(&self) -> usize {
        self.escalate_all(SILENT)
    }

    /// Connections accepted and not yet dropped (silenced ones included).
    pub(crate) fn count(&self) -> usize {
        self.lock().len()
    }

    fn escalate_all(&self, to: u8) -> usize {
        // Collected first: waking runs foreign code, which must not run under our lock.
        let controls: Vec<Arc<Control>> = self.lock().values().cloned().collect();
        controls.iter().filter(|c| c.escalate(to)).count()
    }
}

/// One connection's fault state, shared by the registry and the stream.
struct Control {
    state: AtomicU8,
    /// The tasks parked on the socket (reading, writing), woken when the state changes.
    parked: Mutex<[Option<Waker>; 2]>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            state: AtomicU8::new(LIVE),
            parked: Mutex::default(),
        }
    }
}

const READING: usize = 0;
const WRITING: usize = 1;

impl Control {
    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Moves the state forward to `to`; true when it changed. Wakes parked polls so that an
    /// idle connection sees a reset now, not when its peer next sends something.
    fn escalate(&self, to: u8) -> bool {
        if self.state.fetch_max(to, Ordering::AcqRel) >= to {
            return false;
        }
        let wakers = std::mem::take(&mut *self.parked.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
        true
    }

    /// Called when the socket returned `Pending` in state `seen`: stores the waker, then makes
    /// sure a change that raced with the poll is not missed.
    fn park(&self, slot: usize, cx: &Context<'_>, seen: u8) {
        {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            if !parked[slot]
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                parked[slot] = Some(cx.waker().clone());
            }
        }
        if self.state() != seen {
            cx.waker().wake_by_ref();
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "connection reset (simulator fault)",
    )
}

/// A TCP stream with the faults of [`Taps`].
pub(crate) struct Tapped {
    stream: TcpStream,
    ctrl: Arc<Control>,
    id: u64,
    taps: Arc<Taps>,
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.taps.lock().remove(&self.id);
        if self.ctrl.state() == RESET {
            // Zero linger: closing the socket (when the field drops, right after) sends an RST
            // instead of a FIN, and never blocks.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Tapped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let seen = this.ctrl.state();
            if seen == RESET {
                return Poll::Ready(Err(reset_error()));
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.stream).poll_read(cx, buf) {
                Poll::Pending => {
                    this.ctrl.park(READING, cx, seen);
                    return Poll::Pending;
                }
                // Data while silent is dropped; EOF (nothing read) and errors pass, so the
                // session ends with its peer.
                Poll::Ready(Ok(())) if seen == SILENT && buf.filled().len() > before => {
                    buf.set_filled(before);
                }
                ready => return ready,
            }
        }
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.ctrl.state() {
            RESET => Poll::Ready(Err(reset_error())),
            SILENT => Poll::Ready(Ok(data.len())),
            seen => {
                let r = Pin::new(&mut this.stream).poll_write(cx, data);
                if r.is_pending() {
                    this.ctrl.park(WRITING, cx, seen);
                }
                r
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.ctrl.state() {
            RESET => Poll::Ready(Err(reset_error())),
            SILENT => Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum())),
            seen => {
                let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
                if r.is_pending() {
                    this.ctrl.park(WRITING, cx, seen);
                }
                r
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.ctrl.state() {
            RESET => Poll::Ready(Err(reset_error())),
            SILENT => Poll::Ready(Ok(())),
            _ => Pin::new(&mut this.stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.ctrl.state() {
            RESET => Poll::Ready(Err(reset_error())),
            // A silenced session only shuts down once its peer has gone: let the FIN out then.
            _ => Pin::new(&mut this.stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tapped echo server's accepted stream, and the client's end.
    async fn pair(taps: &Arc<Taps>) -> (Tapped, TcpStream) {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (taps.tap(server), client)
    }

    #[tokio::test]
    async fn reset_wakes_an_idle_reader_and_sends_rst() {
        let taps = Arc::new(Taps::default());
        let (mut server, mut client) = pair(&taps).await;
        assert_eq!(taps.count(), 1);
        let reader = tokio::spawn(async move {
            let mut b = [0u8; 8];
            let r = server.read(&mut b).await;
            drop(server);
            r
        });
        tokio::task::yield_now().await;
        assert_eq!(taps.reset_all(), 1);
        assert_eq!(taps.reset_all(), 0, "a second reset changes nothing");
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(taps.count(), 0);
        let mut b = [0u8; 8];
        let err = client.read(&mut b).await.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::ConnectionReset,
            "an RST, not a FIN"
        );
    }

    #[tokio::test]
    async fn silence_drops_both_ways_and_passes_eof() {
        let taps = Arc::new(Taps::default());
        let (mut server, mut client) = pair(&taps).await;
        client.write_all(b"before").await.unwrap();
        let mut b = [0u8; 6];
        server.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"before");

        assert_eq!(taps.silence_all(), 1);
        assert_eq!(taps.silence_all(), 0);
        server.write_all(b"lost").await.unwrap();
        client.write_all(b"lost too").await.unwrap();
        let mut b = [0u8; 8];
        let quiet = tokio::time::timeout(Duration::from_millis(300), client.read(&mut b)).await;
        assert!(quiet.is_err(), "the client got {quiet:?}");
        // The client's close still ends the server's side.
        drop(client);
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        // Reset after silence is allowed.
        assert_eq!(taps.reset_all(), 1);
        drop(server);
        assert_eq!(taps.count(), 0);
    }
}
