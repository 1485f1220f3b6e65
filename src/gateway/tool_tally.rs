//! Per-tool call counts the fleet page (`/ui`) can read back: calls, errors
//! and latency per exposed tool, since start and over the last five minutes.
//! prometheus-client's `Family` cannot be iterated, so this small tally sits
//! beside the metrics and is fed from the same place (`Metrics::tool_call`):
//! one upstream call is one call here too (a fan-out counts once per instance).
//!
//! The window is a ring of thirty 10-second buckets, each stamped with the
//! slot (10 s since the tally was made) it counts; a bucket whose stamp is
//! older than the window is counted as empty and reset when next written.
//! Per call: one lock, a hash lookup by `&str`, a few additions; a tool is
//! allocated for once, the first time it is called. At most
//! [`MAX_TOOLS`] tools are tracked (names come from the catalog, but a
//! catalog can change for ever); calls of tools beyond that are counted
//! together as untracked.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many tools are tracked at most.
pub const MAX_TOOLS: usize = 10_000;
/// The width of one window bucket, in seconds.
const SLOT_SECONDS: u64 = 10;
/// Buckets in the window (30 x 10 s: five minutes).
const SLOTS: usize = 30;
/// The window, for labels.
pub const WINDOW: Duration = Duration::from_secs(SLOT_SECONDS * SLOTS as u64);
/// Upper bounds (microseconds) of the latency histogram kept since start,
/// the same bounds as `flotilla_tool_call_duration_seconds`; a last bucket
/// holds everything above.
const LATENCY_BOUNDS_US: [u64; 15] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Calls, errors and summed latency.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub errors: u64,
    pub micros: u64,
}

impl Counts {
    fn add(&mut self, error: bool, micros: u64) {
        self.calls += 1;
        self.errors += u64::from(error);
        self.micros = self.micros.saturating_add(micros);
    }

    /// Errors per call, when there were calls.
    pub fn error_rate(&self) -> Option<f64> {
        (self.calls > 0).then(|| self.errors as f64 / self.calls as f64)
    }

    /// Mean latency, when there were calls.
    pub fn mean(&self) -> Option<Duration> {
        (self.calls > 0).then(|| Duration::from_micros(self.micros / self.calls))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    slot: u64,
    counts: Counts,
}

#[derive(Clone, Debug)]
struct Tally {
    total: Counts,
    ring: [Bucket; SLOTS],
    latency: [u64; LATENCY_BOUNDS_US.len() + 1],
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            total: Counts::default(),
            ring: [Bucket::default(); SLOTS],
            latency: [0; LATENCY_BOUNDS_US.len() + 1],
        }
    }
}

impl Tally {
    fn record(&mut self, slot: u64, error: bool, micros: u64) {
        self.total.add(error, micros);
        let bucket = &mut self.ring[(slot % SLOTS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                counts: Counts::default(),
            };
        }
        bucket.counts.add(error, micros);
        let index = LATENCY_BOUNDS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency[index] += 1;
    }

    /// The buckets of the window ending in `slot`.
    fn window(&self, slot: u64) -> Counts {
        let mut sum = Counts::default();
        for bucket in &self.ring {
            if bucket.slot <= slot && slot - bucket.slot < SLOTS as u64 {
                sum.calls += bucket.counts.calls;
                sum.errors += bucket.counts.errors;
                sum.micros = sum.micros.saturating_add(bucket.counts.micros);
            }
        }
        sum
    }

    /// The upper bound of the bucket holding quantile `q` of all calls
    /// (`None` past the last bound, or with no calls).
    fn quantile_bound(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return LATENCY_BOUNDS_US
                    .get(index)
                    .map(|us| Duration::from_micros(*us));
            }
        }
        None
    }
}

/// One tool's numbers, as the page shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ToolStats {
    pub tool: String,
    pub total: Counts,
    /// The last [`WINDOW`].
    pub recent: Counts,
    /// Upper bounds of the latency buckets holding the median and the 95th
    /// percentile of all calls; `None` above a minute.
    pub p50: Option<Duration>,
    pub p95: Option<Duration>,
}

/// Every tracked tool at one moment.
#[derive(Clone, Debug, Default)]
pub struct TallySnapshot {
    /// Sorted by tool name.
    pub tools: Vec<ToolStats>,
    /// Calls of tools beyond [`MAX_TOOLS`], not broken down.
    pub untracked: u64,
}

/// The per-tool tally; see the module docs.
pub struct ToolTally {
    started: Instant,
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tools: HashMap<String, Tally>,
    untracked: u64,
}

impl Default for ToolTally {
    fn default() -> Self {
        Self::with_limit(MAX_TOOLS)
    }
}

impl ToolTally {
    /// A tally tracking at most `limit` tools.
    pub fn with_limit(limit: usize) -> Self {
        Self {
            started: Instant::now(),
            limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs() / SLOT_SECONDS
    }

    /// One upstream call of `tool` ended now, as an error or not (the
    /// metrics decide: `Outcome::is_error`).
    pub fn record(&self, tool: &str, error: bool, took: Duration) {
        self.record_at(Instant::now(), tool, error, took);
    }

    fn record_at(&self, now: Instant, tool: &str, error: bool, took: Duration) {
        let slot = self.slot(now);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some(tally) = inner.tools.get_mut(tool) {
            tally.record(slot, error, micros);
        } else if inner.tools.len() < self.limit {
            let mut tally = Tally::default();
            tally.record(slot, error, micros);
            inner.tools.insert(tool.to_string(), tally);
        } else {
            inner.untracked += 1;
        }
    }

    /// Every tracked tool's numbers now.
    pub fn snapshot(&self) -> TallySnapshot {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> TallySnapshot {
        let slot = self.slot(now);
        let Ok(inner) = self.inner.lock() else {
            return TallySnapshot::default();
        };
        let mut tools: Vec<ToolStats> = inner
            .tools
            .iter()
            .map(|(tool, tally)| ToolStats {
                tool: tool.clone(),
                total: tally.total,
                recent: tally.window(slot),
                p50: tally.quantile_bound(0.5),
                p95: tally.quantile_bound(0.95),
            })
            .collect();
        let untracked = inner.untracked;
        drop(inner);
        tools.sort_by(|a, b| a.tool.cmp(&b.tool));
        TallySnapshot { tools, untracked }
    }

    /// How long the tally has been counting.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const OK: bool = false;
    const ERROR: bool = true;

    fn stats<'a>(snapshot: &'a TallySnapshot, tool: &str) -> &'a ToolStats {
        snapshot
            .tools
            .iter()
            .find(|t| t.tool == tool)
            .unwrap_or_else(|| panic!("{tool} not tracked: {snapshot:?}"))
    }

    #[test]
    fn counts_calls_errors_and_latency_per_tool() {
        let tally = ToolTally::default();
        let t0 = tally.started;
        tally.record_at(t0, "a", OK, 2 * MS);
        tally.record_at(t0, "a", ERROR, 4 * MS);
        tally.record_at(t0, "a", OK, 6 * MS);
        tally.record_at(t0, "b", ERROR, 30_000 * MS);
        let snapshot = tally.snapshot_at(t0);
        assert_eq!(snapshot.tools.len(), 2);
        let a = stats(&snapshot, "a");
        assert_eq!(
            a.total,
            Counts {
                calls: 3,
                errors: 1,
                micros: 12_000
            }
        );
        assert_eq!(a.recent, a.total);
        assert_eq!(a.total.mean(), Some(4 * MS));
        assert_eq!(a.total.error_rate(), Some(1.0 / 3.0));
        // 2 ms, 4 ms, 6 ms: the median is in the (2.5 ms, 5 ms] bucket.
        assert_eq!(a.p50, Some(5 * MS));
        assert_eq!(a.p95, Some(10 * MS));
        let b = stats(&snapshot, "b");
        assert_eq!(b.total.errors, 1);
        assert_eq!(b.p50, Some(30_000 * MS));
    }

    #[test]
    fn the_window_keeps_five_minutes_and_forgets_older_buckets() {
        let tally = ToolTally::default();
        let t0 = tally.started;
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        tally.record_at(at(0), "a", OK, MS);
        tally.record_at(at(5), "a", ERROR, MS);
        tally.record_at(at(150), "a", OK, MS);
        tally.record_at(at(299), "a", OK, MS);
        // All four within the first five minutes.
        assert_eq!(stats(&tally.snapshot_at(at(299)), "a").recent.calls, 4);
        // At 300 s the first bucket (0-9 s) has left the window.
        let later = tally.snapshot_at(at(300));
        let a = stats(&later, "a");
        assert_eq!((a.recent.calls, a.recent.errors), (2, 0));
        assert_eq!((a.total.calls, a.total.errors), (4, 1));
        // A call at 305 s lands in the ring slot of 0-9 s and resets it.
        tally.record_at(at(305), "a", ERROR, MS);
        let a = stats(&tally.snapshot_at(at(305)), "a").clone();
        assert_eq!((a.recent.calls, a.recent.errors), (3, 1));
        // Ten minutes of silence: nothing recent, everything since start.
        let quiet = tally.snapshot_at(at(905));
        let a = stats(&quiet, "a");
        assert_eq!(a.recent, Counts::default());
        assert_eq!((a.total.calls, a.total.errors), (5, 2));
    }

    #[test]
    fn a_stale_bucket_is_not_counted_even_when_its_ring_slot_is_reused_later() {
        let tally = ToolTally::default();
        let t0 = tally.started;
        let at = |seconds: u64| t0 + Duration::from_secs(seconds);
        tally.record_at(at(15), "a", OK, MS);
        // Slot 1 (10-19 s) and slot 31 (310-319 s) share a ring entry.
        tally.record_at(at(312), "a", OK, MS);
        assert_eq!(stats(&tally.snapshot_at(at(312)), "a").recent.calls, 1);
    }

    #[test]
    fn tools_beyond_the_limit_are_counted_together() {
        let tally = ToolTally::with_limit(3);
        for tool in ["a", "b", "c", "d", "e"] {
            tally.record(tool, OK, MS);
        }
        // Known tools keep counting at the limit.
        tally.record("a", OK, MS);
        let snapshot = tally.snapshot();
        let names: Vec<&str> = snapshot.tools.iter().map(|t| t.tool.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(stats(&snapshot, "a").total.calls, 2);
        assert_eq!(snapshot.untracked, 2);
    }

    #[test]
    fn the_default_limit_bounds_the_map() {
        let tally = ToolTally::default();
        for i in 0..MAX_TOOLS + 50 {
            tally.record(&format!("tool-{i}"), OK, MS);
        }
        let snapshot = tally.snapshot();
        assert_eq!(snapshot.tools.len(), MAX_TOOLS);
        assert_eq!(snapshot.untracked, 50);
    }
}
