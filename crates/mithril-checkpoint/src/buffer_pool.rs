//! Recycled memory for decoded tensors and encoded chunk payloads.
//!
//! A tensor decoded into fresh memory first pays for the kernel mapping and zeroing every
//! page the decoder writes: about a third of decoding a large fp32 tensor. Memory over
//! glibc's mmap threshold (32 MiB at most) is fresh on every call, and smaller buffers are
//! too whenever the heap has just been trimmed. A [`PooledBuffer`] goes back to a pool when
//! its owner drops it (for a Python tensor, when the tensor is garbage), and the next
//! decode of a similar size takes it from there instead of from the allocator.
//!
//! The pool keeps at most [`POOL_BYTES`] in at most [`POOL_BLOCKS`] blocks, the most
//! recently returned first (they are the likeliest to be in cache); what does not fit goes
//! back to the allocator. A block is reused for a request of at least half its size, so a
//! small tensor never holds on to a large block.
//!
//! Encoding has the same cost on its side: every chunk's payload is a buffer of the chunk's
//! size, written once, copied into the container and dropped. [`payload_buffer`] takes one
//! that [`recycle_payload`] got back from an earlier chunk (at most [`SPARE_PAYLOAD_BYTES`]
//! are kept); on the fp32 embedding those faults had been a quarter of its encoding time.

use crate::error::{advise_huge_pages, Error, Result};
use std::alloc::Layout;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::Mutex;

/// Decode outputs at least this large are worth recycling. Smaller ones are served well by
/// the allocator's own free lists, and recycling them would only crowd the pool.
pub const POOLED_FROM: usize = 1 << 20;
/// Most bytes the pool keeps for reuse.
pub const POOL_BYTES: usize = 256 << 20;
/// Most blocks the pool keeps for reuse.
pub const POOL_BLOCKS: usize = 16;
/// Alignment of every block: a page, so that a block is as aligned as any dtype, SIMD
/// load or huge-page advice needs.
const ALIGN: usize = 4096;

/// A block of memory from the global allocator, `capacity` bytes with [`ALIGN`].
struct Block {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: a block is plain memory owned by whoever holds the `Block`; nothing about it is
// tied to the thread that allocated it.
unsafe impl Send for Block {}

impl Block {
    fn allocate(capacity: usize) -> Result<Block> {
        let layout = Layout::from_size_align(capacity, ALIGN).map_err(|_| {
            Error::OutOfMemory(format!("{capacity} bytes is not a valid allocation"))
        })?;
        // SAFETY: callers never ask for zero bytes (`PooledBuffer::new` rounds up to a page).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| Error::OutOfMemory(format!("cannot allocate {capacity} bytes")))?;
        advise_huge_pages(ptr.as_ptr(), capacity);
        Ok(Block { ptr, capacity })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in `Block::allocate` with exactly this layout, which
        // was valid then, and is freed only here.
        unsafe {
            let layout = Layout::from_size_align_unchecked(self.capacity, ALIGN);
            std::alloc::dealloc(self.ptr.as_ptr(), layout);
        }
    }
}

/// Blocks kept for reuse, most recently returned first.
pub struct Pool {
    kept: Mutex<VecDeque<Block>>,
    max_bytes: usize,
    max_blocks: usize,
}

/// The pool every decode output of the bindings comes from.
pub static DECODE_POOL: Pool = Pool::new(POOL_BYTES, POOL_BLOCKS);

impl Pool {
    /// An empty pool that keeps at most `max_bytes` in `max_blocks` blocks.
    pub const fn new(max_bytes: usize, max_blocks: usize) -> Pool {
        Pool {
            kept: Mutex::new(VecDeque::new()),
            max_bytes,
            max_blocks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Block>> {
        // A panic elsewhere while the lock was held leaves a list of whole blocks: still
        // consistent, so a poisoned lock is used as it is.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently returned block of `capacity` bytes or more, but no more than
    /// twice that.
    fn take(&self, capacity: usize) -> Option<Block> {
        let mut kept = self.lock();
        let at = kept
            .iter()
            .position(|b| b.capacity >= capacity && b.capacity / 2 <= capacity)?;
        kept.remove(at)
    }

    fn give_back(&self, block: Block) {
        if block.capacity > self.max_bytes {
            return;
        }
        let mut freed = Vec::new();
        let mut kept = self.lock();
        kept.push_front(block);
        let mut bytes: usize = kept.iter().map(|b| b.capacity).sum();
        while kept.len() > self.max_blocks || bytes > self.max_bytes {
            match kept.pop_back() {
                Some(oldest) => {
                    bytes -= oldest.capacity;
                    freed.push(oldest);
                }
                None => break,
            }
        }
        // The oldest blocks go back to the allocator (an munmap for a large one) after the
        // lock is released.
        drop(kept);
    }

    /// Bytes the pool holds for reuse.
    pub fn kept_bytes(&self) -> usize {
        self.lock().iter().map(|b| b.capacity).sum()
    }

    /// Give every kept block back to the allocator; returns the bytes released.
    pub fn release(&self) -> usize {
        let blocks = std::mem::take(&mut *self.lock());
        blocks.iter().map(|b| b.capacity).sum()
    }
}

/// Payload buffers of at least this capacity are kept for reuse.
pub const SPARE_PAYLOAD_FROM: usize = 64 << 10;
/// Most bytes of capacity the spare payload buffers hold.
pub const SPARE_PAYLOAD_BYTES: usize = 64 << 20;

/// Payload buffers given back by [`recycle_payload`], most recent last.
static SPARE_PAYLOADS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn spare_payloads() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // Whole vectors only: a panic elsewhere while the lock was held leaves them usable.
    SPARE_PAYLOADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty vector with room for `capacity` bytes, a recycled one (of at most twice that
/// room) where one is kept.
pub fn payload_buffer(capacity: usize) -> Vec<u8> {
    if capacity >= SPARE_PAYLOAD_FROM {
        let mut spare = spare_payloads();
        let fits = |v: &Vec<u8>| v.capacity() >= capacity && v.capacity() / 2 <= capacity;
        if let Some(at) = spare.iter().rposition(fits) {
            let mut v = spare.swap_remove(at);
            v.clear();
            return v;
        }
    }
    Vec::with_capacity(capacity)
}

/// Keep `v` for [`payload_buffer`] if it is large enough to be worth it and the kept ones
/// leave room for it; otherwise free it.
pub fn recycle_payload(v: Vec<u8>) {
    let room = v.capacity();
    if room < SPARE_PAYLOAD_FROM {
        return;
    }
    let mut spare = spare_payloads();
    let kept: usize = spare.iter().map(Vec::capacity).sum();
    if kept + room <= SPARE_PAYLOAD_BYTES {
        spare.push(v);
    }
}

/// [`recycle_payload`] of a chunk's stored bytes where it owns them (a chunk stored raw
/// borrows the caller's).
pub fn recycle_chunk_data(data: std::borrow::Cow<'_, [u8]>) {
    if let std::borrow::Cow::Owned(v) = data {
        recycle_payload(v);
    }
}

/// Free every kept decode block and payload buffer; returns the bytes released.
pub fn release_all() -> usize {
    let payloads = std::mem::take(&mut *spare_payloads());
    DECODE_POOL.release() + payloads.iter().map(Vec::capacity).sum::<usize>()
}

/// Bytes kept for reuse: decode blocks and payload buffers.
pub fn kept_bytes() -> usize {
    DECODE_POOL.kept_bytes() + spare_payloads().iter().map(Vec::capacity).sum::<usize>()
}

/// `len` bytes of uninitialised memory, taken from a pool when it holds a block that fits,
/// and given back to that pool on drop. Readers must write every byte they hand on: the
/// memory may hold an earlier tensor's bytes.
pub struct PooledBuffer {
    block: Option<Block>,
    len: usize,
    pool: &'static Pool,
}

impl PooledBuffer {
    /// A buffer of `len` bytes (`len` > 0) from `pool`, or freshly allocated when the pool
    /// has no block that fits. An allocation the allocator refuses is
    /// [`Error::OutOfMemory`], never an abort.
    pub fn new(pool: &'static Pool, len: usize) -> Result<PooledBuffer> {
        let capacity = len
            .max(1)
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(|| Error::OutOfMemory(format!("{len} bytes is not a valid allocation")))?;
        let block = match pool.take(capacity) {
            Some(block) => block,
            None => Block::allocate(capacity)?,
        };
        Ok(PooledBuffer {
            block: Some(block),
            len,
            pool,
        })
    }

    /// The length asked for.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: [`PooledBuffer::new`] rounds up).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of the buffer, valid for `len` bytes of reads and writes while `self`
    /// lives.
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.block
            .as_ref()
            .map_or(NonNull::dangling().as_ptr(), |b| b.ptr.as_ptr())
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            self.pool.give_back(block);
        }
    }
}

// SAFETY: the buffer owns its block outright; any writes through `as_mut_ptr` are the
// caller's to synchronise, as for any raw pointer.
unsafe impl Sync for PooledBuffer {}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_bytes: usize, max_blocks: usize) -> &'static Pool {
        Box::leak(Box::new(Pool::new(max_bytes, max_blocks)))
    }

    fn fill(b: &PooledBuffer, v: u8) {
        // SAFETY: the buffer is valid for `len` bytes of writes and nothing else uses it.
        unsafe { std::ptr::write_bytes(b.as_mut_ptr(), v, b.len()) }
    }

    #[test]
    fn a_dropped_buffer_is_reused_for_the_next_one_of_its_size() {
        let p = pool(64 << 20, 4);
        let a = PooledBuffer::new(p, 3 << 20).unwrap();
        fill(&a, 7);
        let at = a.as_mut_ptr();
        drop(a);
        assert_eq!(p.kept_bytes(), 3 << 20);
        let b = PooledBuffer::new(p, (3 << 20) - 100).unwrap();
        assert_eq!(b.as_mut_ptr(), at);
        assert_eq!(b.len(), (3 << 20) - 100);
        assert_eq!(p.kept_bytes(), 0);
    }

    #[test]
    fn a_block_is_not_given_to_a_request_of_less_than_half_its_size() {
        let p = pool(64 << 20, 4);
        let big = PooledBuffer::new(p, 8 << 20).unwrap();
        let at = big.as_mut_ptr();
        drop(big);
        let small = PooledBuffer::new(p, (4 << 20) - ALIGN).unwrap();
        assert_ne!(small.as_mut_ptr(), at);
        assert_eq!(p.kept_bytes(), 8 << 20);
        let half = PooledBuffer::new(p, 4 << 20).unwrap();
        assert_eq!(half.as_mut_ptr(), at);
    }

    #[test]
    fn the_most_recently_returned_block_is_taken_first() {
        let p = pool(64 << 20, 4);
        let a = PooledBuffer::new(p, 2 << 20).unwrap();
        let b = PooledBuffer::new(p, 2 << 20).unwrap();
        let (at_a, at_b) = (a.as_mut_ptr(), b.as_mut_ptr());
        drop(a);
        drop(b);
        // Taken and dropped again at once: back at the front, ahead of `a`'s block.
        assert_eq!(PooledBuffer::new(p, 2 << 20).unwrap().as_mut_ptr(), at_b);
        let c = PooledBuffer::new(p, 2 << 20).unwrap();
        let d = PooledBuffer::new(p, 2 << 20).unwrap();
        assert_eq!(c.as_mut_ptr(), at_b);
        assert_eq!(d.as_mut_ptr(), at_a);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_limits() {
        let p = pool(5 << 20, 3);
        let bufs: Vec<_> = (0..4)
            .map(|_| PooledBuffer::new(p, 2 << 20).unwrap())
            .collect();
        drop(bufs);
        assert_eq!(p.kept_bytes(), 4 << 20, "two 2 MiB blocks fit 5 MiB");
        let more: Vec<_> = (0..5)
            .map(|_| PooledBuffer::new(p, 1 << 20).unwrap())
            .collect();
        drop(more);
        assert_eq!(p.lock().len(), 3);
        drop(PooledBuffer::new(p, 6 << 20).unwrap());
        assert!(p.kept_bytes() <= 5 << 20);
        let kept = p.kept_bytes();
        assert_eq!(kept, 3 << 20);
        assert_eq!(p.release(), kept);
        assert_eq!(p.kept_bytes(), 0);
    }

    #[test]
    fn payload_buffers_are_recycled_within_their_limits() {
        // The stash is shared by the whole process; sizes unlikely to be asked for
        // elsewhere keep other tests' buffers out of the way.
        let room = SPARE_PAYLOAD_FROM * 3 + 7;
        let mut v = payload_buffer(room);
        v.extend_from_slice(&[5; 100]);
        let at = v.as_ptr();
        recycle_payload(v);
        let w = payload_buffer(room - 1);
        assert_eq!(w.as_ptr(), at);
        assert!(w.is_empty() && w.capacity() >= room);
        recycle_payload(w);
        let small = payload_buffer(room / 2 - 1);
        assert_ne!(
            small.as_ptr(),
            at,
            "a buffer over twice the request is not handed out"
        );
        recycle_payload(Vec::with_capacity(SPARE_PAYLOAD_FROM - 1));
        recycle_payload(Vec::with_capacity(SPARE_PAYLOAD_BYTES + 1));
        assert!(kept_bytes() <= POOL_BYTES + SPARE_PAYLOAD_BYTES);
        assert!(spare_payloads()
            .iter()
            .all(|v| v.capacity() >= SPARE_PAYLOAD_FROM));
    }

    #[test]
    fn buffers_are_page_aligned_and_refuse_impossible_sizes() {
        let p = pool(64 << 20, 4);
        for len in [1, 4095, 4096, 4097, 3 << 20] {
            let b = PooledBuffer::new(p, len).unwrap();
            assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
            fill(&b, 1);
        }
        for len in [usize::MAX, usize::MAX / 2 + 1] {
            match PooledBuffer::new(p, len) {
                Err(Error::OutOfMemory(_)) => {}
                Err(other) => panic!("{len}: {other}"),
                Ok(_) => panic!("{len} bytes allocated"),
            }
        }
    }
}
