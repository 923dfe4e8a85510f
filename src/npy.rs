//! The NumPy `.npy` format (version 1.0) for float32 matrices: what `ember encode` writes and
//! `numpy.load` reads.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// Writes a little-endian float32 C-order array of shape `(rows, cols)`.
pub fn write_f32(out: &mut impl Write, rows: usize, cols: usize, data: &[f32]) -> std::io::Result<()> {
    assert_eq!(data.len(), rows * cols, "npy data does not match its shape");
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + dict + padding + '\n' is a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header_len = (dict.len() + padding + 1) as u16;
    out.write_all(b"\x93NUMPY\x01\x00")?;
    out.write_all(&header_len.to_le_bytes())?;
    out.write_all(dict.as_bytes())?;
    out.write_all(&vec![b' '; padding])?;
    out.write_all(b"\n")?;
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for x in data {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    out.write_all(&bytes)
}

/// Reads a float32 matrix written by [`write_f32`] (or by NumPy with the same dtype and order):
/// `(rows, cols, data)`.
pub fn read_f32(input: &mut impl Read, name: &str) -> Result<(usize, usize, Vec<f32>)> {
    let bad = |message: &str| Error::input(name.to_string(), format!("not a float32 .npy matrix: {message}"));
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes).map_err(|e| Error::io(name, e))?;
    if bytes.len() < 10 || &bytes[..8] != b"\x93NUMPY\x01\x00" {
        return Err(bad("missing the version 1.0 magic"));
    }
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = bytes
        .get(10..10 + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("dtype must be <f4 in C order"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad("shape is not integers")))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad("expected two dimensions"));
    };
    let body = &bytes[10 + header_len..];
    if body.len() != rows * cols * 4 {
        return Err(bad("data length does not match the shape"));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((rows, cols, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aligned_header() {
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 1.5).collect();
        let mut bytes = Vec::new();
        write_f32(&mut bytes, 3, 4, &data).unwrap();
        assert_eq!((bytes.len() - 12 * 4) % 64, 0);
        let (rows, cols, back) = read_f32(&mut bytes.as_slice(), "test").unwrap();
        assert_eq!((rows, cols), (3, 4));
        assert_eq!(back, data);
    }

    #[test]
    fn rejects_truncated_files() {
        let mut bytes = Vec::new();
        write_f32(&mut bytes, 2, 2, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        bytes.pop();
        assert!(read_f32(&mut bytes.as_slice(), "short").is_err());
        assert!(read_f32(&mut &b"\x93NUMPY"[..], "tiny").is_err());
    }
}
