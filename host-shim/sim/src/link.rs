//! The simulator's link model: a userspace TCP relay in front of its SSH entry point that adds a
//! round-trip time and caps the bandwidth, so tests and benchmarks see what a real link to
//! exe.dev costs (kernel traffic shaping is not available on the machines this runs on).
//!
//! Each direction is modelled on its own, as a link of the given rate followed by a fixed
//! one-way delay of half the round trip: a chunk read from the sender leaves the link after the
//! chunks before it plus its own serialisation time, and is delivered a half round trip later.
//! The bytes queued inside the relay are bounded by the bandwidth-delay product plus a small
//! bottleneck queue; past that the relay stops reading, so the sender's TCP sees back-pressure
//! as it would at a real bottleneck instead of an infinitely fast sink.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Largest chunk moved at a time: small enough that serialisation is modelled finely (1.3 ms at
/// 100 Mbit/s), large enough to keep the relay cheap.
const CHUNK: usize = 16 * 1024;

/// The bottleneck queue beyond the bandwidth-delay product.
const QUEUE_BYTES: usize = 256 * 1024;

/// A link: added round-trip time and a bandwidth cap (both directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkModel {
    /// Round-trip time added to every exchange.
    pub rtt: Duration,
    /// Bandwidth in bits per second, per direction; `None` leaves it uncapped.
    pub bits_per_sec: Option<u64>,
}

impl LinkModel {
    /// A link of `rtt_ms` milliseconds round trip and `mbit` Mbit/s (0: uncapped).
    pub fn new(rtt_ms: u64, mbit: u64) -> Self {
        LinkModel {
            rtt: Duration::from_millis(rtt_ms),
            bits_per_sec: (mbit > 0).then(|| mbit * 1_000_000),
        }
    }

    /// `"30 ms / 100 Mbit/s"`, for reports.
    pub fn describe(&self) -> String {
        match self.bits_per_sec {
            Some(b) => format!("{} ms / {} Mbit/s", self.rtt.as_millis(), b / 1_000_000),
            None => format!("{} ms / uncapped", self.rtt.as_millis()),
        }
    }

    /// Time `bytes` take to cross the link at its rate.
    fn serialisation(&self, bytes: usize) -> Duration {
        match self.bits_per_sec {
            Some(bps) => Duration::from_nanos(
                u64::try_from(bytes as u128 * 8 * 1_000_000_000 / u128::from(bps))
                    .unwrap_or(u64::MAX),
            ),
            None => Duration::ZERO,
        }
    }

    /// Bytes the relay holds per direction before it stops reading.
    fn queue_limit(&self) -> usize {
        let bdp = match self.bits_per_sec {
            Some(bps) => (u128::from(bps) * self.rtt.as_nanos() / 8 / 1_000_000_000) as usize,
            None => 4 << 20,
        };
        bdp + QUEUE_BYTES
    }
}

/// A relay listening on loopback that forwards every connection to `127.0.0.1:<target>` over
/// the link model. Aborting the returned task stops accepting; connections in flight end with
/// their peers.
pub(crate) async fn spawn_relay(
    target: u16,
    model: LinkModel,
) -> std::io::Result<(u16, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                relay_one(client, server, model).await;
            });
        }
    });
    Ok((port, task))
}

/// How one direction of a relayed connection ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed (FIN), passed on as a half-close.
    Closed,
    /// A read or write failed: one side was reset (e.g. the simulator's reset fault on the
    /// gateway behind the relay).
    Broken,
}

/// Relays one connection until both directions close. A reset on either side resets the
/// other at once (the bytes still in flight are lost, as with a real RST), so a client behind
/// the link sees the gateway's reset fault as a reset, not as a FIN after the queue drained.
async fn relay_one(mut client: TcpStream, mut server: TcpStream, model: LinkModel) {
    // The model adds the delays; Nagle would add its own on top.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let broken = {
        let (client_rd, client_wr) = client.split();
        let (server_rd, server_wr) = server.split();
        let up = direction(client_rd, server_wr, model);
        let down = direction(server_rd, client_wr, model);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut up, if !up_done => {
                    up_done = true;
                    if end == End::Broken { break true; }
                }
                end = &mut down, if !down_done => {
                    down_done = true;
                    if end == End::Broken { break true; }
                }
                else => break false,
            }
        }
    };
    if broken {
        // Zero linger: dropping the sockets sends an RST to both peers.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// One chunk on its way: when it arrives, its bytes, and its room in the queue.
struct InFlight {
    arrive: Instant,
    bytes: Vec<u8>,
    _room: OwnedSemaphorePermit,
}

/// Moves one direction's bytes over the model until the sender closes (then half-closes the
/// receiver's side) or either side fails.
async fn direction(mut from: ReadHalf<'_>, mut to: WriteHalf<'_>, model: LinkModel) -> End {
    let limit = model.queue_limit();
    let room = Arc::new(Semaphore::new(limit));
    let (tx, mut rx) = mpsc::unbounded_channel::<InFlight>();
    let half_rtt = model.rtt / 2;
    let sender = async move {
        // When the link finishes sending what it already holds.
        let mut link_free = Instant::now();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) => return End::Closed,
                Err(_) => return End::Broken,
                Ok(n) => n,
            };
            let Ok(permit) = room.clone().acquire_many_owned(n as u32).await else {
                return End::Broken;
            };
            let now = Instant::now();
            link_free = link_free.max(now) + model.serialisation(n);
            let chunk = InFlight {
                arrive: link_free + half_rtt,
                bytes: buf[..n].to_vec(),
                _room: permit,
            };
            if tx.send(chunk).is_err() {
                // The receiver failed; it reports that.
                return End::Closed;
            }
        }
        // Returning drops `tx`, which tells the receiver that nothing more comes.
    };
    let receiver = async move {
        while let Some(chunk) = rx.recv().await {
            sleep_until_precisely(chunk.arrive).await;
            if to.write_all(&chunk.bytes).await.is_err() {
                return End::Broken;
            }
        }
        let _ = to.shutdown().await;
        End::Closed
    };
    // A broken side ends the direction at once; a close waits for the queue to drain.
    tokio::pin!(sender, receiver);
    tokio::select! {
        End::Broken = &mut sender => End::Broken,
        end = &mut receiver => end,
    }
}

/// Wait until `deadline`, to a fraction of a millisecond. Tokio's timer counts whole
/// milliseconds: a sleep ends at the first tick after its deadline, up to a millisecond or two
/// late, which on every chunk each way would make the link slower than its model (a 30 ms link
/// that takes 32 ms a round trip). So the timer sleeps to just short of the deadline, and a
/// blocking thread sleeps the rest on the kernel's high-resolution timer.
pub async fn sleep_until_precisely(deadline: Instant) {
    /// More than the timer's lateness.
    const MARGIN: Duration = Duration::from_millis(2);
    if let Some(early) = deadline.checked_sub(MARGIN) {
        if early > Instant::now() {
            tokio::time::sleep_until(early).await;
        }
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // A failed join is a runtime shutting down: nothing waits for this sleep any more.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialisation_and_queue() {
        let m = LinkModel::new(30, 100);
        // 100 Mbit/s: 12.5 bytes per µs, so 125,000 bytes take 10 ms.
        assert_eq!(m.serialisation(125_000), Duration::from_millis(10));
        // BDP: 100 Mbit/s × 30 ms = 375,000 bytes.
        assert_eq!(m.queue_limit(), 375_000 + QUEUE_BYTES);
        assert_eq!(m.describe(), "30 ms / 100 Mbit/s");
        let uncapped = LinkModel::new(5, 0);
        assert_eq!(uncapped.serialisation(1 << 30), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_precise_sleep_never_ends_before_its_deadline() {
        for us in [0u64, 300, 1_500, 2_500, 7_300] {
            let deadline = Instant::now() + Duration::from_micros(us);
            sleep_until_precisely(deadline).await;
            assert!(Instant::now() >= deadline, "{us} µs");
        }
    }

    #[tokio::test]
    async fn adds_the_round_trip_and_caps_the_rate() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => s.write_all(&buf[..n]).await.unwrap(),
                }
            }
        });
        let model = LinkModel::new(40, 8);
        let (port, relay) = spawn_relay(echo_port, model).await.unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.set_nodelay(true).unwrap();

        // One byte there and back: at least the round trip.
        let t = std::time::Instant::now();
        c.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );

        // 200,000 bytes at 8 Mbit/s (1 byte/µs) take ≥ 200 ms each way; they come back intact.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let t = std::time::Instant::now();
        let (mut rd, mut wr) = c.into_split();
        let expected = data.clone();
        let writer = tokio::spawn(async move { wr.write_all(&data).await.unwrap() });
        let mut back = vec![0u8; expected.len()];
        rd.read_exact(&mut back).await.unwrap();
        writer.await.unwrap();
        assert!(back == expected, "bytes changed in transit");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        relay.abort();
    }
}
