//! Matryoshka truncation: keep the first `dimensions` values of an embedding, then L2-normalize
//! again when the embedding was normalized (as OpenAI's `dimensions` and sentence-transformers'
//! `truncate_dim` followed by normalization do), so that dot products stay cosines.

use crate::error::{Error, Result};

/// `dimensions` must be between 1 and the model's width.
pub fn check(dimensions: usize, width: usize) -> Result<()> {
    if dimensions == 0 || dimensions > width {
        return Err(Error::Option {
            option: "dimensions".into(),
            message: format!("{dimensions} is not between 1 and the model's {width} dimensions"),
        });
    }
    Ok(())
}

/// The first `dimensions` values of `row`, renormalized when `normalize`. A row of zeros stays
/// zeros (no division by zero).
pub fn truncate(row: &[f32], dimensions: usize, normalize: bool) -> Vec<f32> {
    let mut out = row[..dimensions.min(row.len())].to_vec();
    if normalize {
        let norm = out.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
        }
    }
    out
}

/// Cosine similarity, in f64 (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na * nb)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_renormalizes_only_when_asked() {
        let row = [0.6, 0.8, 0.0, 0.0];
        assert_eq!(truncate(&row, 1, true), vec![1.0]);
        assert_eq!(truncate(&row, 1, false), vec![0.6]);
        assert_eq!(truncate(&[0.0, 0.0], 1, true), vec![0.0]);
        assert!(check(0, 4).is_err() && check(5, 4).is_err() && check(4, 4).is_ok());
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
