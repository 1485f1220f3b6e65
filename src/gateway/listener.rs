//! Accepting connections, with limits: nothing a client opens stays open
//! for free.
//!
//! | resource | limit (config `limits`) | when reached |
//! |---|---|---|
//! | connections in all | `maxConnections` (10000) | the connection is answered 503 and closed |
//! | connections from one IP address | `maxConnectionsPerIp` (1000; 0 = none) | the same |
//! | request headers (HTTP/1.1), and the idle time between requests on a kept-alive connection | `headerReadTimeoutSeconds` (30) | the connection is closed |
//! | a request body | `bodyReadTimeoutSeconds` (30), from the request's start | reading it fails; `/mcp` answers 408 |
//! | HTTP/2 peers that stop answering | pings every 30 s, 20 s to answer | the connection is closed |
//!
//! Client sessions are capped in [`super::edge`]. axum's own `serve` sets no
//! timer, so hyper's header-read timeout never applied; this loop is
//! hyper-util's connection builder with a timer, plus the counts above.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::metrics::{Metrics, RefusalReason};

/// Connection and request limits (`limits` in the config file).
#[derive(Clone, Debug, PartialEq)]
pub struct HttpLimits {
    /// Client sessions (2025 revisions) held in memory at once.
    pub max_sessions: usize,
    /// A held client session unused this long leaves memory (its id stays valid).
    pub session_idle_timeout: Duration,
    /// A client session id is accepted this long after `initialize`.
    pub session_max_age: Duration,
    pub max_connections: usize,
    /// 0 turns the per-address limit off (behind a proxy that is every client).
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            session_idle_timeout: Duration::from_secs(300),
            session_max_age: Duration::from_secs(24 * 3600),
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// How long shutdown waits for open requests before it closes their connections.
const DRAIN: Duration = Duration::from_secs(10);
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// At most one warning per reason in this window, so a flood cannot flood the log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then drains for up to [`DRAIN`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let all = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = PerIp::new(limits.max_connections_per_ip);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let warnings = Warnings::default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    warnings.warn(0, || tracing::warn!(%error, "accepting a connection failed"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = all.clone().try_acquire_owned() else {
            metrics.refused(RefusalReason::MaxConnections);
            warnings.warn(1, || {
                tracing::warn!(
                    limit = limits.max_connections,
                    "connection limit reached; new connections are refused (raise limits.maxConnections)"
                )
            });
            connections.spawn(refuse(stream, "the gateway has too many open connections"));
            continue;
        };
        let Some(slot) = per_ip.claim(peer.ip()) else {
            metrics.refused(RefusalReason::PerAddress);
            warnings.warn(2, || {
                tracing::warn!(
                    peer = %peer.ip(),
                    limit = limits.max_connections_per_ip,
                    "per-address connection limit reached (raise limits.maxConnectionsPerIp, or 0 behind a proxy)"
                )
            });
            connections.spawn(refuse(stream, "too many connections from your address"));
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let body_timeout = limits.body_read_timeout;
        let service = router.clone().map_request(
            move |request: axum::http::Request<hyper::body::Incoming>| {
                let mut request = request.map(|body| Body::new(Deadline::new(body, body_timeout)));
                // Who is calling, without auth (the per-caller rate limit).
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        );
        let first_bytes = limits.header_read_timeout;
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            // hyper's header timer starts once it knows the protocol, which
            // it learns from the first bytes: a socket that sends none is
            // closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(first_bytes, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(error) = watcher.watch(connection).await {
                tracing::trace!(%peer, %error, "connection ended with an error");
            }
            drop((permit, slot));
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!(open = connections.len(), "connections still open after the drain period are closed");
        }
    }
    // Dropping the set aborts whatever is left.
}

/// Answers a connection over a limit with a 503 it can read, then closes it.
async fn refuse(mut stream: TcpStream, why: &'static str) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
        why.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Open connections per client address.
struct PerIp {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`PerIp`]; freed on drop.
struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Default::default(),
        }
    }

    fn claim(&self, ip: IpAddr) -> Option<Option<IpSlot>> {
        if self.limit == 0 {
            return Some(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Some(IpSlot {
            ip,
            counts: self.counts.clone(),
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Rate-limits warnings by reason (an index).
#[derive(Default)]
struct Warnings {
    last: [AtomicU64; 3],
    started: std::sync::OnceLock<Instant>,
}

impl Warnings {
    fn warn(&self, reason: usize, log: impl FnOnce()) {
        let now = self.started.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1;
        let last = self.last[reason].load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64 {
            self.last[reason].store(now, Ordering::Relaxed);
            log();
        }
    }
}

/// A request body that must arrive in full within a time from the request's
/// start. The timer is only set once the body makes a reader wait, so a body
/// that came with its headers costs nothing.
pub struct Deadline<B> {
    inner: B,
    due: tokio::time::Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            due: tokio::time::Instant::now() + timeout,
            timeout,
            sleep: None,
        }
    }
}

/// The error a late body ends with; `/mcp` turns it into 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
pub struct BodyTimedOut(pub Duration);

/// Whether reading a body failed because of its [`Deadline`].
pub fn body_timed_out(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        source = e.source();
    }
    false
}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let due = this.due;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_freed() {
        let per_ip = PerIp::new(2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let first = per_ip.claim(ip).unwrap();
        let second = per_ip.claim(ip).unwrap();
        assert!(
            per_ip.claim(ip).is_none(),
            "a third from one address is refused"
        );
        assert!(
            per_ip.claim(other).is_some(),
            "other addresses are not affected"
        );
        drop(first);
        assert!(per_ip.claim(ip).is_some(), "a freed slot is reusable");
        drop(second);
        assert!(PerIp::new(0).claim(ip).unwrap().is_none(), "0 = no limit");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_fails_at_its_deadline() {
        use futures::StreamExt as _;
        // Half a message, then nothing.
        let first = futures::stream::iter([Ok::<_, std::io::Error>(&b"{\"jsonrpc\""[..])]);
        let stalled = Body::from_stream(first.chain(futures::stream::pending()));
        let late = Deadline::new(stalled, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let error = axum::body::to_bytes(Body::new(late), 1024)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(body_timed_out(&error), "{error}");
        // A body that is all there costs no timer and passes.
        let whole = Deadline::new(Body::from("{}"), Duration::from_secs(30));
        let bytes = axum::body::to_bytes(Body::new(whole), 1024).await.unwrap();
        assert_eq!(&bytes[..], b"{}");
    }
}
