//! The listener: what a connection may hold of the server, whoever holds it.
//!
//! A caller with a valid key may still be hostile, and a slow client costs a
//! connection for as long as it likes unless the server says otherwise. So:
//! connections are capped in total and per client address (past a cap, a new one
//! gets a 503 and is closed); a request head must arrive within
//! `header_read_timeout` (idle keep-alive connections are closed on the same
//! clock); a request body must arrive in full within `body_read_timeout` of its
//! head ([`super::limits::Deadline`]); and on shutdown, connections are asked to
//! finish and then, when the drain's time is up, dropped.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::limits::Deadline;
use super::workers::Workers;
use crate::telemetry::Metrics;

/// What one connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
}

/// The answer to a connection past a cap: written straight to the fresh socket
/// (its send buffer is empty, so the write does not wait), then the socket closes.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 133\r\n\r\n{\"error\":{\"message\":\"too many open connections; try again shortly\",\"type\":\"server_error\",\"param\":null,\"code\":\"too_many_connections\"}}";

/// Serves `app` on `listener`, each connection on one of `workers`, until
/// `shutdown` resolves; then stops accepting, lets open requests and streams finish
/// until `drain_until`, and drops what is still open then.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    workers: &Workers,
    shutdown: impl Future<Output = tokio::time::Instant> + Send,
) -> std::io::Result<()> {
    let slots = Slots::new(limits, metrics);
    let drain = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let drain_until = loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: wait a moment rather than spin, and go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            until = &mut shutdown => break until,
        };
        // Finished connections are reaped here, so the set holds only open ones.
        while connections.try_join_next().is_some() {}
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                slots.metrics.connection_refused(cap);
                refuse(&stream);
                continue;
            }
        };
        // The socket moves to the worker's own reactor.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, %peer, "cannot hand the connection over");
                continue;
            }
        };
        connections.spawn_on(
            connection(stream, peer, app.clone(), limits, drain.clone(), slot),
            workers.next(),
        );
    };
    drop(listener);
    drain.cancel();
    let drained = tokio::time::timeout_at(drain_until, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open at the end of the shutdown grace: closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Answers a connection past a cap without waiting on it. What the client has
/// sent already is read and dropped first: closing a socket with unread data
/// resets it, and the reset can overtake the answer.
fn refuse(stream: &TcpStream) {
    let mut unread = [0u8; 4096];
    let _ = stream.try_read(&mut unread);
    let _ = stream.try_write(REFUSED);
}

async fn connection(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    drain: CancellationToken,
    slot: Slot,
) {
    let slot = Arc::new(slot);
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, %peer, "cannot register the connection");
            return;
        }
    };
    // Streamed chunks are small writes: without TCP_NODELAY, Nagle's algorithm
    // holds each one back until the previous is acknowledged.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request =
            request.map(|body| Body::new(Deadline::new(body, limits.body_read_timeout)));
        request.extensions_mut().insert(ConnectInfo(peer));
        // A connection that becomes a WebSocket outlives this function: its
        // session holds its place instead.
        if request.headers().contains_key(hyper::header::UPGRADE) {
            request.extensions_mut().insert(ConnectionHold {
                _slot: Arc::clone(&slot),
            });
        }
        app.clone().oneshot(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(
            TokioIo::new(super::quickack::QuickAck::from(stream)),
            service,
        )
        .with_upgrades();
    tokio::pin!(connection);
    let finished = tokio::select! {
        result = connection.as_mut() => Some(result),
        () = drain.cancelled() => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // The request under way finishes (and is answered); no other starts.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "connection ended with an error");
    }
}

/// Open connections, in total and per client address.
struct Slots {
    total: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_peer: usize,
    metrics: Arc<Metrics>,
}

/// An upgraded connection's place, held by its session (see [`connection`]).
#[derive(Clone)]
pub struct ConnectionHold {
    _slot: Arc<Slot>,
}

/// One open connection's place; given back when dropped.
struct Slot {
    _total: OwnedSemaphorePermit,
    peer: IpAddr,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    metrics: Arc<Metrics>,
}

impl Slots {
    fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_peer: Arc::new(Mutex::new(HashMap::new())),
            max_per_peer: limits.max_connections_per_peer,
            metrics,
        }
    }

    /// A place for one more connection from `peer`, or the cap that refuses it.
    fn take(&self, peer: IpAddr) -> Result<Slot, &'static str> {
        let total = Arc::clone(&self.total)
            .try_acquire_owned()
            .map_err(|_| "total")?;
        let mut open = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_insert(0);
        if *count >= self.max_per_peer {
            return Err("per_peer");
        }
        *count += 1;
        self.metrics.connection(1);
        Ok(Slot {
            _total: total,
            peer,
            per_peer: Arc::clone(&self.per_peer),
            metrics: Arc::clone(&self.metrics),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.connection(-1);
        let mut open = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_in_total_and_per_address_and_given_back() {
        let limits = ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            body_read_timeout: Duration::from_secs(1),
            max_connections: 3,
            max_connections_per_peer: 2,
        };
        let metrics = Arc::new(Metrics::new());
        let slots = Slots::new(limits, Arc::clone(&metrics));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some("per_peer"));
        let _third = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some("total"));
        drop(first);
        let _again = slots.take(a).expect("given back");
        assert_eq!(slots.per_peer.lock().unwrap().get(&a), Some(&2));
        assert!(metrics.render().contains("ragway_open_connections 3"));
    }

    #[test]
    fn the_refusal_is_well_formed_http() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
