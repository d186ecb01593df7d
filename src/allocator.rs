//! Settings of the C allocator that keep the operator's resident memory
//! close to what it holds.
//!
//! glibc's malloc gives every thread that allocates an arena of its own (up
//! to eight per core), and memory freed in one arena is not reused by
//! another: the lists decoded by one tokio worker and the caches filled by
//! the other stay resident twice. It also raises its mmap threshold each
//! time a large block is freed, after which the large buffers of a list
//! response come from the heap and leave holes in it when freed, instead of
//! going back to the system at once. Measured with `make scale` (10,500
//! Services and Deployments): peak resident 101 MiB with the defaults.

/// Arenas the threads share: the runtime has one worker per core, and two
/// arenas keep contention low without one arena per thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Blocks from this size on are mapped on their own and returned when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Applies the settings; call before any thread starts. Where the allocator
/// is not glibc's, does nothing.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any
    // other thread exists, so no allocation runs concurrently with it.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
