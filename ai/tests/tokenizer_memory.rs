//! How much heap the token counter holds, against `tiktoken-rs`'s `CoreBPE`:
//! a counting global allocator, read before and after each is built and used.
//! Prints the figures (`cargo test -p hypergate-ai --release --test
//! tokenizer_memory -- --nocapture`) and fails if the counter grows past its
//! budget. Depends on `hypergate-ai` and `tiktoken-rs` only.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, keeping the bytes live now and the most ever live.
struct CountingAllocator;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn added(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments, so
// `System`'s guarantees hold; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            added(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `alloc_zeroed`'s contract.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            added(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller upholds `realloc`'s contract.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            added(new_size);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB
}

/// Live bytes above `base`, and the peak above it since the last reset.
fn measure(base: usize) -> (usize, usize) {
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (live, peak)
}

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

// One test in this binary, so no other test's allocations are counted.
#[test]
fn counter_holds_a_fraction_of_tiktokens_memory() {
    let text = "The quick brown fox jumps over the lazy dog; {\"n\": 12345}. ".repeat(350);

    let base = reset_peak();
    let core = tiktoken_rs::o200k_base().unwrap();
    let (built, build_peak) = measure(base);
    let expected = core.encode_ordinary(&text).len();
    let (used, _) = measure(base);
    drop(core);
    println!(
        "tiktoken CoreBPE: {:.1} MiB held once built, {:.1} MiB after a count, {:.1} MiB peak",
        mib(built),
        mib(used),
        mib(build_peak)
    );

    let base = reset_peak();
    hypergate_ai::tokens::warm_up(|| ())
        .unwrap()
        .join()
        .unwrap();
    let (built_compact, build_peak_compact) = measure(base);
    assert_eq!(hypergate_ai::tokens::count(&text), expected as u64);
    let (used_compact, _) = measure(base);
    println!(
        "compact counter: {:.1} MiB held once built, {:.1} MiB after a count, {:.1} MiB peak",
        mib(built_compact),
        mib(used_compact),
        mib(build_peak_compact)
    );

    assert!(used_compact < 5 << 20, "{used_compact} bytes held");
    assert!(
        used_compact * 8 < used,
        "{used_compact} vs tiktoken's {used}"
    );
}
