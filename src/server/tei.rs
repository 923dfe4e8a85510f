//! The routes of text-embeddings-inference, with its field names and defaults: /embed, /rerank,
//! /predict, /similarity, /tokenize, /decode, /info, /health.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::batcher::Task;
use super::body::JsonBody;
use super::encoding::{encode, EncodingFormat};
use super::errors::{ApiError, ApiResult, Kind};
use super::state::{State, Text};
use crate::dims;

/// `inputs`: a string, token ids, or a batch of either.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    One(Input),
    Many(Vec<Input>),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum Input {
    Str(String),
    Ids(Vec<u32>),
}

impl Inputs {
    pub fn into_texts(self) -> Vec<Text> {
        let one = |i: Input| match i {
            Input::Str(s) => Text::Str(s),
            Input::Ids(ids) => Text::Ids(ids),
        };
        match self {
            // `[]` parses as one input of no token ids; it is an empty batch.
            Inputs::One(Input::Ids(ids)) if ids.is_empty() => Vec::new(),
            Inputs::One(i) => vec![one(i)],
            Inputs::Many(v) => v.into_iter().map(one).collect(),
        }
    }
}

/// TEI accepts `truncation_direction`; ember cuts only on the right.
#[derive(Deserialize, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    #[serde(alias = "right", alias = "Right")]
    Right,
    #[serde(alias = "left", alias = "Left")]
    Left,
}

fn right_only(direction: &Direction) -> ApiResult<()> {
    if *direction == Direction::Left {
        return Err(ApiError::new(
            Kind::Tokenizer,
            "truncation_direction `left` is not supported: ember truncates on the right",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct EmbedRequest {
    inputs: Inputs,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    prompt_name: Option<String>,
    #[serde(default = "yes")]
    normalize: bool,
    dimensions: Option<usize>,
    /// Not in TEI: float (default), base64, int8, uint8, binary or ubinary, as on /v1/embeddings.
    #[serde(default)]
    encoding_format: EncodingFormat,
}

fn yes() -> bool {
    true
}

/// The embeddings of `texts`, optionally cut to `dimensions` (then renormalized when
/// `normalize`), and the number of tokens they took.
pub async fn embed_texts(
    state: &State,
    texts: Vec<Text>,
    truncate: Option<bool>,
    prompt_name: Option<&str>,
    normalize: bool,
    dimensions: Option<usize>,
) -> ApiResult<(Vec<Vec<f32>>, usize)> {
    state.needs_embedder()?;
    state.check_count(texts.len())?;
    let dim = state.model().encoder().config().hidden_size;
    if let Some(d) = dimensions {
        dims::check(d, dim).map_err(|e| ApiError::new(Kind::Tokenizer, e.to_string()))?;
    }
    let _place = state.admit()?;
    let prompt = state.prompt(prompt_name)?;
    let sequences = state.tokenize_texts(texts, prompt, truncate).await?;
    let tokens = sequences.iter().map(crate::Sequence::len).sum();
    let matrix = state.run(sequences, Task::Embed { normalize }).await?;
    let rows = (0..matrix.rows)
        .map(|r| {
            let row = matrix.row(r);
            match dimensions {
                Some(d) => dims::truncate(row, d, normalize),
                None => row.to_vec(),
            }
        })
        .collect();
    Ok((rows, tokens))
}

pub async fn embed(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<EmbedRequest>,
) -> ApiResult<Json<Value>> {
    right_only(&request.truncation_direction)?;
    let (rows, _) = embed_texts(
        &state,
        request.inputs.into_texts(),
        request.truncate,
        request.prompt_name.as_deref(),
        request.normalize,
        request.dimensions,
    )
    .await?;
    Ok(Json(json!(encode(
        &rows,
        request.encoding_format,
        state.calibration.as_ref()
    )?)))
}

/// A text, or a (query, passage) pair, for the classifier.
pub type Pair = (String, Option<String>);

/// Logits of pairs (or single texts) through the classifier head: `[inputs, labels]`.
pub async fn classify(
    state: &State,
    pairs: Vec<Pair>,
    truncate: Option<bool>,
) -> ApiResult<crate::HostMatrix> {
    state.needs_classifier()?;
    state.check_count(pairs.len())?;
    let _place = state.admit()?;
    let sequences = state.tokenize_pairs(pairs, truncate).await?;
    state.run(sequences, Task::Classify).await
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[derive(Deserialize)]
pub struct RerankRequest {
    query: String,
    texts: Vec<String>,
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
}

/// `(index, score)` of each passage for `query`, best first (ties: earlier index first).
/// Scores are the logit, or its sigmoid unless `raw`.
pub async fn rank(
    state: &State,
    query: &str,
    passages: &[String],
    truncate: Option<bool>,
    raw: bool,
) -> ApiResult<Vec<(usize, f32)>> {
    let pairs = passages
        .iter()
        .map(|p| (query.to_string(), Some(p.clone())))
        .collect();
    let logits = classify(state, pairs, truncate).await?;
    let mut ranked: Vec<(usize, f32)> = (0..logits.rows)
        .map(|i| {
            let x = logits.row(i)[0];
            (i, if raw { x } else { sigmoid(x) })
        })
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(ranked)
}

pub async fn rerank(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<RerankRequest>,
) -> ApiResult<Json<Value>> {
    right_only(&request.truncation_direction)?;
    let ranked = rank(
        &state,
        &request.query,
        &request.texts,
        request.truncate,
        request.raw_scores,
    )
    .await?;
    let body: Vec<Value> = ranked
        .into_iter()
        .map(|(index, score)| {
            let mut rank = json!({"index": index, "score": score});
            if request.return_text {
                rank["text"] = json!(request.texts[index]);
            }
            rank
        })
        .collect();
    Ok(Json(json!(body)))
}

#[derive(Deserialize)]
pub struct PredictRequest {
    inputs: Value,
    truncate: Option<bool>,
    #[serde(default)]
    raw_scores: bool,
}

/// `/predict`'s `inputs`: a string, a pair `[a, b]`, or a batch of `[a]` / `[a, b]`. Returns the
/// items and whether it was a batch.
fn predict_inputs(inputs: &Value) -> ApiResult<(Vec<Pair>, bool)> {
    let shape = || {
        ApiError::new(
            Kind::Shape,
            "`inputs` must be a string, a pair of strings, or a batch of [string] / [string, string]",
        )
    };
    let item = |v: &Value| -> ApiResult<Pair> {
        match v.as_array().map(Vec::as_slice) {
            Some([Value::String(a)]) => Ok((a.clone(), None)),
            Some([Value::String(a), Value::String(b)]) => Ok((a.clone(), Some(b.clone()))),
            _ => Err(shape()),
        }
    };
    match inputs {
        Value::String(s) => Ok((vec![(s.clone(), None)], false)),
        Value::Array(items) if items.iter().all(Value::is_string) && (1..=2).contains(&items.len()) => {
            Ok((vec![item(inputs)?], false))
        }
        Value::Array(items) => Ok((items.iter().map(item).collect::<ApiResult<_>>()?, true)),
        _ => Err(shape()),
    }
}

pub async fn predict(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<PredictRequest>,
) -> ApiResult<Json<Value>> {
    let (items, batch) = predict_inputs(&request.inputs)?;
    let logits = classify(&state, items, request.truncate).await?;
    let labels = &state.labels;
    let answers: Vec<Value> = (0..logits.rows)
        .map(|r| {
            let row = logits.row(r);
            let scores: Vec<f32> = if request.raw_scores {
                row.to_vec()
            } else if row.len() == 1 {
                vec![sigmoid(row[0])]
            } else {
                softmax(row)
            };
            let mut predictions: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
            predictions.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            json!(predictions
                .into_iter()
                .map(|(i, score)| json!({"score": score, "label": labels.get(i).cloned().unwrap_or_else(|| format!("LABEL_{i}"))}))
                .collect::<Vec<_>>())
        })
        .collect();
    Ok(Json(if batch { json!(answers) } else { answers[0].clone() }))
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[derive(Deserialize)]
pub struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

#[derive(Deserialize, Default)]
pub struct SimilarityParameters {
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Direction,
    prompt_name: Option<String>,
}

#[derive(Deserialize)]
pub struct SimilarityRequest {
    inputs: SimilarityInputs,
    parameters: Option<SimilarityParameters>,
}

/// Cosine similarity of each sentence to the source sentence.
pub async fn similarity(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<SimilarityRequest>,
) -> ApiResult<Json<Value>> {
    let parameters = request.parameters.unwrap_or_default();
    right_only(&parameters.truncation_direction)?;
    if request.inputs.sentences.is_empty() {
        return Err(ApiError::new(Kind::Empty, "`sentences` cannot be empty"));
    }
    let mut texts = vec![Text::Str(request.inputs.source_sentence)];
    texts.extend(request.inputs.sentences.into_iter().map(Text::Str));
    let (rows, _) = embed_texts(
        &state,
        texts,
        parameters.truncate,
        parameters.prompt_name.as_deref(),
        true,
        None,
    )
    .await?;
    let source = &rows[0];
    let scores: Vec<f32> = rows[1..].iter().map(|r| dims::cosine(source, r)).collect();
    Ok(Json(json!(scores)))
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum TokenizeInputs {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
pub struct TokenizeRequest {
    inputs: TokenizeInputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    prompt_name: Option<String>,
}

/// Tokens with their ids, text, whether special, and character offsets into the input.
pub async fn tokenize(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<TokenizeRequest>,
) -> ApiResult<Json<Value>> {
    let texts = match request.inputs {
        TokenizeInputs::One(s) => vec![s],
        TokenizeInputs::Many(v) => v,
    };
    state.check_count(texts.len())?;
    let prompt = state.prompt(request.prompt_name.as_deref())?;
    let tokenizer = state.model().tokenizer().inner();
    let mut answers = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let text = format!("{prompt}{text}");
        let encoding = tokenizer
            .encode(text.as_str(), request.add_special_tokens)
            .map_err(|e| ApiError::new(Kind::Tokenizer, format!("input {i}: {e}")))?;
        let tokens: Vec<Value> = (0..encoding.len())
            .map(|t| {
                let special = encoding.get_special_tokens_mask()[t] == 1;
                let (start, stop) = encoding.get_offsets()[t];
                let (start, stop) = if special { (None, None) } else { (Some(start), Some(stop)) };
                let piece = match (start, stop) {
                    (Some(a), Some(b)) => text.get(a..b).unwrap_or_default().to_string(),
                    _ => encoding.get_tokens()[t].clone(),
                };
                json!({"id": encoding.get_ids()[t], "text": piece, "special": special, "start": start, "stop": stop})
            })
            .collect();
        answers.push(json!(tokens));
    }
    Ok(Json(json!(answers)))
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum DecodeIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub struct DecodeRequest {
    ids: DecodeIds,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

pub async fn decode(
    Shared(state): Shared<Arc<State>>,
    JsonBody(request): JsonBody<DecodeRequest>,
) -> ApiResult<Json<Value>> {
    let ids = match request.ids {
        DecodeIds::One(v) => vec![v],
        DecodeIds::Many(v) => v,
    };
    state.check_count(ids.len())?;
    let tokenizer = state.model().tokenizer().inner();
    let texts = ids
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            tokenizer
                .decode(ids, request.skip_special_tokens)
                .map_err(|e| ApiError::new(Kind::Tokenizer, format!("input {i}: {e}")))
        })
        .collect::<ApiResult<Vec<String>>>()?;
    Ok(Json(json!(texts)))
}

pub async fn info(Shared(state): Shared<Arc<State>>) -> Json<Value> {
    Json(state.info.clone())
}

/// 200 while the workers run; 503 once the server is shutting down.
pub async fn health(Shared(state): Shared<Arc<State>>) -> ApiResult<()> {
    if state.admission.is_closed() {
        return Err(ApiError::new(Kind::Unhealthy, "shutting down"));
    }
    Ok(())
}

pub async fn metrics(Shared(state): Shared<Arc<State>>) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
