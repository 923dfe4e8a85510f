//! OpenAI's `POST /v1/embeddings` and the Cohere/Jina-shaped `POST /v1/rerank`, with OpenAI's
//! error body on both.

use std::sync::Arc;

use axum::extract::State as Shared;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::JsonBody;
use super::encoding::{encode, EncodingFormat};
use super::errors::{ApiError, ApiResult, Kind};
use super::state::State;
use super::tei::{embed_texts, rank, Inputs};

#[derive(Deserialize)]
pub struct EmbeddingsRequest {
    input: Inputs,
    model: Option<String>,
    #[serde(default)]
    encoding_format: EncodingFormat,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
}

pub async fn embeddings(
    Shared(state): Shared<Arc<State>>,
    body: Result<JsonBody<EmbeddingsRequest>, ApiError>,
) -> ApiResult<Json<Value>> {
    let JsonBody(request) = body.map_err(ApiError::openai)?;
    let texts = request.input.into_texts();
    // OpenAI truncates nothing: a text over the limit is an error unless --auto-truncate.
    let (rows, tokens) = embed_texts(&state, texts, None, None, true, request.dimensions)
        .await
        .map_err(ApiError::openai)?;
    let encoded =
        encode(&rows, request.encoding_format, state.calibration.as_ref()).map_err(ApiError::openai)?;
    let data: Vec<Value> = encoded
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "embedding": embedding, "index": index}))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": request.model.unwrap_or_else(|| state.served_model_name.clone()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// A document: a string, or `{"text": ...}` as Cohere and Jina also accept.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum Document {
    Text(String),
    Object { text: String },
}

#[derive(Deserialize)]
pub struct RerankRequest {
    query: String,
    documents: Vec<Document>,
    model: Option<String>,
    top_n: Option<usize>,
    #[serde(default)]
    return_documents: bool,
}

pub async fn rerank(
    Shared(state): Shared<Arc<State>>,
    body: Result<JsonBody<RerankRequest>, ApiError>,
) -> ApiResult<Json<Value>> {
    let JsonBody(request) = body.map_err(ApiError::openai)?;
    let documents: Vec<String> = request
        .documents
        .into_iter()
        .map(|d| match d {
            Document::Text(t) | Document::Object { text: t } => t,
        })
        .collect();
    if request.top_n == Some(0) {
        return Err(ApiError::new(Kind::Tokenizer, "`top_n` must be at least 1").openai());
    }
    let ranked = rank(&state, &request.query, &documents, None, false)
        .await
        .map_err(ApiError::openai)?;
    let keep = request.top_n.unwrap_or(ranked.len());
    let results: Vec<Value> = ranked
        .into_iter()
        .take(keep)
        .map(|(index, score)| {
            let mut result = json!({"index": index, "relevance_score": score});
            if request.return_documents {
                result["document"] = json!({"text": documents[index]});
            }
            result
        })
        .collect();
    Ok(Json(json!({
        "model": request.model.unwrap_or_else(|| state.served_model_name.clone()),
        "results": results,
    })))
}
