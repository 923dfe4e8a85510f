//! Reading a JSON body within the limits: at most `--payload-limit` bytes (413 beyond, before
//! anything is parsed when Content-Length says so), within `--body-timeout` seconds (408 for a
//! body that trickles in), then JSON that is not JSON is 400 and JSON of the wrong shape 422.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::errors::{ApiError, Kind};
use super::state::State;

/// A body parsed as `T`, with the server's error answers when it cannot be.
pub struct JsonBody<T>(pub T);

/// The body limits, kept in the shared state.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub payload_limit: usize,
    pub timeout: Duration,
}

impl<T: DeserializeOwned> FromRequest<Arc<State>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<State>) -> Result<Self, ApiError> {
        let limits = state.body_limits;
        let too_large = || {
            ApiError::new(
                Kind::PayloadTooLarge,
                format!(
                    "the body is larger than the payload limit of {} bytes",
                    limits.payload_limit
                ),
            )
        };
        let declared = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limits.payload_limit as u64) {
            return Err(too_large());
        }
        let body = request.into_body();
        let bytes = match tokio::time::timeout(
            limits.timeout,
            axum::body::to_bytes(body, limits.payload_limit),
        )
        .await
        {
            Err(_) => {
                return Err(ApiError::new(
                    Kind::Timeout,
                    format!(
                        "the body did not arrive within {} s",
                        limits.timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Err(e)) if format!("{e:?}").contains("LengthLimit") => return Err(too_large()),
            Ok(Err(e)) => return Err(ApiError::new(Kind::Malformed, format!("reading the body: {e}"))),
            Ok(Ok(bytes)) => bytes,
        };
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            let kind = match e.classify() {
                serde_json::error::Category::Data => Kind::Shape,
                _ => Kind::Malformed,
            };
            ApiError::new(kind, format!("invalid JSON body: {e}"))
        })
    }
}
