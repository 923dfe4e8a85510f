//! Reads a model folder's configuration: Hugging Face `config.json` plus, when present, the
//! sentence-transformers files (`modules.json`, the pooling module's `config.json`,
//! `sentence_bert_config.json`). Everything the forward pass and the API need ends up in
//! [`ModelConfig`]; unknown architectures and activations are errors that name the field.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::{Activation, Pooling};
use crate::error::{Error, Result};

/// The encoder family: decides tensor prefixes and the position id offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// BERT: tensors under `bert.` (or no prefix), positions from 0.
    Bert,
    /// XLM-RoBERTa and RoBERTa: positions start at `pad_token_id + 1`.
    XlmRoberta,
}

/// What sits on top of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `BertModel` / `XLMRobertaModel`: hidden states, pooled into embeddings.
    None,
    /// `*ForSequenceClassification`: `[CLS]` → dense → tanh → linear → `num_labels` logits.
    /// (BERT calls the first dense its pooler; XLM-R calls it `classifier.dense`.)
    Classifier {
        /// Logits per sequence: 1 for a reranker.
        num_labels: usize,
    },
}

/// The model's own defaults for the embedding API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingDefaults {
    /// How token rows become the text's vector.
    pub pooling: Pooling,
    /// Whether vectors are scaled to unit length.
    pub normalize: bool,
    /// The most tokens of a text, special tokens included.
    pub max_length: usize,
    /// Where the defaults came from, for `ember info` and error messages.
    pub source: &'static str,
}

/// A model folder's configuration, validated: every size is positive and consistent (the
/// hidden size divides into the heads), every choice one ember implements.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model folder.
    pub dir: PathBuf,
    /// BERT or XLM-RoBERTa (`model_type`).
    pub family: Family,
    /// Embeddings or a classifier (`architectures`, `num_labels`).
    pub head: Head,
    /// Rows of the word embedding table (`vocab_size`).
    pub vocab_size: usize,
    /// Width of every hidden state (`hidden_size`).
    pub hidden_size: usize,
    /// Encoder layers (`num_hidden_layers`).
    pub num_layers: usize,
    /// Attention heads per layer (`num_attention_heads`).
    pub num_heads: usize,
    /// Width of the feed-forward layer (`intermediate_size`).
    pub intermediate_size: usize,
    /// The feed-forward layer's nonlinearity (`hidden_act`).
    pub activation: Activation,
    /// Rows of the position table (`max_position_embeddings`).
    pub max_position_embeddings: usize,
    /// Rows of the token type table (`type_vocab_size`; 1 for XLM-R).
    pub type_vocab_size: usize,
    /// LayerNorm's epsilon (`layer_norm_eps`).
    pub layer_norm_eps: f32,
    /// The padding token (`pad_token_id`), which sets XLM-R's position offset.
    pub pad_token_id: usize,
    /// The embedding API's defaults, from the sentence-transformers files when present.
    pub defaults: EmbeddingDefaults,
}

impl ModelConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Added to every position id: XLM-R counts positions from `padding_idx + 1`.
    pub fn position_offset(&self) -> usize {
        match self.family {
            Family::Bert => 0,
            Family::XlmRoberta => self.pad_token_id + 1,
        }
    }

    /// The longest sequence the position table can hold.
    pub fn max_supported_length(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Parameters of the encoder and head, counted from the shapes (for `ember info`).
    pub fn parameter_count(&self) -> u128 {
        // u128: sizes are at most MAX_DIMENSION (2^24), so no product here can overflow.
        let [v, p, t, h, i, l] = [
            self.vocab_size,
            self.max_position_embeddings,
            self.type_vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
        ]
        .map(|n| n as u128);
        let embeddings = (v + p + t) * h + 2 * h;
        let layer = 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h;
        let head = match self.head {
            Head::None => 0,
            Head::Classifier { num_labels } => h * h + h + (num_labels as u128) * (h + 1),
        };
        embeddings + l * layer + head
    }

    /// Reads `config.json` of the folder `dir` and the sentence-transformers files beside it.
    pub fn load(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let mut config = Self::from_json(&path, &text)?;
        config.defaults = sentence_transformers_defaults(dir)?.unwrap_or(config.defaults);
        config.defaults.max_length = config.defaults.max_length.min(config.max_supported_length());
        Ok(config)
    }

    /// Parses and validates the bytes of a config.json alone (no sentence-transformers files
    /// are read: the embedding defaults are bge's). `path` names the file in errors; its folder
    /// becomes [`ModelConfig::dir`].
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<ModelConfig> {
        let json: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let path = path.to_path_buf();
        let field = Fields {
            path: &path,
            json: &json,
        };

        let model_type = field.str("model_type")?;
        let family = match model_type {
            "bert" => Family::Bert,
            "xlm-roberta" | "roberta" => Family::XlmRoberta,
            other => {
                return Err(Error::config(
                    &path,
                    "model_type",
                    format!("`{other}` is not supported (ember runs bert, xlm-roberta and roberta)"),
                ))
            }
        };
        let head = parse_head(&field, family)?;

        let activation = match json.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu") {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::config(
                    &path,
                    "hidden_act",
                    format!(
                        "`{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)"
                    ),
                ))
            }
        };
        if let Some(kind) = json.get("position_embedding_type").and_then(Value::as_str) {
            if kind != "absolute" {
                return Err(Error::config(
                    &path,
                    "position_embedding_type",
                    format!("`{kind}` is not supported; only absolute"),
                ));
            }
        }

        let hidden_size = field.positive("hidden_size")?;
        let num_heads = field.positive("num_attention_heads")?;
        if hidden_size % num_heads != 0 {
            return Err(Error::config(
                &path,
                "num_attention_heads",
                format!("{num_heads} heads do not divide hidden_size {hidden_size}"),
            ));
        }
        let mut config = ModelConfig {
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            family,
            head,
            vocab_size: field.positive("vocab_size")?,
            hidden_size,
            num_layers: field.positive("num_hidden_layers")?,
            num_heads,
            intermediate_size: field.positive("intermediate_size")?,
            activation,
            max_position_embeddings: field.positive("max_position_embeddings")?,
            type_vocab_size: field.positive_or("type_vocab_size", 2)?,
            layer_norm_eps: field.float_or("layer_norm_eps", 1e-12)? as f32,
            pad_token_id: field.usize_or("pad_token_id", 0)?,
            defaults: EmbeddingDefaults {
                pooling: Pooling::Cls,
                normalize: true,
                max_length: 512,
                source: "bge convention (no sentence-transformers files)",
            },
        };
        if config.max_supported_length() == 0 {
            return Err(Error::config(
                &path,
                "max_position_embeddings",
                "leaves no room for a single position",
            ));
        }
        config.defaults.max_length = config.defaults.max_length.min(config.max_supported_length());
        Ok(config)
    }
}

fn parse_head(field: &Fields, family: Family) -> Result<Head> {
    let architecture = field
        .json
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let Some(architecture) = architecture else {
        return Ok(Head::None);
    };
    let expected_prefix = match family {
        Family::Bert => "Bert",
        Family::XlmRoberta if architecture.starts_with("XLMRoberta") => "XLMRoberta",
        Family::XlmRoberta => "Roberta",
    };
    match architecture.strip_prefix(expected_prefix) {
        Some("Model") => Ok(Head::None),
        Some("ForSequenceClassification") => {
            // transformers derives num_labels from id2label when present, else from num_labels, else 2.
            let num_labels = match field.json.get("id2label").and_then(Value::as_object) {
                Some(labels) => labels.len(),
                None => field.usize_or("num_labels", 2)?,
            };
            if num_labels == 0 {
                return Err(Error::config(field.path, "id2label", "a classifier needs at least one label"));
            }
            Ok(Head::Classifier { num_labels })
        }
        _ => Err(Error::config(
            field.path,
            "architectures",
            format!(
                "`{architecture}` is not supported (ember runs {expected_prefix}Model and {expected_prefix}ForSequenceClassification)"
            ),
        )),
    }
}

/// Pooling, normalization and max length from the sentence-transformers files, when the folder
/// has them. `None` when there is no `modules.json`.
fn sentence_transformers_defaults(dir: &Path) -> Result<Option<EmbeddingDefaults>> {
    let modules_path = dir.join("modules.json");
    if !modules_path.exists() {
        return Ok(None);
    }
    let modules = read_json(&modules_path)?;
    let modules = modules
        .as_array()
        .ok_or_else(|| Error::config(&modules_path, "(top level)", "expected a list of modules"))?;
    let module_of = |suffix: &str| {
        modules.iter().find(|m| {
            m.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(suffix))
        })
    };

    let mut defaults = EmbeddingDefaults {
        pooling: Pooling::Cls,
        normalize: module_of("models.Normalize").is_some(),
        max_length: 512,
        source: "sentence-transformers files",
    };
    if let Some(pooling) = module_of("models.Pooling") {
        let sub = pooling.get("path").and_then(Value::as_str).unwrap_or("");
        let path = dir.join(sub).join("config.json");
        let json = read_json(&path)?;
        let flag = |name: &str| json.get(name).and_then(Value::as_bool).unwrap_or(false);
        defaults.pooling = match (flag("pooling_mode_cls_token"), flag("pooling_mode_mean_tokens")) {
            (true, false) => Pooling::Cls,
            (false, true) => Pooling::Mean,
            _ => {
                return Err(Error::config(
                    &path,
                    "pooling_mode_*",
                    "exactly one of pooling_mode_cls_token and pooling_mode_mean_tokens must be true; other modes are not supported",
                ))
            }
        };
        for unsupported in [
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
            "pooling_mode_weightedmean_tokens",
            "pooling_mode_lasttoken",
        ] {
            if flag(unsupported) {
                return Err(Error::config(
                    &path,
                    unsupported,
                    "this pooling mode is not supported",
                ));
            }
        }
    }
    let st_config = dir.join("sentence_bert_config.json");
    if st_config.exists() {
        let json = read_json(&st_config)?;
        if let Some(value) = json.get("max_seq_length") {
            defaults.max_length =
                value.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                    Error::config(&st_config, "max_seq_length", "expected a positive integer")
                })? as usize;
        }
    }
    Ok(Some(defaults))
}

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The largest size a config may declare. No BERT-family model comes near it (XLM-R's vocabulary
/// is 250,002), and the bound keeps every size product of the loader and `parameter_count` far
/// from overflow before the tensors' own shapes are checked.
const MAX_DIMENSION: usize = 1 << 24;

/// Typed access to config.json fields with errors that name the field.
struct Fields<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl Fields<'_> {
    fn str(&self, name: &str) -> Result<&str> {
        match self.json.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(Error::config(self.path, name, "expected a string")),
            None => Err(Error::config(self.path, name, "missing")),
        }
    }

    /// An optional non-negative integer, at most [`MAX_DIMENSION`].
    fn usize_or(&self, name: &str, default: usize) -> Result<usize> {
        let n = match self.json.get(name) {
            None | Some(Value::Null) => return Ok(default),
            Some(v) => v.as_u64().ok_or_else(|| {
                Error::config(
                    self.path,
                    name,
                    format!("expected a non-negative integer, found {v}"),
                )
            })?,
        };
        if n > MAX_DIMENSION as u64 {
            return Err(Error::config(
                self.path,
                name,
                format!("{n} is larger than any encoder ember runs (at most {MAX_DIMENSION})"),
            ));
        }
        Ok(n as usize)
    }

    fn positive_or(&self, name: &str, default: usize) -> Result<usize> {
        let n = self.usize_or(name, default)?;
        if n == 0 {
            return Err(Error::config(self.path, name, "must be positive"));
        }
        Ok(n)
    }

    /// A required size: positive and at most [`MAX_DIMENSION`].
    fn positive(&self, name: &str) -> Result<usize> {
        if self.json.get(name).is_none() {
            return Err(Error::config(self.path, name, "missing"));
        }
        self.positive_or(name, 0)
    }

    fn float_or(&self, name: &str, default: f64) -> Result<f64> {
        match self.json.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().filter(|x| x.is_finite() && *x >= 0.0).ok_or_else(|| {
                Error::config(
                    self.path,
                    name,
                    format!("expected a non-negative number, found {v}"),
                )
            }),
        }
    }
}

#[cfg(test)]
mod properties {
    //! Property test (proptest, in the test command): config.json files with arbitrary values in
    //! every field load or fail with an error that names config.json, and never panic.

    use super::*;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0u64..100).prop_map(Value::from),
            any::<f64>().prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
            "[a-z_-]{0,12}".prop_map(Value::from),
            Just(serde_json::json!(["BertModel"])),
            Just(serde_json::json!({"0": "LABEL_0"})),
        ]
    }

    const FIELDS: [&str; 15] = [
        "model_type",
        "architectures",
        "hidden_act",
        "position_embedding_type",
        "hidden_size",
        "num_attention_heads",
        "vocab_size",
        "num_hidden_layers",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "pad_token_id",
        "id2label",
        "num_labels",
    ];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_configs_never_panic(values in proptest::collection::vec(proptest::option::of(any_value()), FIELDS.len())) {
            let dir = std::env::temp_dir().join(format!("ember-config-prop-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut json = serde_json::json!({
                "model_type": "bert", "hidden_size": 64, "num_attention_heads": 2, "vocab_size": 100,
                "num_hidden_layers": 1, "intermediate_size": 96, "max_position_embeddings": 64,
            });
            for (field, value) in FIELDS.iter().zip(values) {
                if let Some(value) = value {
                    json[*field] = value;
                }
            }
            std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
            match ModelConfig::load(&dir) {
                Ok(config) => {
                    prop_assert!(config.hidden_size % config.num_heads == 0);
                    prop_assert!(config.max_supported_length() > 0);
                    let _ = config.parameter_count();
                }
                Err(e) => prop_assert!(e.to_string().contains("config.json"), "{}", e),
            }
        }
    }
}
