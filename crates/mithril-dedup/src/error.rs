//! Errors of the dedup crate; the binding maps each variant onto a `mithril.MithrilError` subclass.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// An option that cannot be honoured (zero n-gram, bands × rows larger than `num_perm`, ...).
    #[error("{0}")]
    Invalid(String),
    /// Input data that does not follow its declared layout (Arrow offsets out of range, ...).
    #[error("{0}")]
    Format(String),
    /// Memory for an index or set could not be reserved.
    #[error("{0}")]
    OutOfMemory(String),
}

pub type Result<T> = std::result::Result<T, Error>;
