//! `--output-dtype int8|uint8|binary|ubinary` and `--dimensions N`, in `ember encode` and in
//! `ember serve`: the bytes are sentence-transformers' quantize_embeddings rule applied to the
//! float rows that the same command writes without them.

mod common;
#[cfg(feature = "server")]
mod serve_support;

use std::path::Path;

use common::cli::{ember, encode_base, fails_with, ok, s, scratch};
use common::minilm_dir;
use ember::quantize::{quantize, Precision, Ranges};

const TEXTS: [&str; 4] = [
    "What is Deep Learning?",
    "Deep learning is a subset of machine learning.",
    "The food was delicious and the waiter...",
    "Paris is the capital of France.",
];

/// The rows and bytes of a one-byte-per-element .npy written by ember: (rows, cols, bytes).
fn read_npy_bytes(path: &Path, descr: &str) -> (usize, usize, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains(&format!("'descr': '{descr}'")), "{header}");
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect();
    let body = bytes[10 + header_len..].to_vec();
    assert_eq!(body.len(), shape[0] * shape[1]);
    (shape[0], shape[1], body)
}

fn encode(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let input = dir.join("texts.txt");
    std::fs::write(&input, TEXTS.join("\n") + "\n").unwrap();
    let output = dir.join(name);
    let model = minilm_dir();
    let tail = ["--output", s(&output), "--quiet"];
    ok(ember(&[&encode_base(&model, &input)[..], &tail, extra].concat()));
    output
}

fn float_rows(path: &Path) -> Vec<Vec<f32>> {
    let (_, dim, data) = ember::npy::read_f32(&mut std::fs::File::open(path).unwrap(), "f32").unwrap();
    data.chunks(dim).map(<[f32]>::to_vec).collect()
}

#[test]
fn cli_quantized_outputs_follow_the_sentence_transformers_rule() {
    let dir = scratch("quantized");
    let floats = float_rows(&encode(&dir, "f32.npy", &[]));

    let (rows, cols, bits) = read_npy_bytes(&encode(&dir, "ub.npy", &["--output-dtype", "ubinary"]), "|u1");
    assert_eq!((rows, cols), (4, 384 / 8));
    for (r, row) in floats.iter().enumerate() {
        assert_eq!(
            &bits[r * cols..(r + 1) * cols],
            quantize(row, Precision::Ubinary, None).unwrap()
        );
        // numpy.packbits by hand: bit 7 of byte 0 is dimension 0.
        assert_eq!(bits[r * cols] >> 7, u8::from(row[0] > 0.0));
    }
    let (_, _, signed) = read_npy_bytes(&encode(&dir, "b.npy", &["--output-dtype", "binary"]), "|i1");
    assert!(signed.iter().zip(&bits).all(|(s, u)| *s == u.wrapping_sub(128)));

    // int8 / uint8 with the float rows themselves as calibration.
    let calibration = dir.join("f32.npy");
    let ranges = Ranges::from_rows(floats.iter().map(Vec::as_slice), 384).unwrap();
    for (dtype, descr, precision) in [
        ("int8", "|i1", Precision::Int8),
        ("uint8", "|u1", Precision::Uint8),
    ] {
        let out = encode(
            &dir,
            &format!("{dtype}.npy"),
            &["--output-dtype", dtype, "--calibration", s(&calibration)],
        );
        let (_, cols, data) = read_npy_bytes(&out, descr);
        for (r, row) in floats.iter().enumerate() {
            assert_eq!(
                &data[r * cols..(r + 1) * cols],
                quantize(row, precision, Some(&ranges)).unwrap()
            );
        }
    }
    // Each dimension's minimum lands on 0, its maximum on 255 (or 254, where the f32 step
    // rounds down, as in NumPy).
    let (_, _, u8s) = read_npy_bytes(&dir.join("uint8.npy"), "|u1");
    assert!(u8s.contains(&0) && u8s.iter().any(|&b| b >= 254));

    // JSONL: integers.
    let jsonl = encode(
        &dir,
        "i8.jsonl",
        &["--output-dtype", "int8", "--calibration", s(&calibration)],
    );
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(jsonl).unwrap().lines().next().unwrap()).unwrap();
    assert!(first["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v.as_i64().is_some_and(|x| (-128..=127).contains(&x))));

    // int8 without calibration, or calibration of the wrong width, is an error naming it.
    let input = dir.join("texts.txt");
    let model = minilm_dir();
    let base = ["encode", "--model", s(&model), "--input", s(&input), "--output"];
    let x = dir.join("x.npy");
    fails_with(
        &[&base[..], &[s(&x), "--output-dtype", "int8"]].concat(),
        "--calibration",
    );
    let wrong_width = [
        s(&x),
        "--output-dtype",
        "int8",
        "--calibration",
        s(&calibration),
        "--dimensions",
        "64",
    ];
    fails_with(&[&base[..], &wrong_width].concat(), "384 dimensions");
}

#[test]
fn cli_dimensions_truncates_then_renormalizes() {
    let dir = scratch("dimensions");
    let floats = float_rows(&encode(&dir, "f32.npy", &[]));
    let cut = float_rows(&encode(&dir, "d64.npy", &["--dimensions", "64"]));
    for (full, short) in floats.iter().zip(&cut) {
        assert_eq!(short, &ember::dims::truncate(full, 64, true));
        let norm: f32 = short.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let (model, input, bad) = (minilm_dir(), dir.join("texts.txt"), dir.join("bad.npy"));
    let tail = ["--output", s(&bad), "--dimensions", "385"];
    fails_with(
        &[&encode_base(&model, &input)[..], &tail].concat(),
        "not between 1 and the model's 384",
    );
}

#[cfg(feature = "server")]
#[test]
fn server_encoding_formats_match_the_cli() {
    use serde_json::json;
    let dir = scratch("quantized-serve");
    let floats = float_rows(&encode(&dir, "f32.npy", &[]));
    let (_, cols, bits) = read_npy_bytes(&encode(&dir, "ub.npy", &["--output-dtype", "ubinary"]), "|u1");
    let server = serve_support::Server::start(&minilm_dir(), &[]);
    let (status, body) = server.post("/embed", &json!({"inputs": TEXTS, "encoding_format": "ubinary"}));
    assert_eq!(status, 200, "{body}");
    for r in 0..TEXTS.len() {
        let got: Vec<u8> = body[r]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(got, &bits[r * cols..(r + 1) * cols]);
    }
    // int8 without a server calibration: buckets from the request's own rows.
    let (status, body) = server.post(
        "/v1/embeddings",
        &json!({"input": TEXTS, "encoding_format": "int8"}),
    );
    assert_eq!(status, 200, "{body}");
    let ranges = Ranges::from_rows(floats.iter().map(Vec::as_slice), 384).unwrap();
    for (r, row) in floats.iter().enumerate() {
        let got: Vec<u8> = body["data"][r]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as i8 as u8)
            .collect();
        assert_eq!(got, quantize(row, Precision::Int8, Some(&ranges)).unwrap());
    }
    // dimensions then binary.
    let (_, body) = server.post(
        "/embed",
        &json!({"inputs": TEXTS[0], "dimensions": 64, "encoding_format": "binary"}),
    );
    assert_eq!(body[0].as_array().unwrap().len(), 8);
}
