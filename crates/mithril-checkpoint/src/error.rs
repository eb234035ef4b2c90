//! The error type of the checkpoint crate.

use std::path::PathBuf;

/// Everything that can go wrong while encoding, decoding, reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored bytes fail a checksum or decode to something impossible.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The file or index does not follow the container format.
    #[error("format error: {0}")]
    Format(String),
    /// The caller asked for something that cannot be done (bad dtype, shape, option).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A named tensor is not in the file.
    #[error("no tensor named {0:?} in the file")]
    MissingTensor(String),
    /// The progress callback asked to stop (for example on Ctrl-C).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// An operating-system error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Prefix the message with where the problem was found (file, tensor, chunk).
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            Error::Corrupt(m) => Error::Corrupt(format!("{prefix}: {m}")),
            Error::Format(m) => Error::Format(format!("{prefix}: {m}")),
            Error::Invalid(m) => Error::Invalid(format!("{prefix}: {m}")),
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

pub(crate) fn format_err(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}
