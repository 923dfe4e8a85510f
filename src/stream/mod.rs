//! Streaming: files of texts (or query/passage pairs) through the engine and back to a file, in
//! input order, with bounded memory. `ember encode`, `ember rerank` and `ember bench` are thin
//! layers of argument parsing and reporting over this module.
//!
//! - [`input`]: lines, JSONL, shards of a file.
//! - [`pipeline`]: reader, tokenization and packing, one worker per device, the ordered writer.
//! - [`output`]: the partial file, its journal and `--resume`.

pub mod input;
pub mod output;
pub mod pipeline;

pub use pipeline::{EmbedEngine, Engine, Failure, Plan, RerankEngine, Stats};
