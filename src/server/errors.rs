//! Error answers. TEI's routes answer `{"error": ..., "error_type": ...}` with TEI's status per
//! type (overloaded 429, validation 413, tokenizer 422, empty 400, backend 424, unhealthy 503);
//! the /v1 routes answer OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
//! Bodies the server cannot read are answered before any of that: over the payload limit 413,
//! not JSON 400, JSON of the wrong shape 422, a missing or wrong API key 401.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// TEI's error types, plus the ones a body or a key can cause before TEI's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The queue is full (429).
    Overloaded,
    /// Too many inputs, a text over the limit without truncation (413, as TEI).
    Validation,
    /// A text the tokenizer cannot take, token ids out of range, a wrong `dimensions`, an
    /// unknown prompt name (422).
    Tokenizer,
    /// An empty batch (400, as TEI).
    Empty,
    /// The forward pass failed (424, as TEI).
    Backend,
    /// The server is shutting down (503).
    Unhealthy,
    /// The body is over `--payload-limit` (413).
    PayloadTooLarge,
    /// The body is not JSON (400).
    Malformed,
    /// The body is JSON of the wrong shape (422).
    Shape,
    /// A missing or wrong API key (401).
    Unauthorized,
    /// The body did not arrive in time (408).
    Timeout,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::Validation | Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Tokenizer | Kind::Shape => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Empty | Kind::Malformed => StatusCode::BAD_REQUEST,
            Kind::Backend => StatusCode::FAILED_DEPENDENCY,
            Kind::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The `error_type` of the body: TEI's names where TEI has the type.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Overloaded => "overloaded",
            Kind::Validation | Kind::PayloadTooLarge | Kind::Shape | Kind::Malformed | Kind::Timeout => {
                "validation"
            }
            Kind::Tokenizer => "tokenizer",
            Kind::Empty => "empty",
            Kind::Backend => "backend",
            Kind::Unhealthy => "unhealthy",
            Kind::Unauthorized => "unauthorized",
        }
    }

    /// The `err` label of the failure counter in /metrics.
    pub fn metric(self) -> &'static str {
        match self {
            Kind::Overloaded => "overloaded",
            Kind::Validation | Kind::Empty | Kind::Timeout => "validation",
            Kind::Tokenizer => "tokenizer",
            Kind::Backend | Kind::Unhealthy => "backend",
            Kind::PayloadTooLarge => "payload_too_large",
            Kind::Malformed | Kind::Shape => "malformed",
            Kind::Unauthorized => "unauthorized",
        }
    }
}

/// Which shape an error body takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Tei,
    OpenAi,
}

#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    pub api: Api,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            api: Api::Tei,
        }
    }

    pub fn openai(mut self) -> ApiError {
        self.api = Api::OpenAi;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let body = match self.api {
            Api::Tei => json!({"error": self.message, "error_type": self.kind.name()}),
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind.name(),
                "param": null,
                "code": status.as_u16(),
            }}),
        };
        let mut response = (status, Json(body)).into_response();
        // For the failure counter, which sees only the response.
        response.extensions_mut().insert(self.kind);
        if self.kind == Kind::Unauthorized {
            response
                .headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The kind an error status stands for, for the failure counter (axum's own rejections, such
/// as 404 or 405, count as malformed requests).
pub fn kind_of_status(status: StatusCode) -> Kind {
    match status.as_u16() {
        429 => Kind::Overloaded,
        413 => Kind::PayloadTooLarge,
        422 => Kind::Tokenizer,
        401 => Kind::Unauthorized,
        408 => Kind::Timeout,
        424 | 500..=599 => Kind::Backend,
        _ => Kind::Malformed,
    }
}
