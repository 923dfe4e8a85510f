//! The embedding API: texts in, one vector per text out, with the model's own defaults for
//! pooling, normalization and max length unless the caller overrides them.

use std::path::Path;

use rayon::prelude::*;

use crate::backend::{HostMatrix, Pooling};
use crate::batch::Sequence;
use crate::encoder::{Device, Dtype, Encoder};
use crate::error::{Error, Result};
use crate::tokenize::TextTokenizer;

/// The instruction bge v1.5 English models put before retrieval queries.
pub const BGE_QUERY_INSTRUCTION_EN: &str = "Represent this sentence for searching relevant passages: ";
/// The instruction bge Chinese models put before retrieval queries.
pub const BGE_QUERY_INSTRUCTION_ZH: &str = "为这个句子生成表示以用于检索相关文章：";

/// Overrides of the model's own configuration; `None` keeps the model's default.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// How token rows become the text's vector; the model's default comes from its
    /// sentence-transformers files (CLS for bge, mean for MiniLM).
    pub pooling: Option<Pooling>,
    /// Whether each vector is scaled to unit length, so that a dot product is a cosine.
    pub normalize: Option<bool>,
    /// The most tokens of a text, special tokens included; longer texts are cut.
    pub max_length: Option<usize>,
    /// Put before each text by [`Embedder::encode_queries`] (not by [`Embedder::encode`]).
    pub query_instruction: Option<String>,
    /// Where the forward pass runs.
    pub device: Device,
    /// The most tokens in one forward pass; `None`: the device's own default
    /// ([`Encoder::default_batch_tokens`]).
    pub batch_tokens: Option<usize>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            pooling: None,
            normalize: None,
            max_length: None,
            query_instruction: None,
            device: Device::Cpu,
            batch_tokens: None,
        }
    }
}

/// Embeddings, one row per text: `[texts, dim]`, row-major.
pub type Embeddings = HostMatrix;

/// A text embedder: a BERT-family encoder with its tokenizer, pooling and normalization, loaded
/// from a model folder (config.json, model.safetensors, tokenizer.json and, when present, the
/// sentence-transformers files that set the defaults).
pub struct Embedder {
    encoder: Encoder,
    tokenizer: TextTokenizer,
    pooling: Pooling,
    normalize: bool,
    max_length: usize,
    query_instruction: Option<String>,
    batch_tokens: usize,
}

impl Embedder {
    /// Loads the model folder `dir` with f32 weights; `options` override the model's defaults.
    ///
    /// ```no_run
    /// use ember::{Embedder, EmbedderOptions};
    ///
    /// let embedder = Embedder::load(".cache/models/all-MiniLM-L6-v2", EmbedderOptions::default())?;
    /// let vectors = embedder.encode(&["A first text.", "A second one."])?;
    /// assert_eq!((vectors.rows, vectors.cols), (2, embedder.dim()));
    /// # Ok::<(), ember::Error>(())
    /// ```
    ///
    /// # Errors
    /// A missing or malformed file (named in the error), a model ember cannot run, or an option
    /// the model cannot honour (a `max_length` past its position table).
    pub fn load(dir: impl AsRef<Path>, options: EmbedderOptions) -> Result<Embedder> {
        Self::load_with_dtype(dir, options, Dtype::F32)
    }

    /// [`Embedder::load`] with the linear layers in `dtype` (see [`Encoder::load_with_dtype`]).
    pub fn load_with_dtype(
        dir: impl AsRef<Path>,
        options: EmbedderOptions,
        dtype: Dtype,
    ) -> Result<Embedder> {
        let dir = dir.as_ref();
        let encoder = Encoder::load_with_dtype(dir, options.device, dtype)?;
        let config = encoder.config();
        let tokenizer = TextTokenizer::load(dir, config.vocab_size, config.type_vocab_size)?;
        let max_length = resolve_max_length(&encoder, &tokenizer, options.max_length)?;
        Ok(Embedder {
            pooling: options.pooling.unwrap_or(config.defaults.pooling),
            normalize: options.normalize.unwrap_or(config.defaults.normalize),
            max_length,
            query_instruction: options.query_instruction,
            batch_tokens: options
                .batch_tokens
                .unwrap_or_else(|| encoder.default_batch_tokens()),
            encoder,
            tokenizer,
        })
    }

    /// The most tokens in one forward pass (the option, or the device's default).
    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
    }

    /// Embeds each text as it is: one row per text, in their order.
    ///
    /// ```no_run
    /// # let embedder = ember::Embedder::load("model", Default::default())?;
    /// let vectors = embedder.encode(&["Paris is the capital of France."])?;
    /// println!("{:?}", &vectors.row(0)[..4]);
    /// # Ok::<(), ember::Error>(())
    /// ```
    ///
    /// # Errors
    /// A text the tokenizer rejects (the error names its index), or a device failure.
    pub fn encode<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Embeddings> {
        self.embed_sequences(&self.tokenize(texts, false)?)
    }

    /// Embeds retrieval queries: each text gets the query instruction in front, when one is set.
    pub fn encode_queries<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Embeddings> {
        self.embed_sequences(&self.tokenize(texts, true)?)
    }

    /// Tokenizes texts on all cores, with the query instruction in front when `queries` is set.
    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S], queries: bool) -> Result<Vec<Sequence>> {
        let prefix = match (queries, &self.query_instruction) {
            (true, Some(instruction)) => instruction.as_str(),
            _ => "",
        };
        texts
            .par_iter()
            .enumerate()
            .map(|(i, text)| {
                let text = text.as_ref();
                let result = if prefix.is_empty() {
                    self.tokenizer.encode(text, self.max_length)
                } else {
                    self.tokenizer.encode(&format!("{prefix}{text}"), self.max_length)
                };
                result.map_err(|e| Error::input(format!("text {i}"), e.to_string()))
            })
            .collect()
    }

    /// Embeds tokenized sequences, one row each, in their order.
    pub fn embed_sequences(&self, sequences: &[Sequence]) -> Result<Embeddings> {
        let (pooling, normalize) = (self.pooling, self.normalize);
        let mut out = self.encoder.run_pipelined(sequences, self.batch_tokens, |e, b| {
            e.embed_start(b, pooling, normalize)
        })?;
        out.cols = self.dim();
        Ok(out)
    }

    /// The length of each embedding (the model's hidden size).
    pub fn dim(&self) -> usize {
        self.encoder.config().hidden_size
    }

    /// The pooling in effect (the option, or the model's default).
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Whether embeddings come out with unit length.
    pub fn normalize(&self) -> bool {
        self.normalize
    }

    /// The most tokens of a text, special tokens included (the option, or the model's default).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The engine underneath, for callers that pack and run batches themselves.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// The model's tokenizer, with the special tokens and length limits this embedder uses.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }
}

/// The caller's max length, or the model's default; either must fit the position table and
/// leave room next to the special tokens.
pub(crate) fn resolve_max_length(
    encoder: &Encoder,
    tokenizer: &TextTokenizer,
    requested: Option<usize>,
) -> Result<usize> {
    let config = encoder.config();
    let max_length = requested.unwrap_or(config.defaults.max_length);
    let limit = config.max_supported_length();
    if max_length > limit {
        return Err(Error::Option {
            option: "max_length".into(),
            message: format!("{max_length} is more than this model's {limit} positions"),
        });
    }
    tokenizer.check_max_length(max_length)?;
    Ok(max_length)
}
