//! Tokenization with the `tokenizers` crate, under ember's own truncation rules:
//!
//! - a single text keeps its special tokens and loses content from the right to fit `max_length`;
//! - a (query, passage) pair cuts the passage first; only when the query alone leaves no room
//!   for a single passage token are both cut, longest first (as transformers' `longest_first`);
//! - a query instruction is a plain prefix of the text.
//!
//! Padding and truncation baked into a tokenizer.json are switched off: ember packs sequences,
//! it never pads.

use std::path::{Path, PathBuf};

use tokenizers::{
    truncate_encodings, Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::batch::Sequence;
use crate::error::{Error, Result};

/// A model's `tokenizer.json`, with ember's truncation: texts and pairs are cut to a max length
/// that counts the special tokens, passages before queries.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    vocab_size: usize,
    /// When the model has a single token type (XLM-R), every type id is 0.
    single_token_type: bool,
    single_specials: usize,
    pair_specials: usize,
}

impl TextTokenizer {
    /// Loads `tokenizer.json` for a model with `vocab_size` word embeddings and
    /// `type_vocab_size` token types.
    pub fn load(dir: &Path, vocab_size: usize, type_vocab_size: usize) -> Result<TextTokenizer> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::Tokenizer {
                path,
                message: "not found (ember needs the fast tokenizer's tokenizer.json)".into(),
            });
        }
        let mut inner = Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let added = |pair| inner.get_post_processor().map_or(0, |p| p.added_tokens(pair));
        let (single_specials, pair_specials) = (added(false), added(true));
        Ok(TextTokenizer {
            inner,
            path,
            vocab_size,
            single_token_type: type_vocab_size == 1,
            single_specials,
            pair_specials,
        })
    }

    /// The `tokenizers` tokenizer itself (padding and truncation off), for callers that show
    /// tokens or decode ids (`ember serve`'s /tokenize and /decode).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The smallest max length that leaves room for one content token of a pair.
    pub fn min_max_length(&self) -> usize {
        self.pair_specials + 2
    }

    /// Tokenizes one text, truncated to `max_length` tokens including the special tokens.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Sequence> {
        self.check_max_length(max_length)?;
        let encoding = self.raw(text, max_length - self.single_specials)?;
        let truncated = encoding.len() + self.single_specials > max_length;
        let params = truncation(
            max_length - self.single_specials,
            TruncationStrategy::LongestFirst,
        );
        let (encoding, _) = truncate_encodings(encoding, None, &params).map_err(|e| self.fault(e))?;
        self.finish(encoding, None, truncated)
    }

    /// Tokenizes a (query, passage) pair for a cross-encoder, truncated to `max_length` tokens.
    pub fn encode_pair(&self, query: &str, passage: &str, max_length: usize) -> Result<Sequence> {
        self.check_max_length(max_length)?;
        let budget = max_length - self.pair_specials;
        let (query, passage) = (self.raw(query, budget)?, self.raw(passage, budget)?);
        let truncated = query.len() + passage.len() > budget;
        let strategy = if query.len() < budget {
            TruncationStrategy::OnlySecond
        } else {
            TruncationStrategy::LongestFirst
        };
        let (query, passage) = truncate_encodings(query, Some(passage), &truncation(budget, strategy))
            .map_err(|e| self.fault(e))?;
        self.finish(query, passage, truncated)
    }

    /// An error unless `max_length` leaves room for content next to the special tokens.
    pub fn check_max_length(&self, max_length: usize) -> Result<()> {
        if max_length < self.min_max_length() {
            return Err(Error::Option {
                option: "max_length".into(),
                message: format!(
                    "{max_length} leaves no room for content next to this tokenizer's special tokens (at least {})",
                    self.min_max_length()
                ),
            });
        }
        Ok(())
    }

    /// Content tokens only: no special tokens, no truncation yet. Only the first `needed`
    /// tokens can survive truncation, so a long text is cut before tokenizing (a 100 MB line
    /// costs no more than a page): the cut keeps [`CUT_BYTES_PER_TOKEN`] bytes per needed token,
    /// backs off to a whitespace so no word is split, and is used only when the prefix already
    /// yields more than `needed` tokens; otherwise it grows until it does, the text ends, or it
    /// reaches [`MAX_CUT_BYTES`]. The tokens kept are then those of the whole text, except for a
    /// text whose first megabyte holds fewer tokens than needed (a megabyte of whitespace, or
    /// one megabyte-long word, which WordPiece maps to a single [UNK] however long it is).
    fn raw(&self, text: &str, needed: usize) -> Result<Encoding> {
        let mut limit = needed.saturating_mul(CUT_BYTES_PER_TOKEN).max(MIN_CUT_BYTES);
        while limit < text.len() {
            let prefix = &text[..cut_point(text, limit)];
            let encoding = self.inner.encode_fast(prefix, false).map_err(|e| self.fault(e))?;
            if encoding.len() > needed || limit >= MAX_CUT_BYTES {
                return Ok(encoding);
            }
            limit = limit.saturating_mul(4).min(MAX_CUT_BYTES);
        }
        self.inner.encode_fast(text, false).map_err(|e| self.fault(e))
    }

    fn finish(&self, first: Encoding, second: Option<Encoding>, truncated: bool) -> Result<Sequence> {
        let encoding = self
            .inner
            .post_process(first, second, true)
            .map_err(|e| self.fault(e))?;
        let token_ids = encoding.get_ids().to_vec();
        if let Some(&bad) = token_ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Tokenizer {
                path: self.path.clone(),
                message: format!(
                    "produced token id {bad}, but the model has only {} word embeddings",
                    self.vocab_size
                ),
            });
        }
        let type_ids = if self.single_token_type {
            vec![0; token_ids.len()]
        } else {
            encoding.get_type_ids().to_vec()
        };
        Ok(Sequence {
            token_ids,
            type_ids,
            truncated,
        })
    }

    fn fault(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Bytes of text kept per token that can survive truncation before tokenizing; no tokenizer
/// ember runs averages more than a few bytes per token on real text.
const CUT_BYTES_PER_TOKEN: usize = 64;
/// The shortest cut: below this, cutting saves nothing worth the risk.
const MIN_CUT_BYTES: usize = 16 * 1024;
/// The longest prefix ever tokenized: bounds the time and memory one text can take.
const MAX_CUT_BYTES: usize = 1024 * 1024;
/// How far back from the limit a cut looks for whitespace.
const CUT_WHITESPACE_WINDOW: usize = 1024;

/// A char boundary at or before `limit`, just after a whitespace char when there is one in the
/// last [`CUT_WHITESPACE_WINDOW`] bytes (pre-tokenizers split there, so no word is cut in two).
fn cut_point(text: &str, limit: usize) -> usize {
    let mut end = limit.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let window_start = end.saturating_sub(CUT_WHITESPACE_WINDOW);
    text[..end]
        .char_indices()
        .rev()
        .take_while(|&(i, _)| i >= window_start)
        .find(|&(_, c)| c.is_whitespace())
        .map_or(end, |(i, c)| i + c.len_utf8())
}

fn truncation(max_length: usize, strategy: TruncationStrategy) -> TruncationParams {
    TruncationParams {
        direction: TruncationDirection::Right,
        max_length,
        strategy,
        stride: 0,
    }
}
