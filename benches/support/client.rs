//! The load client: raw JSON-RPC POSTs in the stateless 2026-07-28 shape
//! (protocol headers + per-request `_meta`) or in a 2025-11-25 session,
//! pre-serialized, over one keep-alive reqwest client. The same client
//! drives every target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub const ECHO_TEXT: &str = "hello flotilla";

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

fn meta() -> serde_json::Value {
    serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "flotilla-bench", "version": "0.1.0"},
        "io.modelcontextprotocol/clientCapabilities": {}
    })
}

/// One prepared request: URL, headers and body.
pub struct Request {
    pub url: String,
    headers: HeaderMap,
    /// Leaked once per prepared request (a handful per run) so every send
    /// is a zero-copy `Body::from(&'static [u8])`.
    body: &'static [u8],
}

impl Request {
    fn new(url: &str, method: &str, name: Option<&str>, params: serde_json::Value) -> Self {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut headers = HeaderMap::new();
        let mut put = |k: &'static str, v: &str| {
            headers.insert(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).expect("header"),
            );
        };
        put("content-type", "application/json");
        put("accept", "application/json, text/event-stream");
        put("mcp-protocol-version", "2026-07-28");
        put("mcp-method", method);
        if let Some(name) = name {
            put("mcp-name", name);
        }
        Self {
            url: url.to_string(),
            headers,
            body: Box::leak(serde_json::to_vec(&body).expect("json").into_boxed_slice()),
        }
    }

    /// `tools/call` of `tool` with `{"text": ECHO_TEXT}`.
    pub fn call(url: &str, tool: &str) -> Self {
        Self::new(
            url,
            "tools/call",
            Some(tool),
            serde_json::json!({"name": tool, "arguments": {"text": ECHO_TEXT}, "_meta": meta()}),
        )
    }

    pub fn list_tools(url: &str) -> Self {
        Self::new(
            url,
            "tools/list",
            None,
            serde_json::json!({"_meta": meta()}),
        )
    }

    /// Sends the request; returns the whole response body.
    pub async fn send(&self, client: &reqwest::Client) -> Result<Vec<u8>, String> {
        let response = client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(reqwest::Body::from(self.body))
            .send()
            .await
            .map_err(|e| format!("POST {}: {e}", self.url))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading {}: {e}", self.url))?;
        if !status.is_success() {
            return Err(format!(
                "POST {} -> {status}: {}",
                self.url,
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body.to_vec())
    }

    /// A `tools/call` of `echo` that must come back with the echoed text.
    pub async fn call_checked(&self, client: &reqwest::Client) -> Result<(), String> {
        let body = self.send(client).await?;
        if contains(&body, ECHO_TEXT.as_bytes()) && !contains(&body, b"\"isError\":true") {
            Ok(())
        } else {
            Err(format!(
                "unexpected tools/call reply from {}: {}",
                self.url,
                String::from_utf8_lossy(&body)
            ))
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The JSON-RPC message of a reply that is either `application/json` or a
/// `text/event-stream` (the first `data:` event carrying an `id`).
pub fn reply_json(body: &[u8]) -> Result<serde_json::Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(trimmed).map_err(|e| e.to_string());
    }
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&data)
                && v.get("id").is_some()
            {
                return Ok(v);
            }
            data.clear();
        }
    }
    if !data.is_empty() {
        return serde_json::from_str(&data).map_err(|e| e.to_string());
    }
    Err(format!(
        "no JSON-RPC reply in: {}",
        &text[..text.len().min(300)]
    ))
}

/// GET `url`; returns the body length.
pub async fn get_len(client: &reqwest::Client, url: &str) -> Result<usize, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url} -> {}", response.status()));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading {url}: {e}"))?;
    Ok(body.len())
}

/// Latency samples in nanoseconds.
#[derive(Default, Clone)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    pub fn extend(&mut self, other: &Samples) {
        self.0.extend_from_slice(&other.0);
    }

    /// Percentile `p` (0..=100) in microseconds (nearest rank).
    pub fn pct_us(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1000.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// `n` requests one after another; returns their latencies.
pub async fn sequential(
    client: &reqwest::Client,
    request: &Request,
    n: usize,
) -> Result<Samples, String> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        request.call_checked(client).await?;
        samples.push(start.elapsed().as_nanos() as u64);
    }
    Ok(Samples(samples))
}

/// Result of a closed-loop load phase.
pub struct Load {
    pub calls: u64,
    pub elapsed: Duration,
    pub samples: Samples,
}

/// `concurrency` workers, each sending its next request as soon as the
/// previous one is answered, until `duration` is over (closed loop).
pub async fn closed_loop(
    client: &reqwest::Client,
    request: Arc<Request>,
    concurrency: usize,
    duration: Duration,
) -> Result<Load, String> {
    closed_loop_each(client, vec![request; concurrency], duration).await
}

/// [`closed_loop`] with one worker per request, each sending its own (say,
/// in its own client session).
pub async fn closed_loop_each(
    client: &reqwest::Client,
    requests: Vec<Arc<Request>>,
    duration: Duration,
) -> Result<Load, String> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for request in requests {
        let client = client.clone();
        workers.spawn(async move {
            let mut samples = Vec::with_capacity(16_384);
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                request.call_checked(&client).await?;
                samples.push(t0.elapsed().as_nanos() as u64);
            }
            Ok::<_, String>(samples)
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = workers.join_next().await {
        let samples = joined.map_err(|e| e.to_string())??;
        all.0.extend(samples);
    }
    Ok(Load {
        calls: all.len() as u64,
        elapsed: start.elapsed(),
        samples: all,
    })
}

impl Request {
    /// The same request carrying `Authorization: Bearer <token>` (the SSO bench).
    #[allow(dead_code)] // each bench binary compiles this module; only `sso` uses it
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.headers.insert(
            HeaderName::from_static("authorization"),
            HeaderValue::from_str(&format!("Bearer {token}")).expect("token is header-safe"),
        );
        self
    }
}

// ------------------------------------------------- 2025-revision sessions

const INITIALIZE: &[u8] = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"flotilla-bench","version":"0.1.0"}}}"#;
const INITIALIZED: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn session_headers(session: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        HeaderName::from_static("accept"),
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert(
        HeaderName::from_static("mcp-protocol-version"),
        HeaderValue::from_static("2025-11-25"),
    );
    if let Some(session) = session {
        headers.insert(
            HeaderName::from_static("mcp-session-id"),
            HeaderValue::from_str(session).expect("session ids are header-safe"),
        );
    }
    headers
}

impl Request {
    /// `body` (one JSON-RPC message) sent in the 2025-11-25 session `session`:
    /// `Mcp-Session-Id` and `MCP-Protocol-Version` headers, no `_meta`.
    #[allow(dead_code)] // `replicas` and `gateway` use it
    pub fn in_session(url: &str, session: &str, body: &'static [u8]) -> Self {
        Self {
            url: url.to_string(),
            headers: session_headers(Some(session)),
            body,
        }
    }

    /// `tools/call` of `tool` with `{"text": ECHO_TEXT}` in the session `session`.
    #[allow(dead_code)] // only `gateway` uses it
    pub fn call_in_session(url: &str, tool: &str, session: &str) -> Self {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": ECHO_TEXT}}});
        let body = Box::leak(serde_json::to_vec(&body).expect("json").into_boxed_slice());
        Self::in_session(url, session, body)
    }
}

/// Opens a 2025-11-25 client session at `url` as an SDK does: `initialize`,
/// then `notifications/initialized` with the `Mcp-Session-Id` it returned
/// (which must be accepted with 202). Returns the session id.
#[allow(dead_code)] // `replicas` and `gateway` use it
pub async fn open_session(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client
        .post(url)
        .headers(session_headers(None))
        .body(reqwest::Body::from(INITIALIZE))
        .send()
        .await
        .map_err(|e| format!("initialize at {url}: {e}"))?;
    let status = response.status();
    let session = response
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading initialize at {url}: {e}"))?;
    let Some(session) = session.filter(|_| status.is_success()) else {
        return Err(format!(
            "initialize at {url} -> {status}, no Mcp-Session-Id: {}",
            String::from_utf8_lossy(&body)
        ));
    };
    if !contains(&body, b"\"protocolVersion\":\"2025-11-25\"") {
        return Err(format!(
            "initialize at {url} did not agree on 2025-11-25: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let response = client
        .post(url)
        .headers(session_headers(Some(&session)))
        .body(reqwest::Body::from(INITIALIZED))
        .send()
        .await
        .map_err(|e| format!("notifications/initialized at {url}: {e}"))?;
    let status = response.status();
    let _ = response.bytes().await;
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(format!(
            "notifications/initialized at {url} -> {status}, expected 202"
        ));
    }
    Ok(session)
}
