//! Steady-state encoding takes its large buffers from the recycled ones and never grows
//! them: a fresh buffer of a chunk's size is fresh memory, faulted in and zeroed page by
//! page. In a test binary of its own, with an allocator that counts: the recycled buffers
//! are shared by the whole process, and other tests running beside this one would take
//! them.
#![allow(clippy::unwrap_used)]

use mithril_checkpoint::buffer_pool::{recycle_chunk_data, SPARE_PAYLOAD_FROM};
use mithril_checkpoint::chunk::{encode_chunk_delta, EncodeOptions};
use mithril_checkpoint::delta::DeltaMode;
use mithril_checkpoint::{DType, Encoding};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the allocations and reallocations of recyclable size.
struct Counting;

static LARGE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= SPARE_PAYLOAD_FROM {
            LARGE.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= SPARE_PAYLOAD_FROM {
            LARGE.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= SPARE_PAYLOAD_FROM {
            LARGE.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A 1 MiB chunk of fp32 weights and the same weights some training steps later, every one
/// moved by up to 8191 ulps: every quad escapes, so the planner's escape symbols and extra
/// bits, and the payload, are as large as a chunk of this size makes them.
fn step_pair() -> (Vec<u8>, Vec<u8>) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let n = 1 << 18;
    let base: Vec<f32> = (0..n)
        .map(|_| ((next() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32 * 0.1)
        .collect();
    let new: Vec<f32> = base
        .iter()
        .map(|w| {
            let r = next();
            let ulps = (r >> 8) % 8192;
            f32::from_bits(w.to_bits().wrapping_add(ulps as u32))
        })
        .collect();
    let bytes = |v: &[f32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
    (bytes(&base), bytes(&new))
}

/// The high halves of fp32 words: bf16 words.
fn halves(v: &[u8]) -> Vec<u8> {
    v.chunks_exact(4).flat_map(|w| [w[2], w[3]]).collect()
}

/// Fast deltas: `sub-pack` in fp32 (its packed stream, its widths, its payload) and
/// `sub-quad` in bf16 (its extra bits, its payload and the buffers its planner keeps).
#[test]
fn encoding_a_fast_delta_again_allocates_no_large_buffer() {
    let (base, new) = step_pair();
    let (base16, new16) = (halves(&base), halves(&new));
    let opts = EncodeOptions {
        delta_mode: DeltaMode::Fast,
        ..EncodeOptions::default()
    };
    let encode = || {
        let delta = encode_chunk_delta(&new, &base, DType::F32, &opts);
        assert_eq!(delta.encoding, Encoding::SubPack);
        recycle_chunk_data(delta.data);
        let delta = encode_chunk_delta(&new16, &base16, DType::BF16, &opts);
        assert_eq!(delta.encoding, Encoding::SubQuad);
        recycle_chunk_data(delta.data);
    };
    encode();
    let before = LARGE.load(Ordering::Relaxed);
    for _ in 0..3 {
        encode();
    }
    assert_eq!(
        LARGE.load(Ordering::Relaxed),
        before,
        "large allocations when encoding again"
    );
}
