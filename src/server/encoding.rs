//! How embeddings go out: floats, base64 of the little-endian f32s (OpenAI's `base64`), or
//! quantized as sentence-transformers' `quantize_embeddings` (int8, uint8, binary, ubinary: see
//! [`crate::quantize`]), as JSON integers. int8 / uint8 buckets come from the server's
//! `--calibration` embeddings, else from the request's own embeddings (sentence-transformers'
//! fallback when it is given no calibration: the buckets then depend on the batch).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::errors::{ApiError, ApiResult, Kind};
use crate::quantize::{quantize, to_json, Precision, Ranges};

#[derive(Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
    Int8,
    Uint8,
    Binary,
    Ubinary,
}

impl EncodingFormat {
    fn precision(self) -> Option<Precision> {
        match self {
            EncodingFormat::Float | EncodingFormat::Base64 => None,
            EncodingFormat::Int8 => Some(Precision::Int8),
            EncodingFormat::Uint8 => Some(Precision::Uint8),
            EncodingFormat::Binary => Some(Precision::Binary),
            EncodingFormat::Ubinary => Some(Precision::Ubinary),
        }
    }
}

/// Each row in `format`.
pub fn encode(
    rows: &[Vec<f32>],
    format: EncodingFormat,
    calibration: Option<&Ranges>,
) -> ApiResult<Vec<Value>> {
    let bad = |e: crate::Error| ApiError::new(Kind::Tokenizer, e.to_string());
    let Some(precision) = format.precision() else {
        return Ok(rows
            .iter()
            .map(|row| match format {
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                _ => json!(row),
            })
            .collect());
    };
    let dim = rows.first().map_or(0, Vec::len);
    let own;
    let ranges = match (precision.needs_ranges(), calibration) {
        (false, _) => None,
        (true, Some(r)) if r.dim() == dim => Some(r),
        (true, Some(r)) => {
            return Err(ApiError::new(
                Kind::Tokenizer,
                format!("the server's calibration has {} dimensions; these embeddings have {dim} (leave out `dimensions`)", r.dim()),
            ))
        }
        (true, None) => {
            own = Ranges::from_rows(rows.iter().map(Vec::as_slice), dim).map_err(bad)?;
            Some(&own)
        }
    };
    rows.iter()
        .map(|row| {
            Ok(to_json(
                &quantize(row, precision, ranges).map_err(bad)?,
                precision,
            ))
        })
        .collect()
}
