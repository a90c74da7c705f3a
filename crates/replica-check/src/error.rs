use std::path::{Path, PathBuf};

use crate::weight_map::LoadReport;

/// Everything that can go wrong reading reference data or loading weights.
/// Each message names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that cannot be read, is not valid safetensors, or is not a valid bundle.
    #[error("{}: {}", crate::printable(&path.display().to_string()), crate::printable(message))]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, on one line.
        message: String,
    },
    /// Weights that do not fit the model: every problem, listed together.
    #[error("{0}")]
    Load(Box<LoadReport>),
    /// An error from candle while computing.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// A file error: `path: message`.
    pub fn file(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::File {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// A result whose error is [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
