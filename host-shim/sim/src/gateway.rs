//! The SSH gateway used by [`super::Routing::Gateway`]: an SSH server that only forwards
//! `direct-tcpip` channels (what `ssh -W` / `ProxyJump` opens) to the VM named by the requested
//! host, like exe.dev's SSH proxy picks the VM. Routing by name instead of by port means a client
//! that passes `-p 22` explicitly (overriding any `Port` in the config) still reaches the VM.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use russh::keys::PublicKey;
use russh::server::{Auth, Handler, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use super::tap::Taps;

/// Resolves `<vm>.exe.xyz` to the VM's loopback SSH port (`None`: no such live VM).
pub(crate) type Resolver = Arc<dyn Fn(&str) -> Option<u16> + Send + Sync>;

/// Accepts gateway connections until the task is aborted. Each is registered in `taps`, the
/// simulator's connection faults.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    client_key: PublicKey,
    resolve: Resolver,
    taps: Arc<Taps>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        // As for VMs: `run_stream` ignores `Config::nodelay`, and Nagle would add ~40 ms.
        let _ = stream.set_nodelay(true);
        let stream = taps.tap(stream);
        let handler = Gateway {
            client_key: client_key.clone(),
            resolve: resolve.clone(),
            channels: HashMap::new(),
        };
        let config = config.clone();
        tokio::spawn(async move {
            if let Ok(running) = russh::server::run_stream(config, stream, handler).await {
                let _ = running.await;
            }
        });
    }
}

struct Forward {
    /// Client → VM bytes; dropped on channel EOF so the writer half-closes the TCP stream.
    to_vm: Option<mpsc::UnboundedSender<Bytes>>,
    /// Dropped with the channel (or the connection): stops both directions.
    _cancel: oneshot::Sender<()>,
}

struct Gateway {
    client_key: PublicKey,
    resolve: Resolver,
    channels: HashMap<ChannelId, Forward>,
}

impl Gateway {
    fn key_auth(&self, key: &PublicKey) -> Auth {
        if key.key_data() == self.client_key.key_data() {
            Auth::Accept
        } else {
            Auth::reject()
        }
    }
}

fn refused(reason: &str) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        // SSH_OPEN_CONNECT_FAILED: OpenSSH prints "open failed: connect failed: <reason>".
        code: 2,
        reason: reason.to_owned(),
    }
}

impl Handler for Gateway {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_auth(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.key_auth(key.public_key))
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let host = host_to_connect.trim_matches(|c| c == '[' || c == ']');
        let Some(port) = (self.resolve)(host) else {
            reply.reject(refused("Connection refused")).await;
            return Ok(());
        };
        let stream = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(e) => {
                reply.reject(refused(&e.to_string())).await;
                return Ok(());
            }
        };
        let _ = stream.set_nodelay(true);
        // As for sessions: incoming data arrives through `data`, so the read half is dropped
        // and russh's session loop never waits on us.
        let (_read, write) = channel.split();
        let (to_vm, from_client) = mpsc::unbounded_channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.channels.insert(
            write.id(),
            Forward {
                to_vm: Some(to_vm),
                _cancel: cancel_tx,
            },
        );
        reply.accept().await;
        tokio::spawn(relay(stream, write, from_client, cancel_rx));
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|f| f.to_vm.as_ref()) {
            let _ = tx.send(Bytes::copy_from_slice(data));
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(f) = self.channels.get_mut(&channel) {
            f.to_vm = None;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

/// Moves bytes both ways until the VM closes its side (then EOF + close to the client) or the
/// client goes away (cancel).
async fn relay(
    stream: tokio::net::TcpStream,
    write: ChannelWriteHalf<Msg>,
    mut from_client: mpsc::UnboundedReceiver<Bytes>,
    cancel: oneshot::Receiver<()>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let upstream = async move {
        while let Some(chunk) = from_client.recv().await {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
        // Keep the write half open until the whole relay ends.
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if write
                        .data_bytes(Bytes::copy_from_slice(&buf[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = write.eof().await;
        let _ = write.close().await;
    };
    tokio::select! {
        _ = downstream => {}
        _ = upstream => {}
        _ = cancel => {}
    }
}
