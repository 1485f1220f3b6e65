//! The HTTP client the gateway uses towards Streamable HTTP upstreams (one,
//! shared): TCP_NODELAY, bounded idle connections per host, timeouts. What
//! is sent on it is the wire's (`wire::HttpLine`): rmcp's session through
//! `http_transport`, relayed requests through the relay.

use std::sync::Arc;
use std::time::Duration;

/// The session id of one upstream session (rmcp's transport and the
/// relay's wire send on the same session).
pub type SessionSlot = Arc<std::sync::Mutex<Option<Arc<str>>>>;

/// Idle keep-alive connections kept per upstream host (host and port).
/// Calls in flight use as many connections as they need; once answered, at
/// most this many stay open for the next calls, the rest close. Without a
/// bound, a burst (every upstream connecting at start, a spike of calls)
/// left a connection with its buffers open per request of the burst for
/// the idle timeout: with 500 servers behind one host, about 1,000
/// connections and 60 KB per server.
pub const IDLE_CONNECTIONS_PER_HOST: usize = 32;

/// Builds the shared reqwest client for upstream traffic.
pub fn build_reqwest() -> reqwest::Client {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .connect_timeout(Duration::from_secs(10))
        // The downstream's Host comes from its URL, never from a client.
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
