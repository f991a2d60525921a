//! A TCP proxy on loopback that the test can stall: while stalled it moves no bytes in either
//! direction and closes nothing, so the client sees a hung connection (its TLS session, its
//! HTTP/2 stream and its TCP connection all stay open), as when a network path black-holes.
//! It forwards raw bytes, so TLS passes through untouched.
//!
//! It can also be slow (each chunk held for a while, both ways), and refuse: every open
//! connection is closed and the port stops listening (new connections are refused), at once
//! or once the clients have sent a number of bytes (partway through an upload), until
//! [`StallProxy::accept_again`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct StallProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    stalled: watch::Sender<bool>,
    shared: Arc<Shared>,
    accept: std::sync::Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// Milliseconds each chunk is held (0: none).
    delay_ms: AtomicU64,
    /// Bytes clients sent so far.
    sent: AtomicU64,
    /// Refuse once `sent` passes this.
    refuse_after: AtomicU64,
    /// Bumped on every refusal: connections of an older generation close.
    generation: watch::Sender<u64>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> StallProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stalled, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            delay_ms: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            refuse_after: AtomicU64::new(u64::MAX),
            generation: watch::channel(0).0,
        });
        let proxy = StallProxy { addr, upstream, stalled, shared, accept: std::sync::Mutex::new(None) };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (gate, upstream, shared) = (self.stalled.clone(), self.upstream, self.shared.clone());
        let accept = tokio::spawn(async move {
            let mut refused = shared.generation.subscribe();
            let listening = *refused.borrow_and_update();
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => return,
                    },
                    // Dropping the listener: connections are refused.
                    _ = refused.wait_for(|g| *g != listening) => return,
                };
                let (gate, shared) = (gate.subscribe(), shared.clone());
                tokio::spawn(async move {
                    // A connection opened while stalled hangs too, before it reaches upstream.
                    let _ = gate.clone().wait_for(|s| !*s).await;
                    let Ok(server) = TcpStream::connect(upstream).await else { return };
                    let mut cut = shared.generation.subscribe();
                    let born = *cut.borrow_and_update();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let up = pump(client_read, server_write, gate.clone(), &shared, true);
                    let down = pump(server_read, client_write, gate, &shared, false);
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        // Dropping both halves closes the connection.
                        _ = cut.wait_for(|g| *g != born) => {}
                    }
                });
            }
        });
        if let Some(old) = self.accept.lock().unwrap().replace(accept) {
            old.abort();
        }
    }

    /// Stops forwarding bytes, both ways, on every connection (open and future ones).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Forwards bytes again.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// Holds every chunk for `delay` (both ways) from now on: a slow path.
    pub fn slow(&self, delay: Duration) {
        self.shared.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Bytes the clients have sent through the proxy so far.
    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// Refuses once the clients have sent `bytes` more than so far: partway through an upload.
    pub fn refuse_after(&self, bytes: u64) {
        self.shared.refuse_after.store(self.bytes_sent() + bytes, Ordering::SeqCst);
    }

    /// Whether the proxy refuses connections now.
    pub fn refusing(&self) -> bool {
        self.accept.lock().unwrap().as_ref().is_none_or(|t| t.is_finished())
    }

    /// Closes every open connection and stops listening: connections are refused.
    pub fn refuse(&self) {
        refuse(&self.shared);
    }

    /// Listens on the same port again (after a refusal).
    pub async fn accept_again(&self) {
        self.shared.refuse_after.store(u64::MAX, Ordering::SeqCst);
        let listener = TcpListener::bind(self.addr).await.expect("bind the proxy's port again");
        self.serve(listener);
    }
}

fn refuse(shared: &Shared) {
    shared.generation.send_modify(|g| *g += 1);
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().unwrap().take() {
            accept.abort();
        }
        refuse(&self.shared);
    }
}

/// Copies `from` to `to`, holding every chunk while the gate says stalled (and for the delay
/// when slow); counts what clients send (`upload`) and refuses past the threshold.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
    shared: &Shared,
    upload: bool,
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
        let delay = shared.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if upload {
            let sent = shared.sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
            if sent > shared.refuse_after.load(Ordering::SeqCst) {
                refuse(shared);
                return;
            }
        }
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
