//! Giving freed heap back to the operating system once the fleet settles.
//!
//! Connecting a fleet is a burst: every upstream's handshake, listings and
//! buffers are allocated at once and mostly freed again; parking idle
//! sessions (`parking`) frees their rmcp services in a burst too, some
//! seconds later. The binary allocates with jemalloc (`main.rs`), which
//! returns freed pages by itself only gradually (about ten seconds of decay,
//! and only while it is being used). After the fleet has been quiet for
//! [`QUIET`] (no server connected or changed its lists, no session parked:
//! [`Freed`]), every arena is purged at once; it costs a few milliseconds,
//! once per burst. Where jemalloc is not the allocator (a test binary
//! linking the library, or MSVC), the purge reaches an allocator nobody
//! uses and frees nothing.

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

/// Returns freed heap pages to the operating system; whether the allocator
/// took the request.
pub fn release_freed_memory() -> bool {
    #[cfg(not(target_env = "msvc"))]
    {
        // "arena.<MALLCTL_ARENAS_ALL>.purge": every arena's unused dirty pages.
        const PURGE_ALL: &[u8] = b"arena.4096.purge\0";
        // SAFETY: a void control (no old or new value), named by a
        // NUL-terminated string; jemalloc takes its own locks.
        let failed = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr().cast(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        tracing::debug!(released = failed == 0, "returned freed heap to the system");
        failed == 0
    }
    #[cfg(target_env = "msvc")]
    false
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    #[test]
    fn jemalloc_takes_the_purge_of_every_arena() {
        // A control jemalloc does not know (a wrong name or form) fails.
        assert!(super::release_freed_memory());
    }
}
