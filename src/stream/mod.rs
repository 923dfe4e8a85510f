//! Streaming: files of texts (or query/passage pairs) through the engine and back to a file, in
//! input order, with bounded memory. `ember encode`, `ember rerank` and `ember bench` are thin
//! layers of argument parsing and reporting over this module.
//!
//! - [`input`]: lines, JSONL, shards of a file.
//! - [`pipeline`]: reader, tokenization and packing, one worker per device, the ordered writer.
//! - [`output`]: the partial file, its journal and `--resume`.
//! - [`job`]: a whole run as a value (`ember encode`, Python's `ember.encode_file`): options
//!   checked, fingerprint, shard, resume, and how it ended.

pub mod input;
pub mod job;
pub mod output;
pub mod pipeline;

pub use job::{EncodeJob, End, Kept, Outcome, RunOptions, Started};
pub use pipeline::{EmbedEngine, Engine, Failure, Plan, RerankEngine, Stats};
