//! Transport and authentication: the TLS listener, one task per connection, CONNECT and the
//! token checks ([`connect`]), the MQTT packet loop ([`session`]) over [`conn`]'s framing.
//! What a packet means for DPS or the hub is theirs to say.
//!
//! Bounded against clients that never finish: a connection has `connect_timeout` from accept
//! to a CONNECT that passed (TLS handshake included), and at most `pending_connections` may be
//! at that stage at once — a new one pushes out the oldest, so a flood of half-open
//! connections costs a fixed amount of memory while real devices, which finish in
//! milliseconds, still get in.

pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod session;

use super::{clock, journal, Shared};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Accepts connections until `stop` turns true, then ends every session.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let conn_id = shared.next_id();
                    // The deadline runs from accept, not from when the task first runs.
                    let deadline = clock::after(shared.clock.as_ref(), shared.limits.connect_timeout);
                    let (slot, evicted) = Pending::admit(&shared.pending, conn_id);
                    let pending = session::Pending { conn_id, deadline, slot, evicted };
                    sessions.spawn(session::run(shared.clone(), acceptor.clone(), tcp, peer, pending));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait for sessions to end.
                    shared.journal.note("warning", "listener", &format!("accept failed: {e}"), journal::none());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    sessions.shutdown().await;
}

/// Connections that have not yet passed CONNECT, oldest first, each with the way to end it.
pub(crate) struct Pending {
    cap: usize,
    queue: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    evicted: AtomicU64,
}

impl Pending {
    pub fn new(cap: usize) -> Self {
        Pending {
            cap: cap.max(1),
            queue: Mutex::new(VecDeque::new()),
            evicted: AtomicU64::new(0),
        }
    }

    /// Admits connection `id`, pushing out the oldest pending one when full. The receiver
    /// fires when this one is pushed out in turn.
    pub fn admit(this: &Arc<Pending>, id: u64) -> (PendingSlot, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut q = this.queue.lock().unwrap();
        while q.len() >= this.cap {
            if let Some((_, oldest)) = q.pop_front() {
                let _ = oldest.send(());
                this.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        q.push_back((id, tx));
        drop(q);
        (
            PendingSlot {
                pending: this.clone(),
                id,
            },
            rx,
        )
    }

    /// Connections waiting for their CONNECT to pass.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Connections pushed out so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A place among the pending connections; dropping it leaves the queue.
pub(crate) struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut q = self.pending.queue.lock().unwrap();
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_pending_connection_makes_room() {
        let p = Arc::new(Pending::new(2));
        let (a, mut a_rx) = Pending::admit(&p, 1);
        let (_b, mut b_rx) = Pending::admit(&p, 2);
        let (_c, _c_rx) = Pending::admit(&p, 3);
        assert!(a_rx.try_recv().is_ok(), "the oldest was pushed out");
        assert!(b_rx.try_recv().is_err());
        assert_eq!((p.len(), p.evicted()), (2, 1));
        drop(a);
        assert_eq!(p.len(), 2, "a pushed-out slot is already gone");
        drop(_b);
        assert_eq!(p.len(), 1);
    }
}
