//! Whether the reader's and writer's parallel loops may hand work to rayon, or must keep
//! it on the calling thread.
//!
//! A caller that wants one thread could install a one-thread rayon pool, but then every
//! chunk is coded on that pool's thread, not the caller's: what the caller just touched
//! sits in another core's cache, and each call waits on a hand-over. Inside
//! [`on_calling_thread`], [`crate::Reader`] decodes and the writer encodes chunk after
//! chunk on the thread that called.

use rayon::prelude::*;
use std::cell::Cell;

std::thread_local! {
    static CALLING_THREAD_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the reader's and writer's loops done in order on the calling thread.
pub fn on_calling_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALLING_THREAD_ONLY.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CALLING_THREAD_ONLY.with(|c| c.replace(true)));
    f()
}

/// Whether the current call is inside [`on_calling_thread`].
pub fn calling_thread_only() -> bool {
    CALLING_THREAD_ONLY.with(Cell::get)
}

/// `f` on every item, stopping at the first error: in order on the calling thread inside
/// [`on_calling_thread`] or for a single item (handing one item to a pool and waiting
/// costs more than a small tensor's work), else on the current rayon pool.
pub fn try_for_each<T: Send, E: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<(), E> + Sync + Send,
) -> Result<(), E> {
    if items.len() <= 1 || calling_thread_only() {
        items.into_iter().try_for_each(f)
    } else {
        items.into_par_iter().try_for_each(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inside `on_calling_thread` every item runs on the calling thread, in order, and
    /// the first error ends the loop; outside it the same items give the same result.
    #[test]
    fn try_for_each_keeps_to_the_calling_thread_inside() {
        let caller = std::thread::current().id();
        let seen = std::sync::Mutex::new(Vec::new());
        let run = |i: usize| {
            seen.lock().unwrap().push((i, std::thread::current().id()));
            if i == 5 {
                Err(i)
            } else {
                Ok(())
            }
        };
        assert_eq!(
            on_calling_thread(|| try_for_each((0..8).collect(), run)),
            Err(5)
        );
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert!(seen.iter().all(|s| s.1 == caller));
        assert_eq!(
            try_for_each((0..8).collect(), |i| if i == 5 { Err(i) } else { Ok(()) }),
            Err(5)
        );
        assert_eq!(try_for_each(Vec::<usize>::new(), |_| Err(0)), Ok(()));
    }

    #[test]
    fn the_flag_holds_inside_and_is_restored_after_a_panic() {
        assert!(!calling_thread_only());
        assert!(on_calling_thread(calling_thread_only));
        assert!(on_calling_thread(|| on_calling_thread(calling_thread_only)));
        let caught = std::panic::catch_unwind(|| on_calling_thread(|| panic!("inside")));
        assert!(caught.is_err());
        assert!(!calling_thread_only());
    }
}
