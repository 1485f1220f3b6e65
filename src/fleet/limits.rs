//! Per-server call limits (`spec.limits`): the concurrency cap with its
//! bounded queue, the call timeout, and the cut of results over
//! `maxOutputBytes`. One [`CallGate`] per server name, shared by the
//! server's shared session and every user's own session to it, so both of
//! the gateway's call paths (the relay and rmcp's) take their slots from the
//! same place. Limits are per gateway replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::MCPServerSpec;

/// Calls that may wait for a slot when `maxQueued` is not set.
pub const DEFAULT_MAX_QUEUED: usize = 100;
/// How long a call waits for a slot when `queueTimeout` is not set.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// The methods a concurrency slot is taken for: the calls that make a
/// server work. Lists, pings, subscriptions, completions and the `tasks/*`
/// requests about work already admitted take none.
pub const LIMITED_METHODS: &[&str] = &["tools/call", "resources/read", "prompts/get"];

/// `spec.limits`, resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallLimits {
    pub max_concurrency: Option<usize>,
    pub max_queued: usize,
    pub queue_timeout: Duration,
    pub max_output_bytes: Option<usize>,
    pub call_timeout: Option<Duration>,
}

impl CallLimits {
    pub fn of(spec: &MCPServerSpec) -> Self {
        let limits = spec.limits.clone().unwrap_or_default();
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            max_concurrency: limits.max_concurrency.map(|n| (n as usize).max(1)),
            max_queued: limits.max_queued.map_or(DEFAULT_MAX_QUEUED, |n| n as usize),
            queue_timeout: limits
                .queue_timeout
                .map_or(DEFAULT_QUEUE_TIMEOUT, |s| Duration::from_secs(s.max(1))),
            max_output_bytes: limits.max_output_bytes.map(size),
            call_timeout: limits.call_timeout.map(|s| Duration::from_secs(s.max(1))),
        }
    }
}

/// Why a call was not let through to its server: the server is at its
/// concurrency limit. The text says what runs, what waits and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overload {
    pub server: String,
    pub running: usize,
    pub max_concurrency: usize,
    pub waiting: usize,
    pub max_queued: usize,
    /// Set when the call waited in the queue and its time ran out; `None`
    /// when the queue was full and it never waited.
    pub waited: Option<Duration>,
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Overload {
            server,
            running,
            max_concurrency,
            waiting,
            max_queued,
            waited,
        } = self;
        write!(
            f,
            "server {server:?} is at its concurrency limit: {running} call(s) running \
             (spec.limits.maxConcurrency: {max_concurrency}) and {waiting} waiting \
             (spec.limits.maxQueued: {max_queued}); "
        )?;
        match waited {
            Some(waited) => write!(
                f,
                "this call waited {}s for a slot (spec.limits.queueTimeout) and was not sent. ",
                waited.as_secs()
            )?,
            None => write!(f, "the queue is full, so this call was not sent. ")?,
        }
        write!(
            f,
            "Retry in a few seconds, with fewer calls at once; if it persists, the \
             operator can raise the server's spec.limits.maxConcurrency or maxQueued."
        )
    }
}

/// What a gate holds for one setting of `maxConcurrency`.
struct Slots {
    limits: CallLimits,
    semaphore: Option<Arc<Semaphore>>,
    waiting: Arc<AtomicUsize>,
}

impl Slots {
    fn new(limits: CallLimits) -> Self {
        Self {
            limits,
            semaphore: limits.max_concurrency.map(|n| Arc::new(Semaphore::new(n))),
            waiting: Arc::default(),
        }
    }
}

/// One server's limits and concurrency slots.
pub struct CallGate {
    server: Arc<str>,
    slots: ArcSwap<Slots>,
}

/// A slot held by a call in flight; freed when dropped.
#[derive(Debug)]
pub struct CallPermit {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Counts a call waiting in the queue while it lives.
struct Waiter(Arc<AtomicUsize>);

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CallGate {
    pub fn new(server: &str, limits: CallLimits) -> Arc<Self> {
        Arc::new(Self {
            server: server.into(),
            slots: ArcSwap::from_pointee(Slots::new(limits)),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> CallLimits {
        self.slots.load().limits
    }

    /// Applies new limits. A new `maxConcurrency` applies to calls that
    /// start after the change (calls in flight keep their slots to the end).
    pub fn configure(&self, limits: CallLimits) {
        let current = self.slots.load();
        if current.limits == limits {
            return;
        }
        let next = if current.limits.max_concurrency == limits.max_concurrency {
            Slots {
                limits,
                semaphore: current.semaphore.clone(),
                waiting: current.waiting.clone(),
            }
        } else {
            Slots::new(limits)
        };
        self.slots.store(Arc::new(next));
    }

    /// Calls of this server running now (0 without a concurrency limit).
    pub fn running(&self) -> usize {
        let slots = self.slots.load();
        match (&slots.semaphore, slots.limits.max_concurrency) {
            (Some(semaphore), Some(max)) => max.saturating_sub(semaphore.available_permits()),
            _ => 0,
        }
    }

    /// Calls of this server waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.slots.load().waiting.load(Ordering::SeqCst)
    }

    /// A slot for one call: at once when one is free, else after waiting
    /// in the queue (at most `maxQueued` wait, each at most `queueTimeout`).
    pub async fn admit(&self) -> Result<CallPermit, Overload> {
        let slots = self.slots.load_full();
        let (Some(semaphore), Some(max)) = (&slots.semaphore, slots.limits.max_concurrency) else {
            return Ok(CallPermit { _permit: None });
        };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(CallPermit {
                _permit: Some(permit),
            });
        }
        let overload = |waited: Option<Duration>, waiting: usize| Overload {
            server: self.server.to_string(),
            running: max.saturating_sub(semaphore.available_permits()),
            max_concurrency: max,
            waiting,
            max_queued: slots.limits.max_queued,
            waited,
        };
        // Join the queue only while it has room (checked and counted in one step).
        let joined = slots
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < slots.limits.max_queued).then_some(n + 1)
            });
        if let Err(waiting) = joined {
            return Err(overload(None, waiting));
        }
        let waiter = Waiter(slots.waiting.clone());
        let timeout = slots.limits.queue_timeout;
        match tokio::time::timeout(timeout, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(CallPermit {
                _permit: Some(permit),
            }),
            // Timed out (a semaphore is never closed here).
            _ => {
                drop(waiter);
                Err(overload(
                    Some(timeout),
                    slots.waiting.load(Ordering::SeqCst),
                ))
            }
        }
    }
}

/// Every server's gate, by server name: a user's own session to a server
/// takes the same gate as the server's shared entry.
#[derive(Default)]
pub struct Gates {
    gates: Mutex<HashMap<String, Arc<CallGate>>>,
}

impl Gates {
    /// The gate of `name`, made with the limits of `spec` if there is none
    /// yet (an existing gate keeps the limits the fleet last applied).
    pub fn gate(&self, name: &str, spec: &MCPServerSpec) -> Arc<CallGate> {
        let Ok(mut gates) = self.gates.lock() else {
            return CallGate::new(name, CallLimits::of(spec));
        };
        gates
            .entry(name.to_string())
            .or_insert_with(|| CallGate::new(name, CallLimits::of(spec)))
            .clone()
    }

    /// Applies the limits of `spec` to `name`'s gate (made if missing).
    pub fn configure(&self, name: &str, spec: &MCPServerSpec) -> Arc<CallGate> {
        let gate = self.gate(name, spec);
        gate.configure(CallLimits::of(spec));
        gate
    }

    /// The server left the fleet.
    pub fn remove(&self, name: &str) {
        if let Ok(mut gates) = self.gates.lock() {
            gates.remove(name);
        }
    }
}

/// How many bytes one content block counts for: a text block its text, any
/// other block its JSON.
fn block_size(block: &Value) -> usize {
    match block.get("text").and_then(Value::as_str) {
        Some(text) if block.get("type").and_then(Value::as_str) == Some("text") => text.len(),
        _ => json_size(block),
    }
}

fn json_size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

/// The longest prefix of `text` of at most `max` bytes ending on a character boundary.
pub fn truncate_at_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Holds a `tools/call` result (the JSON-RPC `result` object) to `max`
/// bytes for `server`: the content blocks in order while they fit, the
/// text block that crosses the limit cut at a character boundary, the rest
/// dropped, and a note added that says what was cut and why.
/// `structuredContent` is held to about `max` on its own (it is the same
/// result in another form): its strings are cut, fairly (short ones stay
/// whole, see [`fair_cap`]), so it keeps its shape and types; when even
/// empty strings would not fit, it is removed and the result marked as an
/// error (a structure with parts missing would not match the tool's
/// outputSchema, and clients check that).
/// Returns whether anything was cut; a result within the limit is untouched.
pub fn limit_tool_result(result: &mut Value, max: usize, server: &str) -> bool {
    let Some(object) = result.as_object_mut() else {
        return false;
    };
    let sizes: Vec<usize> = object
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| blocks.iter().map(block_size).collect())
        .unwrap_or_default();
    let total: usize = sizes.iter().sum();
    let structured = object.get("structuredContent").map_or(0, json_size);
    if total <= max && structured <= max {
        return false;
    }
    let mut notes = Vec::new();
    if total > max
        && let Some(Value::Array(blocks)) = object.get_mut("content")
    {
        let mut left = max;
        let mut kept = Vec::with_capacity(blocks.len());
        let mut dropped = 0;
        for (mut block, size) in std::mem::take(blocks).into_iter().zip(sizes) {
            if size <= left {
                left -= size;
                kept.push(block);
                continue;
            }
            let is_text = block.get("type").and_then(Value::as_str) == Some("text");
            if is_text && left > 0 {
                let cut = block
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|text| truncate_at_char(text, left).to_string());
                if let Some(cut) = cut {
                    left -= cut.len();
                    block["text"] = Value::String(cut);
                    kept.push(block);
                    continue;
                }
            }
            dropped += 1;
        }
        let shown = max - left;
        let mut note = format!("{} of {total} bytes of content omitted", total - shown);
        if dropped > 0 {
            note.push_str(&format!(" ({dropped} block(s) dropped whole)"));
        }
        notes.push(note);
        *blocks = kept;
    }
    if structured > max {
        let cut_strings = object
            .get_mut("structuredContent")
            .is_some_and(|value| cut_strings(value, structured, max));
        if cut_strings {
            notes.push(format!(
                "the strings in structuredContent ({structured} bytes) were cut to fit"
            ));
        } else {
            object.remove("structuredContent");
            object.insert("isError".into(), Value::Bool(true));
            notes.push(format!(
                "structuredContent ({structured} bytes) removed, so the result is marked as an \
                 error (even with its strings emptied it would not fit)"
            ));
        }
    }
    let note = format!(
        "[truncated by the gateway: server {server:?} returns at most {max} bytes per result \
         (spec.limits.maxOutputBytes); {}. Narrow the request (a filter, fewer items, a smaller \
         range) to get the rest.]",
        notes.join("; ")
    );
    let note = serde_json::json!({"type": "text", "text": note});
    match object.get_mut("content") {
        Some(Value::Array(blocks)) => blocks.push(note),
        _ => {
            object.insert("content".into(), Value::Array(vec![note]));
        }
    }
    true
}

/// The largest per-item allowance that fits `sizes` into `budget`
/// (water-filling: small items keep everything, large ones share the
/// rest); `usize::MAX` when everything fits.
pub fn fair_cap(sizes: &[usize], budget: usize) -> usize {
    if sizes.iter().sum::<usize>() <= budget {
        return usize::MAX;
    }
    let mut sorted = sizes.to_vec();
    sorted.sort_unstable();
    let mut left = budget;
    for (i, size) in sorted.iter().enumerate() {
        let share = left / (sorted.len() - i);
        if *size > share {
            return share;
        }
        left -= size;
    }
    usize::MAX
}

/// The byte lengths of every string in `value`.
fn string_lengths(value: &Value, into: &mut Vec<usize>) {
    match value {
        Value::String(text) => into.push(text.len()),
        Value::Array(items) => items.iter().for_each(|v| string_lengths(v, into)),
        Value::Object(map) => map.values().for_each(|v| string_lengths(v, into)),
        _ => {}
    }
}

/// Cuts every string in `value` to at most `cap` bytes.
fn cap_strings(value: &mut Value, cap: usize) {
    match value {
        Value::String(text) => {
            let keep = truncate_at_char(text, cap).len();
            text.truncate(keep);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| cap_strings(v, cap)),
        Value::Object(map) => map.values_mut().for_each(|v| cap_strings(v, cap)),
        _ => {}
    }
}

/// Cuts the strings of `value` (whose JSON is `size` bytes) so that it
/// takes about `max` bytes; false (and `value` untouched) when the rest of
/// it alone is over `max`.
fn cut_strings(value: &mut Value, size: usize, max: usize) -> bool {
    let mut lengths = Vec::new();
    string_lengths(value, &mut lengths);
    let frame = size.saturating_sub(lengths.iter().sum());
    if frame >= max {
        return false;
    }
    cap_strings(value, fair_cap(&lengths, max - frame));
    true
}

/// [`limit_tool_result`] on a JSON-RPC response as text (the relay's): a
/// response that is within the limit, or not a result, comes back as it
/// was, byte for byte.
pub fn limit_response_text(response: String, max: usize, server: &str) -> String {
    // Text and structured content are never larger than the JSON that carries them.
    if response.len() <= max {
        return response;
    }
    let Ok(mut message) = serde_json::from_str::<Value>(&response) else {
        return response;
    };
    let cut = message
        .get_mut("result")
        .is_some_and(|result| limit_tool_result(result, max, server));
    if cut { message.to_string() } else { response }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(max: usize, queued: usize, wait_ms: u64) -> CallLimits {
        CallLimits {
            max_concurrency: Some(max),
            max_queued: queued,
            queue_timeout: Duration::from_millis(wait_ms),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_gate_lets_max_through_queues_the_next_and_refuses_beyond_the_queue() {
        let gate = CallGate::new("py", limits(2, 1, 5_000));
        let a = gate.admit().await.expect("first slot");
        let _b = gate.admit().await.expect("second slot");
        assert_eq!(gate.running(), 2);
        // The third waits; the fourth finds the queue full at once.
        let queued = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit().await })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = gate.admit().await.expect_err("the queue is full");
        assert_eq!(
            (refused.running, refused.waiting, refused.waited),
            (2, 1, None)
        );
        let text = refused.to_string();
        assert!(
            text.contains("\"py\" is at its concurrency limit: 2 call(s) running"),
            "{text}"
        );
        assert!(text.contains("maxQueued: 1"), "{text}");
        // A slot frees: the queued call gets it.
        drop(a);
        let third = queued
            .await
            .expect("joined")
            .expect("admitted after waiting");
        assert_eq!(gate.running(), 2);
        drop(third);
        assert_eq!(gate.running(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_gives_up_after_the_queue_timeout() {
        let gate = CallGate::new("py", limits(1, 10, 2_000));
        let _held = gate.admit().await.expect("the slot");
        let refused = gate.admit().await.expect_err("times out in the queue");
        assert_eq!(refused.waited, Some(Duration::from_secs(2)));
        assert_eq!(refused.waiting, 0, "it left the queue");
        assert!(refused.to_string().contains("waited 2s"), "{refused}");
    }

    #[tokio::test]
    async fn no_queue_refuses_at_once_and_no_limit_never_waits() {
        let gate = CallGate::new("py", limits(1, 0, 5_000));
        let _held = gate.admit().await.expect("the slot");
        assert!(gate.admit().await.is_err());
        let open = CallGate::new("py", CallLimits::default());
        let permits: Vec<_> = futures::future::join_all((0..50).map(|_| open.admit())).await;
        assert!(permits.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn a_new_max_concurrency_applies_to_calls_that_start_after_it() {
        let gate = CallGate::new("py", limits(1, 0, 100));
        let held = gate.admit().await.expect("the slot");
        gate.configure(limits(3, 0, 100));
        let more: Vec<_> = futures::future::join_all((0..3).map(|_| gate.admit())).await;
        assert!(more.iter().all(Result::is_ok), "three new slots");
        assert!(gate.admit().await.is_err(), "and no fourth");
        drop(held);
        // Changing something else keeps the slots (and what holds them).
        let mut longer = limits(3, 0, 100);
        longer.call_timeout = Some(Duration::from_secs(5));
        gate.configure(longer);
        assert_eq!(gate.running(), 3);
        assert_eq!(gate.limits().call_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn fair_cap_keeps_small_items_whole_and_splits_the_rest() {
        assert_eq!(fair_cap(&[10, 20], 100), usize::MAX);
        assert_eq!(fair_cap(&[10, 1000, 1000], 110), 50);
        assert_eq!(fair_cap(&[300, 300, 300], 300), 100);
    }

    #[tokio::test]
    async fn every_session_of_a_server_shares_its_gate_and_sees_new_limits() {
        let gates = Gates::default();
        let mut spec = MCPServerSpec {
            limits: Some(crate::api::LimitsSpec {
                max_concurrency: Some(1),
                max_queued: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let shared = gates.configure("sso", &spec);
        let users_own = gates.gate("sso", &MCPServerSpec::default());
        assert!(Arc::ptr_eq(&shared, &users_own), "one gate per server name");
        let _held = shared.admit().await.expect("the slot");
        assert!(
            users_own.admit().await.is_err(),
            "a user's session shares it"
        );
        spec.limits = Some(crate::api::LimitsSpec {
            max_output_bytes: Some(4096),
            ..spec.limits.clone().unwrap_or_default()
        });
        gates.configure("sso", &spec);
        assert_eq!(users_own.limits().max_output_bytes, Some(4096));
        gates.remove("sso");
        assert!(
            !Arc::ptr_eq(&gates.gate("sso", &spec), &shared),
            "a new server, a new gate"
        );
    }

    #[test]
    fn a_result_within_the_limit_is_untouched() {
        let mut result = json!({"content": [{"type": "text", "text": "hello"}], "isError": false});
        let before = result.clone();
        assert!(!limit_tool_result(&mut result, 5, "py"));
        assert_eq!(result, before);
        let text = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"héllo wörld"}]}}"#;
        assert_eq!(limit_response_text(text.to_string(), 50, "py"), text);
        // Over the limit as JSON, within it as text: the same bytes.
        assert_eq!(limit_response_text(text.to_string(), 20, "py"), text);
    }

    #[test]
    fn text_is_cut_at_a_character_boundary_and_the_cut_is_noted() {
        let mut result = json!({"content": [
            {"type": "text", "text": "abc"},
            {"type": "text", "text": "ééééé"},
            {"type": "image", "data": "AAAA", "mimeType": "image/png"},
        ]});
        assert!(limit_tool_result(&mut result, 8, "py"));
        let blocks = result["content"].as_array().unwrap();
        assert_eq!(blocks.len(), 3, "two text blocks and the note");
        assert_eq!(blocks[0]["text"], "abc");
        // 5 bytes left: two é (4 bytes), not half of a third.
        assert_eq!(blocks[1]["text"], "éé");
        let note = blocks[2]["text"].as_str().unwrap();
        assert!(
            note.contains(
                "server \"py\" returns at most 8 bytes per result (spec.limits.maxOutputBytes)"
            ),
            "{note}"
        );
        assert!(note.contains("1 block(s) dropped whole"), "{note}");
        assert!(result.get("isError").is_none(), "a cut text is no error");
    }

    #[test]
    fn structured_content_over_the_limit_keeps_its_shape_with_its_strings_cut() {
        let big = "x".repeat(100);
        let mut result = json!({
            "content": [{"type": "text", "text": big}],
            "structuredContent": {"items": [big, "short"], "count": 2},
        });
        assert!(limit_tool_result(&mut result, 60, "py"));
        let structured = &result["structuredContent"];
        assert_eq!(structured["items"][1], "short", "short strings stay whole");
        assert_eq!(structured["count"], 2, "numbers untouched");
        let cut = structured["items"][0].as_str().unwrap();
        assert!(!cut.is_empty() && cut.len() < 60, "{cut}");
        assert!(json_size(structured) <= 60, "{structured}");
        assert!(
            result.get("isError").is_none(),
            "still a result, not an error"
        );
        assert_eq!(result["content"][0]["text"].as_str().unwrap().len(), 60);
        let note = result["content"][1]["text"].as_str().unwrap();
        assert!(note.contains("strings in structuredContent"), "{note}");
        // A structure too big even with its strings empty is removed: an error.
        let numbers: Vec<u32> = (0..100).collect();
        let mut result = json!({"content": [], "structuredContent": {"n": numbers}});
        assert!(limit_tool_result(&mut result, 60, "py"));
        assert!(result.get("structuredContent").is_none());
        assert_eq!(result["isError"], true);
        // In a response: rewritten, id and the rest kept.
        let response = json!({"jsonrpc": "2.0", "id": 7, "result": {
            "content": [{"type": "text", "text": big}]}})
        .to_string();
        let cut: Value = serde_json::from_str(&limit_response_text(response, 60, "py")).unwrap();
        assert_eq!(cut["id"], 7);
        assert_eq!(
            cut["result"]["content"][0]["text"].as_str().unwrap().len(),
            60
        );
    }
}
