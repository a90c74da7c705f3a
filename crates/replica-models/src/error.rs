use std::path::{Path, PathBuf};

/// What can go wrong building, loading or running a model. Every message names
/// the file (a `config.json`, a checkpoint) or the module it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration that cannot be read, lacks a field, or contradicts itself.
    #[error("{}: {message}", origin.display())]
    Config { origin: PathBuf, message: String },
    /// A checkpoint that belongs to another model, or whose tensors contradict the config.
    #[error("{}: {message}", origin.display())]
    Checkpoint { origin: PathBuf, message: String },
    /// Reading a bundle or checkpoint, or a strict load (every missing, unused and
    /// misshapen tensor, listed together).
    #[error(transparent)]
    Check(#[from] replica_check::Error),
    /// A forward pass refused its input (token id out of range, sequence too long, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// No model of that name in the registry.
    #[error("{0}")]
    UnknownModel(String),
    /// The tokenizer could not be read or refused a text.
    #[error("{0}")]
    Tokenizer(String),
    /// A model's files could not be found or fetched.
    #[error("{0}")]
    Missing(String),
}

impl Error {
    pub fn config(origin: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn checkpoint(origin: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            origin: origin.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
