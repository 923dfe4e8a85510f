//! The cross-encoder API: (query, passage) pairs in, one relevance score per pair out. Scores are
//! the classifier's raw logit, as sentence-transformers' CrossEncoder and FlagEmbedding return
//! them; with `sigmoid` they are mapped to (0, 1) as FlagEmbedding's `normalize=True` does.

use std::path::Path;

use rayon::prelude::*;

use crate::backend::HostMatrix;
use crate::batch::Sequence;
use crate::config::Head;
use crate::embedder::resolve_max_length;
use crate::encoder::{Device, Dtype, Encoder};
use crate::error::{Error, Result};
use crate::tokenize::TextTokenizer;

/// Overrides of the model's own configuration, and where it runs.
#[derive(Debug, Clone)]
pub struct RerankerOptions {
    /// `None` keeps the model's default (512, or what its files say, clipped to its positions).
    pub max_length: Option<usize>,
    /// Where the forward pass runs.
    pub device: Device,
    /// The most tokens in one forward pass; `None`: the device's own default
    /// ([`Encoder::default_batch_tokens`]).
    pub batch_tokens: Option<usize>,
}

impl Default for RerankerOptions {
    fn default() -> Self {
        RerankerOptions {
            max_length: None,
            device: Device::Cpu,
            batch_tokens: None,
        }
    }
}

/// A cross-encoder: a `*ForSequenceClassification` model that reads a query and a passage
/// together and gives the pair a relevance score.
pub struct Reranker {
    encoder: Encoder,
    tokenizer: TextTokenizer,
    max_length: usize,
    batch_tokens: usize,
}

impl Reranker {
    /// Loads the model folder `dir` with f32 weights.
    ///
    /// ```no_run
    /// use ember::{Reranker, RerankerOptions};
    ///
    /// let reranker = Reranker::load("path/to/bge-reranker-base", RerankerOptions::default())?;
    /// let scores = reranker.compute_score(&[("capital of france", "Paris is the capital of France.")], true)?;
    /// assert_eq!(scores.len(), 1);
    /// # Ok::<(), ember::Error>(())
    /// ```
    ///
    /// # Errors
    /// A missing or malformed file (named in the error), a model without a classification head,
    /// or a `max_length` past the model's position table.
    pub fn load(dir: impl AsRef<Path>, options: RerankerOptions) -> Result<Reranker> {
        Self::load_with_dtype(dir, options, Dtype::F32)
    }

    /// [`Reranker::load`] with the linear layers in `dtype` (see [`Encoder::load_with_dtype`]).
    pub fn load_with_dtype(
        dir: impl AsRef<Path>,
        options: RerankerOptions,
        dtype: Dtype,
    ) -> Result<Reranker> {
        let dir = dir.as_ref();
        let encoder = Encoder::load_with_dtype(dir, options.device, dtype)?;
        if encoder.config().head == Head::None {
            return Err(Error::config(
                dir.join("config.json"),
                "architectures",
                "a reranker needs a *ForSequenceClassification model",
            ));
        }
        let config = encoder.config();
        let tokenizer = TextTokenizer::load(dir, config.vocab_size, config.type_vocab_size)?;
        let max_length = resolve_max_length(&encoder, &tokenizer, options.max_length)?;
        Ok(Reranker {
            batch_tokens: options
                .batch_tokens
                .unwrap_or_else(|| encoder.default_batch_tokens()),
            encoder,
            tokenizer,
            max_length,
        })
    }

    /// Every label's logit for each pair: `[pairs, num_labels]`.
    pub fn logits<Q: AsRef<str> + Sync, P: AsRef<str> + Sync>(&self, pairs: &[(Q, P)]) -> Result<HostMatrix> {
        self.logits_of(&self.tokenize(pairs)?)
    }

    /// Tokenizes pairs on all cores, cutting passages first.
    pub fn tokenize<Q: AsRef<str> + Sync, P: AsRef<str> + Sync>(
        &self,
        pairs: &[(Q, P)],
    ) -> Result<Vec<Sequence>> {
        pairs
            .par_iter()
            .enumerate()
            .map(|(i, (query, passage))| {
                self.tokenizer
                    .encode_pair(query.as_ref(), passage.as_ref(), self.max_length)
                    .map_err(|e| Error::input(format!("pair {i}"), e.to_string()))
            })
            .collect()
    }

    /// Logits of tokenized pairs, one row each, in their order.
    pub fn logits_of(&self, sequences: &[Sequence]) -> Result<HostMatrix> {
        let mut out = self
            .encoder
            .run_pipelined(sequences, self.batch_tokens, Encoder::classify_start)?;
        out.cols = self.num_labels();
        Ok(out)
    }

    /// One score per pair: the logit of a single-label model, through a sigmoid when asked.
    ///
    /// ```no_run
    /// # let reranker = ember::Reranker::load("model", Default::default())?;
    /// let pairs = [("what is ember?", "An inference engine."), ("what is ember?", "A glowing coal.")];
    /// let scores = reranker.compute_score(&pairs, false)?;
    /// let best = if scores[0] >= scores[1] { 0 } else { 1 };
    /// println!("best passage: {}", pairs[best].1);
    /// # Ok::<(), ember::Error>(())
    /// ```
    ///
    /// # Errors
    /// A model with more than one label (use [`Reranker::logits`]), a pair the tokenizer
    /// rejects, or a device failure.
    pub fn compute_score<Q: AsRef<str> + Sync, P: AsRef<str> + Sync>(
        &self,
        pairs: &[(Q, P)],
        sigmoid: bool,
    ) -> Result<Vec<f32>> {
        self.scores_of(&self.tokenize(pairs)?, sigmoid)
    }

    /// [`Reranker::compute_score`] for pairs tokenized by [`Reranker::tokenize`].
    pub fn scores_of(&self, sequences: &[Sequence], sigmoid: bool) -> Result<Vec<f32>> {
        if self.num_labels() != 1 {
            return Err(Error::Option {
                option: "model".into(),
                message: format!(
                    "scores need a single-label model; this one has {} labels (use `logits`)",
                    self.num_labels()
                ),
            });
        }
        let logits = self.logits_of(sequences)?;
        Ok(logits
            .data
            .into_iter()
            .map(|x| if sigmoid { 1.0 / (1.0 + (-x).exp()) } else { x })
            .collect())
    }

    /// The classifier's outputs per pair: 1 for a reranker, more for a multi-class model.
    pub fn num_labels(&self) -> usize {
        match self.encoder.config().head {
            Head::Classifier { num_labels } => num_labels,
            Head::None => 0,
        }
    }

    /// The most tokens of a pair, special tokens included (the option, or the model's default).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The most tokens in one forward pass (the option, or the device's default).
    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
    }

    /// For callers that tokenize pairs under their own max length ([`TextTokenizer::encode_pair`]).
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The engine underneath, for callers that pack and run batches themselves.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
}
