//! Errors of the cache crate; the binding maps each variant onto a `mithril.MithrilError`
//! subclass or a standard OS error.

use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// An argument that cannot be honoured (a malformed blob name, an empty key, ...).
    #[error("{0}")]
    Invalid(String),
    /// A store whose layout is not one this version understands.
    #[error("{0}")]
    Format(String),
    /// An operating-system error on a path of the store.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
