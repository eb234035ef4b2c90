//! Whether the reader's parallel loops may hand work to rayon, or must keep it on the
//! calling thread.
//!
//! A caller that wants one thread could install a one-thread rayon pool, but then every
//! chunk is decoded on that pool's thread, not the caller's: what the caller just touched
//! sits in another core's cache, and each call waits on a hand-over. Inside
//! [`on_calling_thread`], [`crate::Reader`] decodes chunk after chunk on the thread that
//! called.

use std::cell::Cell;

std::thread_local! {
    static CALLING_THREAD_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the reader's loops done in order on the calling thread.
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

#[cfg(test)]
mod tests {
    use super::*;

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
