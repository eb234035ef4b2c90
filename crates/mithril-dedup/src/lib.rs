//! Near-duplicate detection for text corpora, with no Python in it.
//!
//! The pipeline is: [`shingle`] (normalise, tokenise, hash n-grams) → [`minhash`] (signatures)
//! → [`lsh`] (band keys, candidate buckets, parameter choice) → [`verify`] (exact Jaccard on
//! shingle sets) → [`cluster`] (union-find, one kept document per cluster). [`bloom`] is the
//! streaming LSHBloom alternative to band tables. [`texts`] adapts Arrow string columns and
//! plain string lists to one read-only view.

mod ascii;
pub mod bloom;
pub mod cluster;
pub mod error;
pub mod graph;
pub mod lsh;
pub mod minhash;
pub mod pipeline;
pub mod shingle;
pub mod texts;
pub mod verify;

pub use error::{Error, Result};
