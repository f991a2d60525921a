//! A TCP proxy on loopback that the test can stall: while stalled it moves no bytes in either
//! direction and closes nothing, so the client sees a hung connection (its TLS session, its
//! HTTP/2 stream and its TCP connection all stay open), as when a network path black-holes.
//! It forwards raw bytes, so TLS passes through untouched.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct StallProxy {
    pub addr: SocketAddr,
    stalled: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stalled, _) = watch::channel(false);
        let gate = stalled.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let gate = gate.subscribe();
                tokio::spawn(async move {
                    // A connection opened while stalled hangs too, before it reaches upstream.
                    let _ = gate.clone().wait_for(|s| !*s).await;
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(pump(client_read, server_write, gate.clone()), pump(server_read, client_write, gate));
                });
            }
        });
        StallProxy { addr, stalled, accept }
    }

    /// Stops forwarding bytes, both ways, on every connection (open and future ones).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards bytes again.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies `from` to `to`, holding every chunk while the gate says stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if gate.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read before the stall began: hold it until the stall ends.
        if gate.wait_for(|s| !*s).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Not even the close passes while stalled.
    if gate.wait_for(|s| !*s).await.is_ok() {
        let _ = to.shutdown().await;
    }
}
