//! Thread pools by size, built once: `threads=None` uses rayon's global pool (all cores).

use mithril_checkpoint::parallel::on_calling_thread;
use pyo3::exceptions::PyValueError;
use pyo3::PyResult;
use rayon::ThreadPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

static POOLS: OnceLock<Mutex<HashMap<usize, Arc<ThreadPool>>>> = OnceLock::new();

/// Run `f` on the calling thread when it has no parallel work (`!parallel`) or one thread
/// is asked for, else as [`run`] does; `threads` is validated either way. One thread is the
/// calling thread itself (the checkpoint reader's and writer's loops honour
/// [`on_calling_thread`]), which finds in its cache what Python just touched and waits on
/// no hand-over. (Encoders once stayed on a pool thread because glibc trims the main
/// thread's freed heap, so that their chunk buffers faulted in afresh on every call; those
/// buffers are now recycled, see `mithril_checkpoint::buffer_pool`.)
pub fn run_on_caller_if_one<T: Send>(
    threads: Option<usize>,
    parallel: bool,
    f: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    if parallel && threads != Some(1) {
        return run(threads, f);
    }
    check(threads)?;
    Ok(on_calling_thread(f))
}

fn check(threads: Option<usize>) -> PyResult<()> {
    if threads == Some(0) {
        return Err(PyValueError::new_err("threads must be at least 1"));
    }
    Ok(())
}

/// Run `f` on `threads` threads (all cores when `None`).
pub fn run<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    check(threads)?;
    let Some(n) = threads else {
        return Ok(f());
    };
    let pool = {
        let mut pools = POOLS
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| PyValueError::new_err("thread pool registry poisoned"))?;
        match pools.get(&n) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .thread_name(|i| format!("mithril-{i}"))
                        .build()
                        .map_err(|e| PyValueError::new_err(format!("thread pool: {e}")))?,
                );
                pools.insert(n, p.clone());
                p
            }
        }
    };
    Ok(pool.install(f))
}
