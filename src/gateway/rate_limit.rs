//! Per-caller rate limits (`rateLimit` in the config file): a token bucket
//! per caller, checked on `/mcp` inside the bearer check and before any
//! other path (the relay and rmcp's handler alike), so every call counts once.
//!
//! - **Caller**: the logged-in user (issuer and subject) with `auth:` on;
//!   without it, the client's IP address (behind a proxy every client shares
//!   the proxy's address, and so one bucket).
//! - **Counted**: `tools/call`, `resources/read` and `prompts/get`, the
//!   requests that make an upstream work (a 2026-07-28 retry with
//!   `inputResponses` too); lists (served from the catalog), `initialize`,
//!   `ping`, completions and notifications are not.
//! - **Refused**: with HTTP 200 and a `Retry-After` header, a tool error for
//!   `tools/call` (an agent reads it and waits) and a JSON-RPC error -32000
//!   with `data.retryAfterSeconds` for the others, each saying when to retry.
//!   Not a 429: MCP clients turn an HTTP error into a transport exception
//!   and drop the body that says what to do. Counted in
//!   `flotilla_calls_rate_limited_total`; a refused tool call gets an audit
//!   line with outcome `rate_limited`.
//!
//! The buckets are governor's keyed GCRA limiter (one word of state per
//! caller); a task owned by the limiter drops every minute the callers whose
//! bucket is full again (indistinguishable from a new one), so memory is
//! bounded by the callers active within one refill.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde_json::{Value, json};

use super::call_record::{CallRecord, Observer};
use super::edge::MAX_BODY;
use super::metrics::Outcome;
use super::revision::ClientRevision;
use super::settings::RateLimitSettings;
use super::trace::RequestTrace;
use crate::api::{UserIdentity, UserKey};

/// The methods a caller's bucket counts.
pub const RATED_METHODS: &[&str] = &["tools/call", "resources/read", "prompts/get"];
/// How often callers with a full bucket are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Who a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerKey {
    User(UserKey),
    Address(IpAddr),
    /// No user and no address known (not reached through the listener).
    Unknown,
}

impl std::fmt::Display for CallerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerKey::User(user) => write!(f, "user {:?}", user.subject),
            CallerKey::Address(ip) => write!(f, "address {ip}"),
            CallerKey::Unknown => f.write_str("this client"),
        }
    }
}

/// Every caller's bucket, and the task that forgets full ones.
pub struct CallerLimits {
    buckets: Arc<DefaultKeyedRateLimiter<CallerKey>>,
    clock: DefaultClock,
    settings: RateLimitSettings,
    /// Where a refused tool call is counted and audited.
    observer: Observer,
    /// The pruning task; aborted when the limits are dropped.
    pruner: tokio::task::AbortHandle,
}

impl Drop for CallerLimits {
    fn drop(&mut self) {
        self.pruner.abort();
    }
}

/// The quota of `settings`: `callsPerMinute` refilled evenly, at most `burst` at once.
fn quota(settings: &RateLimitSettings) -> Quota {
    let per_minute = NonZeroU32::new(settings.calls_per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

impl CallerLimits {
    pub fn new(settings: RateLimitSettings, observer: Observer) -> Arc<Self> {
        let buckets = Arc::new(DefaultKeyedRateLimiter::hashmap(quota(&settings)));
        let weak = Arc::downgrade(&buckets);
        let pruner = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PRUNE_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(buckets) = weak.upgrade() else { break };
                buckets.retain_recent();
                buckets.shrink_to_fit();
            }
        })
        .abort_handle();
        Arc::new(Self {
            buckets,
            clock: DefaultClock::default(),
            settings,
            observer,
            pruner,
        })
    }

    /// Takes one call from `key`'s bucket; when it is empty, how long until
    /// the next call may go.
    pub fn check(&self, key: &CallerKey) -> Result<(), Duration> {
        self.buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Callers with a bucket now.
    #[cfg(test)]
    pub fn callers(&self) -> usize {
        self.buckets.len()
    }
}

/// The caller of a request: its user, else the address it came from.
fn caller_key(request: &Request) -> CallerKey {
    if let Some(user) = request.extensions().get::<Arc<UserIdentity>>() {
        return CallerKey::User(user.key.clone());
    }
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => CallerKey::Address(address.ip()),
        None => CallerKey::Unknown,
    }
}

/// What the limit needs of a message: its method and id.
#[derive(serde::Deserialize)]
struct Peek<'a> {
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    id: Option<Value>,
}

/// A tool call's name and arguments, for the audit line of a refused call.
#[derive(serde::Deserialize)]
struct CallParams {
    params: Option<ToolParams>,
}

#[derive(serde::Deserialize)]
struct ToolParams {
    name: Option<String>,
    arguments: Option<rmcp::model::JsonObject>,
}

/// Middleware on `/mcp` (inside the bearer check): a counted request over
/// its caller's limit is answered here and goes no further.
pub async fn rate_limit(
    State(limits): State<Arc<CallerLimits>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // The edge has read the body already; this takes the bytes it put back.
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let request = Request::from_parts(parts, Body::from(bytes.clone()));
    let Ok(peek) = serde_json::from_slice::<Peek>(&bytes) else {
        return next.run(request).await;
    };
    let (Some(method), Some(id)) = (peek.method.as_deref(), peek.id) else {
        return next.run(request).await;
    };
    if !RATED_METHODS.contains(&method) {
        return next.run(request).await;
    }
    let key = caller_key(&request);
    let Err(wait) = limits.check(&key) else {
        return next.run(request).await;
    };
    limits.observer.metrics.rate_limited(method);
    tracing::info!(caller = %key, method, retry_in_ms = wait.as_millis() as u64, "call refused at the caller's rate limit");
    if method == "tools/call" {
        audit_refused(&limits, &request, &bytes);
    }
    let revision = match request
        .headers()
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
    {
        Some("2026-07-28") => ClientRevision::Stateless,
        _ => ClientRevision::Session,
    };
    refusal(method, &id, &key, &limits.settings, wait, revision)
}

/// The audit line (and nothing else: no upstream was called) of a refused tool call.
fn audit_refused(limits: &CallerLimits, request: &Request, body: &[u8]) {
    let params = serde_json::from_slice::<CallParams>(body)
        .ok()
        .and_then(|call| call.params);
    let (name, arguments) = match params {
        Some(ToolParams { name, arguments }) => (name.unwrap_or_default(), arguments),
        None => (String::new(), None),
    };
    let user = request.extensions().get::<Arc<UserIdentity>>();
    let trace = request.extensions().get::<RequestTrace>();
    CallRecord::start(
        &limits.observer,
        &name,
        user.map(|u| &**u),
        arguments.as_ref(),
    )
    .in_trace(trace.map(|t| t.trace_id.clone()))
    .finish(Outcome::RateLimited);
}

/// The answer to a refused call: a tool error for `tools/call`, else a
/// JSON-RPC error; both say when to retry.
fn refusal(
    method: &str,
    id: &Value,
    key: &CallerKey,
    settings: &RateLimitSettings,
    wait: Duration,
    revision: ClientRevision,
) -> Response {
    let seconds = wait.as_secs_f64();
    let text = format!(
        "rate limit: {key} may make {} calls per minute through this gateway (bursts of {}; \
         rateLimit in the gateway's config), and this {method} went over it. It was not sent. \
         Retry in {seconds:.1} s, and pace your calls.",
        settings.calls_per_minute, settings.burst
    );
    let body = if method == "tools/call" {
        let mut result = json!({"content": [{"type": "text", "text": text}], "isError": true});
        if revision == ClientRevision::Stateless {
            result["resultType"] = "complete".into();
        }
        json!({"jsonrpc": "2.0", "id": id, "result": result})
    } else {
        json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": -32000,
            "message": text,
            "data": {"retryAfterSeconds": (seconds * 10.0).ceil() / 10.0},
        }})
    };
    let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(calls_per_minute: u32, burst: u32) -> RateLimitSettings {
        RateLimitSettings {
            calls_per_minute,
            burst,
        }
    }

    #[tokio::test]
    async fn a_caller_gets_its_burst_then_waits_and_callers_do_not_share() {
        let observer = Observer {
            metrics: Arc::default(),
            audit: Arc::new(crate::gateway::audit::AuditLog::off()),
        };
        let limits = CallerLimits::new(limits(60, 3), observer);
        let alice = CallerKey::User(UserKey {
            issuer: "https://idp".into(),
            subject: "alice".into(),
        });
        let bob = CallerKey::Address("127.0.0.2".parse().unwrap());
        for n in 0..3 {
            assert!(limits.check(&alice).is_ok(), "call {n} of the burst");
        }
        let wait = limits.check(&alice).expect_err("the burst is spent");
        // 60 a minute: the next token comes within a second.
        assert!(
            wait <= Duration::from_secs(1) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(limits.check(&bob).is_ok(), "bob has a bucket of his own");
        assert_eq!(limits.callers(), 2);
    }

    #[test]
    fn a_refusal_says_who_when_and_why_in_the_form_the_method_needs() {
        let key = CallerKey::Address("10.0.0.7".parse().unwrap());
        let settings = limits(120, 10);
        let wait = Duration::from_millis(1_500);
        let read = |response: Response| {
            let retry = response.headers()[header::RETRY_AFTER].clone();
            let body =
                futures::executor::block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
                    .unwrap();
            (retry, serde_json::from_slice::<Value>(&body).unwrap())
        };
        let (retry, call) = read(refusal(
            "tools/call",
            &json!(4),
            &key,
            &settings,
            wait,
            ClientRevision::Stateless,
        ));
        assert_eq!(retry, "2");
        assert_eq!(call["id"], 4);
        assert_eq!(call["result"]["isError"], true);
        assert_eq!(call["result"]["resultType"], "complete");
        let text = call["result"]["content"][0]["text"].as_str().unwrap();
        assert!(
            text.contains("address 10.0.0.7 may make 120 calls per minute"),
            "{text}"
        );
        assert!(text.contains("Retry in 1.5 s"), "{text}");
        let (_, read_error) = read(refusal(
            "resources/read",
            &json!("r"),
            &key,
            &settings,
            wait,
            ClientRevision::Session,
        ));
        assert_eq!(read_error["error"]["code"], -32000);
        assert_eq!(read_error["error"]["data"]["retryAfterSeconds"], 1.5);
        assert!(read_error.get("result").is_none());
    }
}
