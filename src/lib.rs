//! ember: a purpose-built inference engine for BERT-family text encoders — BAAI bge embedders,
//! sentence-transformers models such as all-MiniLM-L6-v2, and cross-encoder rerankers.
//!
//! ```text
//! text ──tokenize──▶ Sequence ──pack──▶ Batch (no padding) ──Model::forward::<Backend>──▶ hidden
//!      ──pool + normalize──▶ embeddings      or      ──classifier head──▶ scores
//! ```
//!
//! - [`Embedder`] and [`Reranker`]: the high-level API, texts in, vectors or scores out.
//! - [`Encoder`]: the low-level engine, packed batches of token ids in, hidden states out.
//! - [`backend::Backend`]: the dozen BERT-level operations a device implements.

pub mod backend;
pub mod batch;
pub mod config;
pub mod dims;
pub mod embedder;
pub mod encoder;
pub mod error;
pub mod hub;
pub mod model;
pub mod npy;
pub mod quantize;
pub mod reranker;
#[cfg(feature = "server")]
pub mod server;
pub mod stream;
pub mod tokenize;
pub mod weights;

pub use backend::{HostMatrix, Pooling};
pub use batch::{Batch, Sequence};
pub use embedder::{Embedder, EmbedderOptions, Embeddings};
pub use encoder::{Device, Dtype, Encoder};
pub use error::{Error, Result};
pub use reranker::{Reranker, RerankerOptions};

/// The README's library example, compiled as a doctest so that it cannot go stale.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
