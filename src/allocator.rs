//! Settings of the C allocator that keep the operator's resident memory
//! close to what it holds.
//!
//! glibc's malloc gives every thread that allocates an arena of its own (up
//! to eight per core), and memory freed in one arena is not reused by
//! another: the lists decoded by one tokio worker and the caches filled by
//! the other stay resident twice. It raises its mmap threshold each time a
//! large block is freed, after which the large buffers of a list response
//! come from the heap instead of being returned at once. And it gives back
//! only the free memory at the top of the heap: a rollout of hundreds of
//! Services decodes and frees thousands of small objects between the cached
//! ones, and the pages they leave free stay resident. Measured with `make
//! scale` (10,500 Services and Deployments): peak resident 101 MiB with the
//! defaults.

use std::time::Duration;

/// How often [`return_free_memory`] looks at the heap.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free heap beyond which [`return_free_memory`] gives pages back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MAX_FREE_BYTES: usize = 1 << 20;

/// Applies the settings: one arena (the runtime has one worker per core,
/// and each thread's allocation cache keeps most allocations off its lock),
/// and blocks from 128 KiB on mapped on their own, returned when freed.
/// Call before any thread starts. Where the allocator is not glibc's, does
/// nothing.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists, so no allocation runs concurrently with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Every [`CHECK_EVERY`], gives the free pages inside the heap back to the
/// system once more than a few MiB are free. Runs until dropped.
pub async fn return_free_memory() {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallinfo2 and malloc_trim take the allocator's own locks;
        // neither touches memory this program holds.
        unsafe {
            if libc::mallinfo2().fordblks > MAX_FREE_BYTES {
                libc::malloc_trim(0);
            }
        }
    }
}
