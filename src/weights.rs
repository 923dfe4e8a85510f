//! Weights: the safetensors file(s) of a model folder, memory-mapped once and validated before
//! any byte is trusted. A single `model.safetensors` or a sharded set listed by
//! `model.safetensors.index.json`. Tensors are looked up by their name inside the encoder
//! (`embeddings.word_embeddings.weight`); the `bert.` / `roberta.` prefix that
//! `*ForSequenceClassification` checkpoints add is found once at load.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// The floating-point formats ember reads weights from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
}

impl StoredDtype {
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "f32",
            StoredDtype::F16 => "f16",
            StoredDtype::Bf16 => "bf16",
        }
    }

    fn size(self) -> usize {
        match self {
            StoredDtype::F32 => 4,
            StoredDtype::F16 | StoredDtype::Bf16 => 2,
        }
    }
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

struct TensorEntry {
    file: usize,
    dtype: Option<StoredDtype>,
    dtype_name: String,
    shape: Vec<usize>,
    /// Byte range inside the file's mapping, already checked to lie inside it.
    bytes: Range<usize>,
}

/// All tensors of a model folder.
pub struct Weights {
    dir: PathBuf,
    files: Vec<MappedFile>,
    tensors: HashMap<String, TensorEntry>,
    /// The prefix in front of encoder tensor names in this checkpoint ("", "bert." or "roberta.").
    encoder_prefix: &'static str,
}

const ENCODER_PREFIXES: [&str; 3] = ["", "bert.", "roberta."];
const PROBE_TENSOR: &str = "embeddings.word_embeddings.weight";

impl Weights {
    pub fn open(dir: &Path) -> Result<Weights> {
        let index_path = dir.join("model.safetensors.index.json");
        let single_path = dir.join("model.safetensors");
        let shard_names = if single_path.exists() {
            vec!["model.safetensors".to_string()]
        } else if index_path.exists() {
            shards_from_index(&index_path)?
        } else {
            return Err(Error::Weights {
                path: dir.to_path_buf(),
                message: "no model.safetensors or model.safetensors.index.json in this folder".into(),
            });
        };

        let mut weights = Weights {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: HashMap::new(),
            encoder_prefix: "",
        };
        for name in shard_names {
            weights.map_file(&dir.join(name))?;
        }
        weights.encoder_prefix = ENCODER_PREFIXES
            .into_iter()
            .find(|p| weights.tensors.contains_key(&format!("{p}{PROBE_TENSOR}")))
            .ok_or_else(|| weights.missing(PROBE_TENSOR))?;
        Ok(weights)
    }

    fn map_file(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and lives as long as `self`. Its bytes are only read
        // through ranges that `read_metadata` and the checks below proved to lie inside the file.
        // ember does not guard against another process truncating the file while it runs (the
        // same contract as every mmap-based loader, safetensors' own included).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            message: format!("invalid safetensors file: {e}"),
        })?;
        let data_start = 8 + header_len;
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            let bytes = data_start + start..data_start + end;
            if bytes.end > mmap.len() {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    tensor: name,
                    message: "data lies past the end of the file".into(),
                });
            }
            let dtype = match info.dtype {
                Dtype::F32 => Some(StoredDtype::F32),
                Dtype::F16 => Some(StoredDtype::F16),
                Dtype::BF16 => Some(StoredDtype::Bf16),
                _ => None,
            };
            let entry = TensorEntry {
                file: file_index,
                dtype,
                dtype_name: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                bytes,
            };
            if self.tensors.insert(name.clone(), entry).is_some() {
                return Err(Error::Tensor {
                    path: path.to_path_buf(),
                    tensor: name,
                    message: "appears in more than one shard".into(),
                });
            }
        }
        self.files.push(MappedFile {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    /// The dtype most of the model's floating-point weights are stored in.
    pub fn stored_dtype(&self) -> Option<StoredDtype> {
        self.tensors
            .get(&format!("{}{PROBE_TENSOR}", self.encoder_prefix))
            .and_then(|t| t.dtype)
    }

    pub fn encoder_prefix(&self) -> &'static str {
        self.encoder_prefix
    }

    /// An encoder tensor (name without prefix) converted to f32, checked against `shape`.
    pub fn encoder_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.read_f32(&format!("{}{name}", self.encoder_prefix), shape)
    }

    /// Whether a tensor of this exact name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// A tensor by its full name, converted to f32, checked against `shape`.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let entry = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        let file = &self.files[entry.file];
        let fault = |message: String| Error::Tensor {
            path: file.path.clone(),
            tensor: name.to_string(),
            message,
        };
        if entry.shape != shape {
            return Err(fault(format!(
                "shape {:?} does not match {:?} implied by config.json",
                entry.shape, shape
            )));
        }
        let dtype = entry.dtype.ok_or_else(|| {
            fault(format!(
                "dtype {} is not supported (f32, f16, bf16)",
                entry.dtype_name
            ))
        })?;
        let count: usize = shape.iter().product();
        let bytes = &file.mmap[entry.bytes.clone()];
        if bytes.len() != count * dtype.size() {
            return Err(fault(format!(
                "{} bytes for {count} {} values",
                bytes.len(),
                dtype.name()
            )));
        }
        // Element-wise little-endian decoding: the data need not be aligned in the file.
        let values = match dtype {
            StoredDtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            StoredDtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            StoredDtype::Bf16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Ok(values)
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            dir: self.dir.clone(),
            tensor: name.to_string(),
            prefixes: ENCODER_PREFIXES
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The shard file names listed by an index, each once, in order of first appearance.
fn shards_from_index(index_path: &Path) -> Result<Vec<String>> {
    let json = crate::config::read_json(index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::config(index_path, "weight_map", "missing or not an object"))?;
    let mut shards: Vec<String> = Vec::new();
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::config(index_path, format!("weight_map.{tensor}"), "expected a file name")
        })?;
        // A shard name must stay inside the model folder.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(Error::config(
                index_path,
                format!("weight_map.{tensor}"),
                format!("`{file}` is not a plain file name"),
            ));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(Error::config(index_path, "weight_map", "lists no tensors"));
    }
    Ok(shards)
}
