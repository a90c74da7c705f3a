use std::path::{Path, PathBuf};

/// What can go wrong building, loading or running a model. Every message names
/// the file (a `config.json`, a checkpoint) or the module it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration that cannot be read, lacks a field, or contradicts itself.
    #[error("{}: {message}", origin.display())]
    Config {
        /// The config's file, or what it is (`config of \`gpt2\``).
        origin: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A checkpoint that belongs to another model, or whose tensors contradict the config.
    #[error("{}: {message}", origin.display())]
    Checkpoint {
        /// The checkpoint's file.
        origin: PathBuf,
        /// What is wrong, naming the tensors.
        message: String,
    },
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
    /// An [`Error::Config`] about `origin`.
    pub fn config(origin: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    /// An [`Error::Checkpoint`] about `origin`.
    pub fn checkpoint(origin: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            origin: origin.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// A result whose error is this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
