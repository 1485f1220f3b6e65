//! The HTTP client the gateway uses towards Streamable HTTP upstreams (one,
//! shared): TCP_NODELAY, idle connections bounded per host and closed
//! before the upstream's own keep-alive timeout, timeouts. What
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

/// How long an idle connection to an upstream is kept for the next request
/// unless configured (`upstreamIdleConnectionSeconds`): under the 5 s after
/// which Node's, uvicorn's and hypercorn's HTTP servers close an idle
/// connection. A request sent on a connection just as its server closes it
/// meets a reset and fails, and is not sent again (it may have run); giving
/// the connection up first on this side leaves no such race.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(4);

/// Builds the shared reqwest client for upstream traffic; idle connections
/// close after `idle_timeout` (zero: a connection serves one request).
pub fn build_reqwest(idle_timeout: Duration) -> reqwest::Client {
    let idle_per_host = if idle_timeout.is_zero() {
        0
    } else {
        IDLE_CONNECTIONS_PER_HOST
    };
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(idle_timeout)
        .pool_max_idle_per_host(idle_per_host)
        .connect_timeout(Duration::from_secs(10))
        // The downstream's Host comes from its URL, never from a client.
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}
