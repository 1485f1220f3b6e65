//! Giving freed heap back to the operating system once the fleet settles.
//!
//! Connecting a fleet is a burst: every upstream's handshake, listings and
//! buffers are allocated at once and mostly freed again. glibc's allocator
//! keeps what was freed for reuse, spread over one arena per worker thread,
//! so a gateway over 500 idle upstreams held about 20 KB per upstream of
//! freed memory in its resident set (measured: 68 against 58 MB). After the
//! fleet has been quiet for [`QUIET`] (no server connected or changed its
//! lists), `malloc_trim` returns those pages; it costs a few milliseconds,
//! once per burst. Sessions parked when idle (`parking`) free their part in
//! a burst too, some seconds after the fleet connected: [`Freed`] counts it
//! as a change. Other allocators and platforms: nothing to do.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// How long the fleet stays unchanged before freed memory is released.
pub const QUIET: Duration = Duration::from_secs(2);

/// Says that memory was freed outside a fleet change (a session parked).
#[derive(Clone, Debug, Default)]
pub struct Freed(Arc<Notify>);

impl Freed {
    pub fn note(&self) {
        self.0.notify_one();
    }

    pub async fn noted(&self) {
        self.0.notified().await;
    }
}

/// Returns freed heap pages to the operating system.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks glibc's own arenas; it takes no
        // pointers and is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::debug!(
            released = released != 0,
            "returned freed heap to the system"
        );
    }
}
