//! Embedding quantization, with sentence-transformers' `quantize_embeddings` conventions, so
//! that rows written by ember compare with rows quantized there:
//!
//! - `binary`: one bit per dimension, set when the value is > 0, packed 8 to a byte, most
//!   significant bit first (NumPy's `packbits`), the last byte padded with zero bits; each byte
//!   then stored as `byte - 128` in an int8.
//! - `ubinary`: the same bytes as uint8, without the offset.
//! - `uint8`: per dimension `d`, `start[d]` and `step[d] = (max[d] - start[d]) / 255` from
//!   calibration ranges (the per-dimension minimum and maximum over calibration embeddings);
//!   the value is `trunc((x - start) / step)`, in f32 as NumPy computes it.
//! - `int8`: `trunc((x - start) / step - 128)`.
//!
//! Two differences, both where NumPy's result is undefined: values outside the calibration range
//! saturate (to 0..=255 or -128..=127) where NumPy's cast would wrap, and a dimension whose
//! range is empty (step 0) maps to the lowest value instead of NaN. Binary rows are packed row
//! by row; NumPy packs the flattened matrix, which is the same when the width is a multiple of 8
//! (every BERT width is).

use std::str::FromStr;

use crate::error::{Error, Result};

/// An output precision of quantized embeddings (the module's list says how each is computed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// One signed byte per dimension, from calibration ranges.
    Int8,
    /// One unsigned byte per dimension, from calibration ranges.
    Uint8,
    /// One bit per dimension, packed, each byte offset by -128.
    Binary,
    /// One bit per dimension, packed.
    Ubinary,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Precision> {
        match s {
            "int8" => Ok(Precision::Int8),
            "uint8" => Ok(Precision::Uint8),
            "binary" => Ok(Precision::Binary),
            "ubinary" => Ok(Precision::Ubinary),
            _ => Err(Error::Option {
                option: "precision".into(),
                message: format!("`{s}` is not a quantized precision (int8, uint8, binary, ubinary)"),
            }),
        }
    }
}

impl Precision {
    /// Whether the stored bytes are signed (int8, binary) or not (uint8, ubinary).
    pub fn signed(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Binary)
    }

    /// Whether the precision needs calibration ranges.
    pub fn needs_ranges(self) -> bool {
        matches!(self, Precision::Int8 | Precision::Uint8)
    }

    /// Bytes per row for `dim` dimensions.
    pub fn width(self, dim: usize) -> usize {
        match self {
            Precision::Int8 | Precision::Uint8 => dim,
            Precision::Binary | Precision::Ubinary => dim.div_ceil(8),
        }
    }
}

/// Per-dimension minimum and step, from calibration embeddings.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranges {
    start: Vec<f32>,
    step: Vec<f32>,
}

impl Ranges {
    /// The per-dimension minimum and maximum over `rows` (each `dim` wide).
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a [f32]>, dim: usize) -> Result<Ranges> {
        let mut min = vec![f32::INFINITY; dim];
        let mut max = vec![f32::NEG_INFINITY; dim];
        let mut count = 0usize;
        for row in rows {
            if row.len() != dim {
                return Err(Error::input(
                    format!("calibration row {count}"),
                    format!("{} values where the embeddings have {dim}", row.len()),
                ));
            }
            for ((lo, hi), &x) in min.iter_mut().zip(&mut max).zip(row) {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
            count += 1;
        }
        if count == 0 {
            return Err(Error::input("calibration", "no embeddings to take ranges from"));
        }
        let step = min.iter().zip(&max).map(|(lo, hi)| (hi - lo) / 255.0).collect();
        Ok(Ranges { start: min, step })
    }

    /// Ranges from a float32 .npy of calibration embeddings (e.g. an earlier `ember encode`).
    pub fn from_npy(path: &std::path::Path, dim: usize) -> Result<Ranges> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let (rows, cols, data) = crate::npy::read_f32(&mut file, &path.display().to_string())?;
        if rows > 0 && cols != dim {
            return Err(Error::input(
                path.display().to_string(),
                format!("calibration embeddings have {cols} dimensions; the output has {dim}"),
            ));
        }
        Ranges::from_rows(data.chunks(cols.max(1)), dim)
    }

    /// Dimensions the ranges cover.
    pub fn dim(&self) -> usize {
        self.start.len()
    }
}

/// One row quantized: the stored bytes (int8 values as their two's-complement bytes).
pub fn quantize(row: &[f32], precision: Precision, ranges: Option<&Ranges>) -> Result<Vec<u8>> {
    match precision {
        Precision::Binary | Precision::Ubinary => {
            let offset = if precision == Precision::Binary { 128u8 } else { 0 };
            Ok(row
                .chunks(8)
                .map(|bits| {
                    let byte = bits
                        .iter()
                        .enumerate()
                        .fold(0u8, |b, (i, &x)| b | (u8::from(x > 0.0) << (7 - i)));
                    byte.wrapping_sub(offset)
                })
                .collect())
        }
        Precision::Int8 | Precision::Uint8 => {
            let ranges = ranges.ok_or_else(|| Error::Option {
                option: "calibration".into(),
                message: "int8 and uint8 need calibration ranges".into(),
            })?;
            if ranges.dim() != row.len() {
                return Err(Error::Option {
                    option: "calibration".into(),
                    message: format!("ranges for {} dimensions, rows of {}", ranges.dim(), row.len()),
                });
            }
            Ok(row
                .iter()
                .zip(ranges.start.iter().zip(&ranges.step))
                .map(|(&x, (&start, &step))| {
                    let scaled = if step > 0.0 { (x - start) / step } else { 0.0 };
                    if precision == Precision::Int8 {
                        ((scaled - 128.0) as i8) as u8
                    } else {
                        scaled as u8
                    }
                })
                .collect())
        }
    }
}

/// The bytes as JSON numbers: int8 values or uint8 values.
pub fn to_json(bytes: &[u8], precision: Precision) -> serde_json::Value {
    if precision.signed() {
        serde_json::Value::from(bytes.iter().map(|&b| b as i8).collect::<Vec<i8>>())
    } else {
        serde_json::Value::from(bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_packs_msb_first_with_numpys_offset() {
        // packbits([1,0,0,0,0,0,0,1, 1]) = [129, 128]; binary subtracts 128.
        let row = [0.5, -1.0, 0.0, -0.1, -2.0, -3.0, -4.0, 0.1, 9.0];
        assert_eq!(quantize(&row, Precision::Ubinary, None).unwrap(), vec![129, 128]);
        let binary = quantize(&row, Precision::Binary, None).unwrap();
        assert_eq!(binary.iter().map(|&b| b as i8).collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(Precision::Binary.width(9), 2);
    }

    #[test]
    fn scalar_quantization_follows_the_calibration_ranges() {
        let calibration: Vec<&[f32]> = vec![&[0.0, 0.0], &[1.0, 255.0]];
        let ranges = Ranges::from_rows(calibration, 2).unwrap();
        // dim 0: start 0, step 1/255 (0.5 → 127.5, cut to 127); dim 1: start 0, step 1.
        let row = [0.5, 255.0];
        let u = quantize(&row, Precision::Uint8, Some(&ranges)).unwrap();
        assert_eq!(u, vec![127, 255]);
        let i = quantize(&row, Precision::Int8, Some(&ranges)).unwrap();
        assert_eq!(i.iter().map(|&b| b as i8).collect::<Vec<_>>(), vec![0, 127]);
        // Out of range saturates; int8 and uint8 need ranges.
        assert_eq!(
            quantize(&[2.0, -5.0], Precision::Uint8, Some(&ranges)).unwrap(),
            vec![255, 0]
        );
        assert!(quantize(&row, Precision::Int8, None).is_err());
    }
}
