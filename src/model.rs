//! The BERT / XLM-RoBERTa forward pass, written once against [`Backend`].
//!
//! It follows transformers' `models/bert/modeling_bert.py` (and `modeling_xlm_roberta.py`, which
//! differs only in position ids and the classification head's tensor names), with two
//! departures that change no number: Q, K and V are one fused linear layer, and the batch is
//! packed (no padding, so no attention mask: attention never crosses a sequence boundary).

use crate::backend::{Activation, Backend, EmbeddingTables, LayerNormWeights, Pooling};
use crate::config::{Family, Head, ModelConfig};
use crate::error::Result;
use crate::weights::Weights;

/// One encoder layer (`BertLayer`).
struct Layer<B: Backend> {
    /// `BertSelfAttention.{query,key,value}` fused: `[3 · hidden, hidden]`.
    qkv: B::Linear,
    /// `BertSelfOutput.dense`, its residual and `LayerNorm`.
    attention_output: B::Linear,
    attention_norm: LayerNormWeights<B::Tensor>,
    /// `BertIntermediate.dense` followed by the activation.
    ffn_up: B::Linear,
    /// `BertOutput.dense`, its residual and `LayerNorm`.
    ffn_down: B::Linear,
    ffn_norm: LayerNormWeights<B::Tensor>,
}

/// `BertPooler` + `classifier` (BERT) or `RobertaClassificationHead` (XLM-R): the first token,
/// a dense layer with tanh, then a projection to the labels.
struct ClassifierHead<B: Backend> {
    dense: B::Linear,
    out: B::Linear,
}

/// A BERT-family encoder (and its classifier head, if any) with its weights on a backend.
pub struct Model<B: Backend> {
    config: ModelConfig,
    embeddings: EmbeddingTables<B::Tensor>,
    embedding_norm: LayerNormWeights<B::Tensor>,
    layers: Vec<Layer<B>>,
    head: Option<ClassifierHead<B>>,
}

impl<B: Backend> Model<B> {
    /// Uploads every weight the config calls for, checking each tensor's name and shape.
    pub fn load(backend: &B, config: ModelConfig, weights: &Weights) -> Result<Model<B>> {
        let h = config.hidden_size;
        let loader = Loader {
            backend,
            weights,
            eps: config.layer_norm_eps,
        };

        let embeddings = EmbeddingTables {
            word: loader.table("embeddings.word_embeddings.weight", config.vocab_size, h)?,
            position: loader.table(
                "embeddings.position_embeddings.weight",
                config.max_position_embeddings,
                h,
            )?,
            token_type: loader.table(
                "embeddings.token_type_embeddings.weight",
                config.type_vocab_size,
                h,
            )?,
        };
        let embedding_norm = loader.norm("embeddings.LayerNorm", h)?;

        let layers = (0..config.num_layers)
            .map(|i| {
                let p = format!("encoder.layer.{i}");
                let i_size = config.intermediate_size;
                Ok(Layer {
                    qkv: loader.fused_qkv(&p, h)?,
                    attention_output: loader.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attention_norm: loader.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                    ffn_up: loader.linear(&format!("{p}.intermediate.dense"), i_size, h)?,
                    ffn_down: loader.linear(&format!("{p}.output.dense"), h, i_size)?,
                    ffn_norm: loader.norm(&format!("{p}.output.LayerNorm"), h)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let head = match config.head {
            Head::None => None,
            Head::Classifier { num_labels } => Some(match config.family {
                Family::Bert => ClassifierHead {
                    dense: loader.linear(&format!("{}pooler.dense", weights.encoder_prefix()), h, h)?,
                    out: loader.linear("classifier", num_labels, h)?,
                },
                Family::XlmRoberta => ClassifierHead {
                    dense: loader.linear("classifier.dense", h, h)?,
                    out: loader.linear("classifier.out_proj", num_labels, h)?,
                },
            }),
        };

        Ok(Model {
            config,
            embeddings,
            embedding_norm,
            layers,
            head,
        })
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The last hidden state `[tokens, hidden]` of a packed batch.
    pub fn forward(&self, backend: &B, batch: &B::DeviceBatch) -> Result<B::Tensor> {
        let heads = self.config.num_heads;
        let head_dim = self.config.head_dim();
        let mut x = backend.embed(batch, &self.embeddings, &self.embedding_norm)?;
        for layer in &self.layers {
            let qkv = backend.linear(&x, &layer.qkv, Activation::Identity, None)?;
            let context = backend.attention(&qkv, batch, heads, head_dim)?;
            let attended =
                backend.linear_residual_norm(&context, &layer.attention_output, &x, &layer.attention_norm)?;
            x = backend.feed_forward(
                &attended,
                &layer.ffn_up,
                self.config.activation,
                &layer.ffn_down,
                &layer.ffn_norm,
            )?;
        }
        Ok(x)
    }

    /// One embedding per sequence `[sequences, hidden]`.
    pub fn embed(
        &self,
        backend: &B,
        batch: &B::DeviceBatch,
        pooling: Pooling,
        normalize: bool,
    ) -> Result<B::Tensor> {
        let hidden = self.forward(backend, batch)?;
        let pooled = backend.pool(&hidden, batch, pooling)?;
        if normalize {
            backend.l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }

    /// Classifier logits `[sequences, num_labels]`; `None` when the model has no head.
    pub fn classify(&self, backend: &B, batch: &B::DeviceBatch) -> Result<Option<B::Tensor>> {
        let Some(head) = &self.head else {
            return Ok(None);
        };
        let hidden = self.forward(backend, batch)?;
        let first = backend.pool(&hidden, batch, Pooling::Cls)?;
        let pooled = backend.linear(&first, &head.dense, Activation::Tanh, None)?;
        backend
            .linear(&pooled, &head.out, Activation::Identity, None)
            .map(Some)
    }
}

/// Reads tensors from the weights and uploads them to the backend.
struct Loader<'a, B: Backend> {
    backend: &'a B,
    weights: &'a Weights,
    eps: f32,
}

impl<B: Backend> Loader<'_, B> {
    fn table(&self, name: &str, rows: usize, cols: usize) -> Result<B::Tensor> {
        let data = self.weights.encoder_f32(name, &[rows, cols])?;
        self.backend.upload(&data, rows, cols)
    }

    fn vector(&self, name: &str, n: usize) -> Result<B::Tensor> {
        let data = self.weights.encoder_f32(name, &[n])?;
        self.backend.upload(&data, 1, n)
    }

    fn norm(&self, prefix: &str, n: usize) -> Result<LayerNormWeights<B::Tensor>> {
        Ok(LayerNormWeights {
            gamma: self.vector(&format!("{prefix}.weight"), n)?,
            beta: self.vector(&format!("{prefix}.bias"), n)?,
            eps: self.eps,
        })
    }

    /// A linear layer by its full name in the encoder (prefix added) or, failing that, at the
    /// top level of the checkpoint, where classification heads live.
    fn linear(&self, name: &str, out_features: usize, in_features: usize) -> Result<B::Linear> {
        let (weight_name, bias_name) = (format!("{name}.weight"), format!("{name}.bias"));
        let read = |n: &str, shape: &[usize]| {
            if self.weights.contains(n) {
                self.weights.read_f32(n, shape)
            } else {
                self.weights.encoder_f32(n, shape)
            }
        };
        let weight = read(&weight_name, &[out_features, in_features])?;
        let bias = read(&bias_name, &[out_features])?;
        self.backend
            .load_linear(&weight, &bias, out_features, in_features)
    }

    /// Query, key and value stacked into one `[3 · hidden, hidden]` layer, so that one matrix
    /// multiply reads the activations once instead of three times.
    fn fused_qkv(&self, layer: &str, h: usize) -> Result<B::Linear> {
        // No capacity from config sizes: they are only trusted once the tensors' shapes agree.
        let (mut weight, mut bias) = (Vec::new(), Vec::new());
        for part in ["query", "key", "value"] {
            let name = format!("{layer}.attention.self.{part}");
            weight.extend(self.weights.encoder_f32(&format!("{name}.weight"), &[h, h])?);
            bias.extend(self.weights.encoder_f32(&format!("{name}.bias"), &[h])?);
        }
        self.backend.load_linear(&weight, &bias, 3 * h, h)
    }
}
