//! A content-addressed artifact store for compile caches, with no Python in it.
//!
//! Blobs are named by the blake3 hash of their content and verified on every read: a blob
//! whose content does not match its name is moved to quarantine and reported as a miss, never
//! returned. An action map names, for a cache key, the blobs that make up its result. Writes
//! are atomic (temporary file, fsync, rename); a size cap evicts least-recently-used blobs.
//! See [`store::Store`] for the on-disk layout.

pub mod error;
pub mod store;

pub use error::{Error, Result};
pub use store::{Action, GcReport, Stats, Store, VerifyReport};
