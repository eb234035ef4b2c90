//! Per-thread buffers kept from one chunk to the next: a fresh buffer of a chunk's size is a
//! fresh mapping whose page faults cost more than the work done in it.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Work on more elements than this allocates its buffers for the call and drops them, so
/// that no thread holds on to a huge one; callers check it before [`with_buffer`].
pub(crate) const KEEP_ELEMENTS: usize = 4 << 20;

/// Run `f` on `len` elements of the thread's buffer in `cell`, grown as needed. The contents
/// are unspecified: `f` must write every element it reads. A buffer already in use further
/// up this thread's stack leaves `f` a fresh zeroed one.
pub(crate) fn with_buffer<T: Copy + Default + 'static, R>(
    cell: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    cell.with(|c| match c.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![T::default(); len]),
    })
}
