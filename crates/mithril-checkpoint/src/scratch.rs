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

thread_local! {
    /// This thread's zstd compression context, with the level it was last set to.
    static ZSTD: RefCell<Option<(zstd::bulk::Compressor<'static>, i32)>> = const { RefCell::new(None) };
}

/// zstd-compress `data` at `level` with the thread's context. A fresh context per call
/// costs more than compressing a small plane: it allocates and clears its tables.
pub(crate) fn zstd_compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return zstd::bulk::compress(data, level);
        };
        match slot.as_mut() {
            Some((c, at)) if *at == level => c.compress(data),
            Some((c, at)) => {
                c.set_compression_level(level)?;
                *at = level;
                c.compress(data)
            }
            None => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                let out = c.compress(data);
                *slot = Some((c, level));
                out
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_zstd_context_gives_what_a_fresh_one_gives_at_every_level_change() {
        let text: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 & (i as u8 | 0x0f))
            .collect();
        // Levels out of order and repeated, so that the context is reused, switched up and
        // switched down; sizes from empty to several blocks.
        for (level, len) in [
            (3, 200_000),
            (1, 70_000),
            (1, 0),
            (19, 5_000),
            (3, 1),
            (-5, 90_000),
        ] {
            let data = &text[..len];
            let kept = zstd_compress(data, level).unwrap();
            let fresh = zstd::bulk::compress(data, level).unwrap();
            assert!(kept == fresh, "level {level}, {len} bytes");
            assert_eq!(zstd::bulk::decompress(&kept, len).unwrap(), data);
        }
    }
}
