//! The writing end of the pipeline, and what makes a run resumable.
//!
//! Rows are appended, in input order, to `OUT.partial`; every few seconds the writer flushes
//! them, fsyncs the file and then appends a record `rows lines bytes` to `OUT.journal` and
//! fsyncs that. A record therefore never claims rows that are not on disk. After a crash
//! (Ctrl-C, kill -9, machine loss) `--resume` reads the last complete record, cuts the partial
//! file back to `bytes`, skips the first `lines` lines of the input and goes on; rows are
//! deterministic per text, so the finished file is byte-identical to an uninterrupted run.
//!
//! A partial output can never be mistaken for a complete one: it has another name, and a .npy
//! partial starts with a placeholder instead of the NumPy magic (NumPy refuses to load it). The
//! real header, with the final row count, is written last, then the file is renamed into place.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::quantize::{quantize, Precision, Ranges};
use crate::{Error, Result};
use serde_json::Value;

/// Every .npy header ember writes takes this many bytes (magic and padding included), so that
/// the header can be written last without moving the rows.
const NPY_HEADER_LEN: usize = 128;
/// What a .npy partial starts with until it is complete.
const NPY_PLACEHOLDER: &[u8] = b"EMBER-PARTIAL-NPY: incomplete; finish it with `ember ... --resume`";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
/// The output file's format.
pub enum OutputFormat {
    /// A NumPy array: `[rows, values]` (embeddings) or `[rows]` (scores).
    Npy,
    /// One JSON object per row: `{"id"?, "embedding": [...]}` or `{"id"?, "score": x}`.
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
/// The element type of the output's values.
pub enum Dtype {
    /// The values as computed.
    F32,
    /// Rounded to IEEE half precision (.npy only).
    F16,
    /// Quantized as sentence-transformers' `quantize_embeddings` does (see [`crate::quantize`]):
    /// 256 buckets per dimension over a calibration range, as int8.
    Int8,
    /// The same buckets as uint8.
    Uint8,
    /// One sign bit per dimension, packed eight to a byte, offset by -128 into int8.
    Binary,
    /// One sign bit per dimension, packed eight to a byte, as uint8.
    Ubinary,
}

impl Dtype {
    /// The quantized precision, for the integer dtypes.
    pub fn precision(self) -> Option<Precision> {
        match self {
            Dtype::F32 | Dtype::F16 => None,
            Dtype::Int8 => Some(Precision::Int8),
            Dtype::Uint8 => Some(Precision::Uint8),
            Dtype::Binary => Some(Precision::Binary),
            Dtype::Ubinary => Some(Precision::Ubinary),
        }
    }
}

/// What one row is: an embedding vector, or one relevance score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RowKind {
    /// A vector of values.
    Embedding,
    /// One score.
    Score,
}

impl OutputFormat {
    /// `--output-format`, or the output's extension.
    pub fn of(path: &Path, explicit: Option<OutputFormat>) -> Result<OutputFormat> {
        if let Some(format) = explicit {
            return Ok(format);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(OutputFormat::Npy),
            Some("jsonl" | "ndjson" | "json") => Ok(OutputFormat::Jsonl),
            _ => Err(Error::Option {
                option: "output".into(),
                message: format!(
                    "{}: cannot tell the format from the extension (.npy or .jsonl); pass --output-format",
                    path.display()
                ),
            }),
        }
    }
}

/// Where a resumed run starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// Rows already in the partial file.
    pub rows: u64,
    /// Input lines (of this run's slice) that those rows came from, skipped lines included.
    pub lines: u64,
    /// Length of the partial file that holds them.
    pub bytes: u64,
}

/// An output being written: rows go to a partial file beside the target, checkpoints to its
/// journal; [`Output::finish`] renames it into place, [`Output::abandon`] keeps it for resume.
pub struct Output {
    target: PathBuf,
    partial: PathBuf,
    journal_path: PathBuf,
    file: BufWriter<File>,
    journal: File,
    format: OutputFormat,
    dtype: Dtype,
    kind: RowKind,
    /// What is written so far (committed or not).
    written: Checkpoint,
    committed: Checkpoint,
    finished: bool,
    /// Calibration ranges for int8 / uint8.
    ranges: Option<Ranges>,
}

/// `map_err` for an I/O error on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::io(path, e)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

impl Output {
    /// Opens the partial output, before any compute, so that an unwritable path fails first.
    /// With `resume`, continues an earlier run of the same job (same `fingerprint`) when its
    /// journal is there; without, refuses to overwrite an unfinished run.
    pub fn open(
        target: &Path,
        format: OutputFormat,
        dtype: Dtype,
        kind: RowKind,
        fingerprint: &str,
        resume: bool,
    ) -> Result<(Output, Checkpoint)> {
        let partial = with_suffix(target, ".partial");
        let journal_path = with_suffix(target, ".journal");
        let header_len = if format == OutputFormat::Npy {
            NPY_HEADER_LEN as u64
        } else {
            0
        };
        if journal_path.exists() && !partial.exists() && target.exists() {
            // A run that stopped between its rename and removing its journal: it is complete.
            let _ = std::fs::remove_file(&journal_path);
        }
        let recorded = match std::fs::read(&journal_path) {
            Ok(bytes) => Some(read_journal(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&journal_path, e)),
        };
        let (file, journal, start, done) = match recorded {
            // A run killed before its first record finished nothing: start over.
            Some((_, None, _)) | None => {
                let file = File::create(&partial).map_err(io(&partial))?;
                let mut file = BufWriter::with_capacity(1 << 20, file);
                if format == OutputFormat::Npy {
                    let mut placeholder = NPY_PLACEHOLDER.to_vec();
                    placeholder.resize(NPY_HEADER_LEN - 1, b' ');
                    placeholder.push(b'\n');
                    file.write_all(&placeholder).map_err(io(&partial))?;
                }
                let mut journal = File::create(&journal_path).map_err(io(&journal_path))?;
                writeln!(journal, "{fingerprint}").map_err(io(&journal_path))?;
                let start = Checkpoint {
                    bytes: header_len,
                    ..Checkpoint::default()
                };
                (file, journal, start, Checkpoint::default())
            }
            Some((recorded, Some(checkpoint), complete_len)) => {
                if !resume {
                    return Err(Error::Option {
                        option: "output".into(),
                        message: format!(
                            "{} records an unfinished run ({} rows done): pass --resume to continue it, \
                             or delete it and {} to start over",
                            journal_path.display(),
                            checkpoint.rows,
                            partial.display()
                        ),
                    });
                }
                if recorded != fingerprint {
                    return Err(Error::Option {
                        option: "resume".into(),
                        message: format!(
                            "{} was written by a different job (model, input, options or shard differ): \
                             {recorded}",
                            journal_path.display()
                        ),
                    });
                }
                let (file, journal) = reopen(&partial, &journal_path, checkpoint, complete_len)?;
                (file, journal, checkpoint, checkpoint)
            }
        };
        let output = Output {
            target: target.to_path_buf(),
            partial,
            journal_path,
            file,
            journal,
            format,
            dtype,
            kind,
            written: start,
            committed: start,
            finished: false,
            ranges: None,
        };
        Ok((output, done))
    }

    /// The calibration ranges int8 and uint8 rows are quantized with.
    pub fn set_ranges(&mut self, ranges: Ranges) {
        self.ranges = Some(ranges);
    }

    /// The partial file the rows are written to until the run finishes.
    pub fn partial(&self) -> &Path {
        &self.partial
    }

    /// Appends one row; `lines` counts the input lines of this run's slice consumed so far.
    pub fn write_row(&mut self, id: Option<&Value>, values: &[f32], lines: u64) -> Result<()> {
        let mut bytes = Vec::new();
        let quantized = match (self.kind, self.dtype.precision()) {
            (RowKind::Embedding, Some(p)) => Some((quantize(values, p, self.ranges.as_ref())?, p)),
            _ => None,
        };
        match self.format {
            OutputFormat::Npy => match (self.dtype, quantized) {
                (_, Some((q, _))) => bytes = q,
                (Dtype::F16, None) => values
                    .iter()
                    .for_each(|&x| bytes.extend_from_slice(&half::f16::from_f32(x).to_le_bytes())),
                (_, None) => values
                    .iter()
                    .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes())),
            },
            OutputFormat::Jsonl => {
                bytes.push(b'{');
                if let Some(id) = id {
                    bytes.extend_from_slice(b"\"id\":");
                    serde_json::to_writer(&mut bytes, id).expect("writing JSON to memory");
                    bytes.push(b',');
                }
                match self.kind {
                    RowKind::Embedding => {
                        bytes.extend_from_slice(b"\"embedding\":");
                        match &quantized {
                            Some((q, p)) => {
                                serde_json::to_writer(&mut bytes, &crate::quantize::to_json(q, *p))
                            }
                            None => serde_json::to_writer(&mut bytes, values),
                        }
                        .expect("writing JSON to memory");
                    }
                    RowKind::Score => {
                        bytes.extend_from_slice(b"\"score\":");
                        serde_json::to_writer(&mut bytes, &values[0]).expect("writing JSON to memory");
                    }
                }
                bytes.extend_from_slice(b"}\n");
            }
        }
        // Per row: the path is copied only on failure.
        self.file
            .write_all(&bytes)
            .map_err(|e| Error::io(&self.partial, e))?;
        self.written.rows += 1;
        self.written.lines = lines;
        self.written.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes every row written so far durable and records it in the journal.
    pub fn commit(&mut self) -> Result<()> {
        if self.written == self.committed {
            return Ok(());
        }
        self.file.flush().map_err(io(&self.partial))?;
        self.file.get_ref().sync_data().map_err(io(&self.partial))?;
        let w = self.written;
        writeln!(self.journal, "{} {} {}", w.rows, w.lines, w.bytes).map_err(io(&self.journal_path))?;
        self.journal.sync_data().map_err(io(&self.journal_path))?;
        self.committed = w;
        Ok(())
    }

    /// Writes the real header (for .npy), makes the file durable and renames it into place.
    pub fn finish(mut self, cols: usize) -> Result<()> {
        self.file.flush().map_err(io(&self.partial))?;
        if self.format == OutputFormat::Npy {
            let cols = self.dtype.precision().map_or(cols, |p| p.width(cols));
            let header = npy_header(self.written.rows, cols, self.dtype, self.kind);
            let file = self.file.get_mut();
            file.seek(SeekFrom::Start(0)).map_err(io(&self.partial))?;
            file.write_all(&header).map_err(io(&self.partial))?;
        }
        self.file.get_ref().sync_all().map_err(io(&self.partial))?;
        std::fs::rename(&self.partial, &self.target).map_err(io(&self.target))?;
        let _ = std::fs::remove_file(&self.journal_path);
        self.finished = true;
        Ok(())
    }

    /// Ends a run that did not finish: keeps what is done for `--resume`, or, when nothing is,
    /// removes the partial output and its journal. Returns the rows kept.
    ///
    /// A failing final commit (a full disk) loses only the rows after the last record: those
    /// before it are on disk already, and `--resume` cuts the partial file back to them.
    pub fn abandon(mut self) -> Result<u64> {
        let _ = self.commit();
        if self.committed.rows == 0 {
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&self.journal_path);
        }
        self.finished = true;
        Ok(self.committed.rows)
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // An error before any row was computed (bad model, bad device) leaves nothing behind; a
        // run that wrote rows goes through `abandon`, which keeps them.
        if !self.finished && self.committed.rows == 0 {
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&self.journal_path);
        }
    }
}

/// Reopens an unfinished run's partial file and journal at `checkpoint`: the partial file is cut
/// back to it (rows written after it may be torn), the journal to its last complete line (a
/// record torn by a crash must not run into the next one appended).
fn reopen(
    partial: &Path,
    journal_path: &Path,
    checkpoint: Checkpoint,
    complete_len: u64,
) -> Result<(BufWriter<File>, File)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(partial)
        .map_err(io(partial))?;
    let len = file.metadata().map_err(io(partial))?.len();
    if len < checkpoint.bytes {
        return Err(Error::input(
            partial.display().to_string(),
            format!(
                "holds {len} bytes, fewer than the {} its journal records",
                checkpoint.bytes
            ),
        ));
    }
    file.set_len(checkpoint.bytes).map_err(io(partial))?;
    let mut file = BufWriter::with_capacity(1 << 20, file);
    file.seek(SeekFrom::End(0)).map_err(io(partial))?;
    let mut journal = OpenOptions::new()
        .write(true)
        .open(journal_path)
        .map_err(io(journal_path))?;
    journal.set_len(complete_len).map_err(io(journal_path))?;
    journal.seek(SeekFrom::End(0)).map_err(io(journal_path))?;
    Ok((file, journal))
}

/// A journal's fingerprint line, its last complete record (`None` when it has none) and the
/// length of its complete lines (a crash can leave a torn last line).
fn read_journal(bytes: &[u8]) -> (String, Option<Checkpoint>, u64) {
    let complete_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&bytes[..complete_len]);
    let mut lines = text.lines();
    let recorded = lines.next().unwrap_or_default().to_string();
    let checkpoint = lines
        .filter_map(|l| {
            let f: Vec<u64> = l.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (f.len() == 3).then(|| Checkpoint {
                rows: f[0],
                lines: f[1],
                bytes: f[2],
            })
        })
        .next_back();
    (recorded, checkpoint, complete_len as u64)
}

/// A NumPy 1.0 header of exactly [`NPY_HEADER_LEN`] bytes.
fn npy_header(rows: u64, cols: usize, dtype: Dtype, kind: RowKind) -> Vec<u8> {
    let descr = match dtype {
        Dtype::F32 => "<f4",
        Dtype::F16 => "<f2",
        Dtype::Int8 | Dtype::Binary => "|i1",
        Dtype::Uint8 | Dtype::Ubinary => "|u1",
    };
    let shape = match kind {
        RowKind::Embedding => format!("({rows}, {cols})"),
        RowKind::Score => format!("({rows},)"),
    };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&((NPY_HEADER_LEN - 10) as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    assert!(header.len() < NPY_HEADER_LEN, "npy header too long: {dict}");
    header.resize(NPY_HEADER_LEN - 1, b' ');
    header.push(b'\n');
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_journal_line_is_ignored_and_cut() {
        let (fingerprint, checkpoint, len) = read_journal(b"job 1\n10 12 500\n20 24 9");
        assert_eq!(fingerprint, "job 1");
        let want = Checkpoint {
            rows: 10,
            lines: 12,
            bytes: 500,
        };
        assert_eq!((checkpoint, len), (Some(want), 16));
        assert_eq!(read_journal(b"job 1\n").1, None);
        assert_eq!(read_journal(b"jo").1, None);
    }

    #[test]
    fn npy_header_is_fixed_length_and_readable() {
        let mut bytes = npy_header(2, 3, Dtype::F32, RowKind::Embedding);
        assert_eq!(bytes.len(), NPY_HEADER_LEN);
        for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        let (rows, cols, data) = crate::npy::read_f32(&mut bytes.as_slice(), "t").unwrap();
        assert_eq!((rows, cols, data[5]), (2, 3, 6.0));
        let big = npy_header(10_000_000_000, 4096, Dtype::F16, RowKind::Embedding);
        assert_eq!(big.len(), NPY_HEADER_LEN);
    }
}
