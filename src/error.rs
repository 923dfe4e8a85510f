//! One error type for the whole crate. Every variant names what is at fault: the file, the tensor,
//! the config field or the input line, so that a user can fix the input without reading the code.

use std::path::PathBuf;

/// Everything that can go wrong in ember, as a value.
///
/// Non-exhaustive: a new kind of failure is a new variant, and callers that match on the kind
/// keep compiling (they need a `_` arm for the kinds they pass on as a message).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// A JSON file of the model folder (config.json, tokenizer_config.json, the
    /// sentence-transformers files) is not valid JSON.
    #[error("{path}: invalid JSON: {source}")]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parser's message, with the line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration field is missing, of the wrong type, or a value ember does not support.
    #[error("{path}: field `{field}`: {message}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The field at fault.
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// A weights file as a whole is malformed (its safetensors header, its length).
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },

    /// One tensor of a weights file has the wrong shape, dtype or extent.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name in the file.
        tensor: String,
        /// What is wrong with it.
        message: String,
    },

    #[error(
        "model folder {dir}: tensor `{tensor}` not found (also looked for it under the prefixes {prefixes})"
    )]
    /// A tensor the model needs is in none of the folder's weights files.
    MissingTensor {
        /// The model folder.
        dir: PathBuf,
        /// The tensor's name without a prefix.
        tensor: String,
        /// The prefixes tried, as a list for the message.
        prefixes: String,
    },

    /// tokenizer.json could not be loaded, or it failed on a text.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// The tokenizers library's message.
        message: String,
    },

    /// A text, pair or input line that cannot be encoded.
    #[error("input {location}: {message}")]
    Input {
        /// Where the input is: `text 3`, `pair 0`, `line 17 of corpus.txt`.
        location: String,
        /// What is wrong with it.
        message: String,
    },

    /// An option the caller set is out of range or contradicts the model.
    #[error("invalid option {option}: {message}")]
    Option {
        /// The option, as the caller named it (`max_length`, `--batch-tokens`).
        option: String,
        /// What is wrong with its value.
        message: String,
    },

    /// A device could not be opened or used (no driver, no such GPU, an unsupported one).
    #[error("device {device}: {message}")]
    Device {
        /// The device, as `cpu` or `cuda:N`.
        device: String,
        /// What failed.
        message: String,
    },

    /// An activation buffer could not be allocated. The encoder answers it by halving its
    /// batches and lowering its token budget; it reaches the caller only when a batch of one
    /// sequence does not fit.
    #[error("device {device}, op {op}: out of memory: {message}")]
    OutOfMemory {
        /// The device, as `cpu` or `cuda:N`.
        device: String,
        /// The operation whose buffer did not fit.
        op: &'static str,
        /// The allocation's size and what the device said.
        message: String,
    },

    /// `ember serve` could not listen, or its runtime failed.
    #[error("server {address}: {message}")]
    Server {
        /// The address it was asked to listen on.
        address: String,
        /// What failed.
        message: String,
    },

    /// A backend refused an operation's arguments (shapes, ids past a table) or failed in it.
    #[error("backend {backend}, op {op}: {message}")]
    Backend {
        /// The backend's name (`cpu`, `cuda`).
        backend: &'static str,
        /// The operation (`linear`, `attention`, ...).
        op: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// ember's result type: [`Error`] unless another error type is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Config`] about `field` of the file `path`.
    pub fn config(path: impl Into<PathBuf>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An [`Error::Input`] about the input at `location`.
    pub fn input(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input {
            location: location.into(),
            message: message.into(),
        }
    }
}
