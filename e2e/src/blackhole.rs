//! A TCP proxy for fault injection, on a free loopback port: it forwards between its
//! clients and a target until it is made a black hole. From then on nothing more is
//! forwarded in either direction on the connections it has, and they stay open (no reset,
//! no FIN: a peer that vanished without a word); new connections are accepted but never
//! reach the target. After [`BlackHole::restore`] new connections are forwarded again,
//! while the frozen ones stay frozen (that peer is gone for good): a client must give up on
//! them by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct State {
    target: SocketAddr,
    /// Bumped by every black hole: connections of an older generation are frozen.
    generation: AtomicU64,
    holed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The proxy; stops (closing every connection) when dropped.
pub struct BlackHole {
    /// Its port on 127.0.0.1.
    pub port: u16,
    state: Arc<State>,
}

impl BlackHole {
    /// Starts forwarding `127.0.0.1:<port>` to `target`.
    pub async fn start(target: SocketAddr) -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let state = Arc::new(State {
            target,
            generation: AtomicU64::new(0),
            holed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        });
        let accept = tokio::spawn(accept(listener, state.clone()));
        lock(&state.tasks).push(accept);
        BlackHole { port, state }
    }

    /// Stops forwarding, silently, on every connection; new ones go nowhere.
    pub fn black_hole(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        self.state.holed.store(true, Ordering::SeqCst);
    }

    /// New connections reach the target again (the frozen ones stay frozen).
    pub fn restore(&self) {
        self.state.holed.store(false, Ordering::SeqCst);
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        for t in lock(&self.state.tasks).drain(..) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    while let Ok((client, _)) = listener.accept().await {
        let st = state.clone();
        let task = tokio::spawn(async move {
            if st.holed.load(Ordering::SeqCst) {
                // Accepted by the kernel, answered by nobody.
                let _keep = client;
                return std::future::pending::<()>().await;
            }
            let generation = st.generation.load(Ordering::SeqCst);
            let Ok(upstream) = TcpStream::connect(st.target).await else {
                return;
            };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::join!(pump(cr, uw, &st, generation), pump(ur, cw, &st, generation));
        });
        lock(&state.tasks).push(task);
    }
}

/// Copies one direction until the connection ends or a black hole freezes it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    st: &State,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = from.read(&mut buf).await;
        let frozen = st.generation.load(Ordering::SeqCst) != generation;
        let n = match read {
            // An end passes on only while forwarding: into a black hole not even a FIN.
            Ok(0) | Err(_) if !frozen => return,
            Ok(n) => n,
            Err(_) => 0,
        };
        if frozen {
            // Frozen: swallow this and everything after, keep both sockets open.
            let _keep = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
