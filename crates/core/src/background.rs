//! How the gateway's background threads that work for every request (the
//! call-record writer, the call store's checkpointer) give way to the shards
//! on a shared core.
//!
//! A background thread that wakes in the middle of a shard's batch of
//! requests takes the CPU for as long as its own batch lasts, and the
//! requests waiting on that shard see it in their tail latency. Run at a
//! lower priority (a higher nice value, `[server] background_nice`), such a
//! thread gets the CPU when the shard waits for I/O, and only its weight's
//! share of it when both want it: at nice 10 about a tenth, several times what
//! the record writer needs at 50,000 records a second. The start-up code sets
//! the value once ([`set_nice`]); each background thread applies it as it
//! starts ([`enter`]). Depends on nothing else of this crate.

use std::sync::atomic::{AtomicI32, Ordering};

/// The nice value background threads take (0: the shards' own priority).
static NICE: AtomicI32 = AtomicI32::new(0);

/// Sets the nice value background threads started from now on take.
pub fn set_nice(nice: i32) {
    NICE.store(nice.clamp(0, 19), Ordering::Relaxed);
}

/// Called first thing on a background thread: lowers this thread's priority
/// to the configured nice value. Lowering needs no privilege; a failure
/// leaves the thread at the shards' priority, which is only slower.
pub fn enter() {
    let nice = NICE.load(Ordering::Relaxed);
    if nice > 0 {
        // SAFETY: plain system call on the calling thread (`who = 0` with
        // `PRIO_PROCESS` is this thread on Linux); no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_thread_runs_at_the_configured_nice_value() {
        set_nice(7);
        let seen = std::thread::spawn(|| {
            enter();
            // SAFETY: plain system call on this thread; no memory is passed.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
        })
        .join()
        .unwrap();
        assert_eq!(seen, 7);
        set_nice(0);
    }
}
