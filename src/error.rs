//! One error type for the whole crate. Every variant names what is at fault: the file, the tensor,
//! the config field or the input line, so that a user can fix the input without reading the code.

use std::path::PathBuf;

/// Everything that can go wrong in ember, as a value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },

    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },

    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },

    #[error(
        "model folder {dir}: tensor `{tensor}` not found (also looked for it under the prefixes {prefixes})"
    )]
    MissingTensor {
        dir: PathBuf,
        tensor: String,
        prefixes: String,
    },

    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("input {location}: {message}")]
    Input { location: String, message: String },

    #[error("invalid option {option}: {message}")]
    Option { option: String, message: String },

    #[error("device {device}: {message}")]
    Device { device: String, message: String },

    /// An activation buffer could not be allocated. The encoder answers it by halving its
    /// batches and lowering its token budget; it reaches the caller only when a batch of one
    /// sequence does not fit.
    #[error("device {device}, op {op}: out of memory: {message}")]
    OutOfMemory {
        device: String,
        op: &'static str,
        message: String,
    },

    /// `ember serve` could not listen, or its runtime failed.
    #[error("server {address}: {message}")]
    Server { address: String, message: String },

    #[error("backend {backend}, op {op}: {message}")]
    Backend {
        backend: &'static str,
        op: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn input(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            location: location.into(),
            message: message.into(),
        }
    }
}
