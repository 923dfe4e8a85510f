//! `ember serve` end to end: the real binary on a loopback port, driven over HTTP. Every route's
//! request and response shape against TEI's, OpenAI's and Cohere's documented examples, the
//! numbers against `ember encode` / `ember rerank` on the same texts, and the error answers.

mod common;
mod serve_support;

use base64::Engine as _;
use common::cli::{ember, jsonl_scores, ok, rerank, rerank_model, s, scratch};
use common::*;
use serde_json::{json, Value};
use serve_support::{f32s, Server};

/// `ember encode` of `texts` with `model`: the rows as f32.
fn encode_rows(model: &std::path::Path, texts: &[&str], name: &str) -> Vec<Vec<f32>> {
    let dir = scratch(name);
    let input = dir.join("texts.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let output = dir.join("out.npy");
    ok(ember(&[
        "encode",
        "--model",
        s(model),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--quiet",
    ]));
    let (n, dim, data) = ember::npy::read_f32(&mut std::fs::File::open(&output).unwrap(), "out").unwrap();
    assert_eq!(n, texts.len());
    data.chunks(dim).map(<[f32]>::to_vec).collect()
}

const TEXTS: [&str; 3] = [
    "What is Deep Learning?",
    "Deep learning is a subset of machine learning based on neural networks.",
    "The food was delicious and the waiter...",
];

#[test]
fn embed_routes_match_ember_encode_and_the_documented_shapes() {
    let model = minilm_dir();
    let server = Server::start(&model, &["--query-instruction", "query: "]);
    let want = encode_rows(&model, &TEXTS, "serve-embed");

    // TEI's documented example: one string in, a list of one embedding out.
    let (status, body) = server.post("/embed", &json!({"inputs": "What is Deep Learning?"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(f32s(&body[0]), want[0], "/embed differs from ember encode");

    // A batch: each row bit-identical to ember encode's, whatever it was batched with.
    let (status, body) = server.post("/embed", &json!({"inputs": TEXTS}));
    assert_eq!(status, 200, "{body}");
    for (i, row) in want.iter().enumerate() {
        assert_eq!(&f32s(&body[i]), row, "/embed row {i}");
    }

    // normalize: false gives the raw pooled vector (not unit length); a prompt changes the row.
    let (_, raw) = server.post("/embed", &json!({"inputs": TEXTS[0], "normalize": false}));
    let norm: f32 = f32s(&raw[0]).iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "normalize: false still normalized ({norm})"
    );
    let (status, prompted) = server.post("/embed", &json!({"inputs": TEXTS[0], "prompt_name": "query"}));
    assert_eq!(status, 200);
    assert_eq!(
        f32s(&prompted[0]),
        encode_rows(&model, &["query: What is Deep Learning?"], "serve-prompt")[0]
    );

    // OpenAI's documented request; the response has its fields, usage counts real tokens.
    let (status, body) = server.post(
        "/v1/embeddings",
        &json!({"input": "The food was delicious and the waiter...", "model": "text-embedding-ada-002", "encoding_format": "float"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-ada-002");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(f32s(&body["data"][0]["embedding"]), want[2]);
    let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 2 && body["usage"]["total_tokens"] == tokens, "{body}");

    // base64: the same f32s, little-endian.
    let (_, b64) = server.post(
        "/v1/embeddings",
        &json!({"input": [TEXTS[2]], "encoding_format": "base64"}),
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, want[2]);

    // dimensions: the first N values, renormalized.
    let (status, cut) = server.post("/v1/embeddings", &json!({"input": TEXTS[2], "dimensions": 64}));
    assert_eq!(status, 200, "{cut}");
    let cut = f32s(&cut["data"][0]["embedding"]);
    let head = &want[2][..64];
    let norm = head.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert_eq!(cut.len(), 64);
    for (a, b) in cut.iter().zip(head) {
        assert!((*a as f64 - *b as f64 / norm).abs() < 1e-6);
    }

    // Token ids as input (OpenAI's form): the same as the text they came from.
    let (_, tokens) = server.post("/tokenize", &json!({"inputs": TEXTS[0]}));
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let (status, by_ids) = server.post("/v1/embeddings", &json!({"input": [ids.clone()]}));
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(f32s(&by_ids["data"][0]["embedding"]), want[0]);

    // /tokenize: TEI's token objects; special tokens have no offsets. /decode: back to text.
    let first = &tokens[0][0];
    assert_eq!(
        (first["special"].clone(), first["start"].clone()),
        (json!(true), Value::Null)
    );
    let second = &tokens[0][1];
    assert_eq!(
        (
            second["text"].clone(),
            second["start"].clone(),
            second["stop"].clone()
        ),
        (json!("What"), json!(0), json!(4))
    );
    let (status, decoded) = server.post("/decode", &json!({"ids": ids}));
    assert_eq!(status, 200);
    assert_eq!(decoded, json!(["what is deep learning?"]));

    // /similarity: cosines of ember's own embeddings.
    let (status, sims) = server.post(
        "/similarity",
        &json!({"inputs": {"source_sentence": TEXTS[0], "sentences": [TEXTS[1], TEXTS[2]]}}),
    );
    assert_eq!(status, 200, "{sims}");
    for (k, sim) in f32s(&sims).iter().enumerate() {
        let expected = ember::dims::cosine(&want[0], &want[k + 1]);
        assert!(
            (sim - expected).abs() < 1e-6,
            "similarity {k}: {sim} vs {expected}"
        );
    }

    // /info, /health, /metrics.
    let (status, info) = server.get("/info");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["max_input_length"], 256);
    assert_eq!(info["max_client_batch_size"], 32);
    assert_eq!(server.get("/health").0, 200);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "te_request_count",
        "te_request_success",
        "te_queue_size",
        "te_batch_next_size_bucket",
        "te_request_inference_duration_sum",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[test]
fn rerank_routes_match_ember_rerank() {
    let model = rerank_model();
    let server = Server::start(&model, &["--auto-truncate"]);
    let query = "What is Deep Learning?";
    let texts = ["Deep Learning is not...", "Deep learning is..."];
    // ember rerank --sigmoid on the same pairs.
    let dir = scratch("serve-rerank");
    let input = dir.join("passages.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let output = dir.join("scores.jsonl");
    ok(rerank(
        &model,
        &input,
        &output,
        &["--query", query, "--sigmoid", "--quiet"],
    ));
    let want = jsonl_scores(&output);

    // TEI's documented example: ranks best first, with index and score.
    let (status, body) = server.post(
        "/rerank",
        &json!({"query": query, "texts": texts, "return_text": true}),
    );
    assert_eq!(status, 200, "{body}");
    let ranks = body.as_array().unwrap();
    assert_eq!(ranks.len(), 2);
    for r in ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - want[i]).abs() < 1e-6);
        assert_eq!(r["text"], texts[i]);
    }
    assert!(ranks[0]["score"].as_f64() >= ranks[1]["score"].as_f64());

    // Cohere's shape: top_n, relevance_score, documents as strings or {text}.
    let (status, body) = server.post(
        "/v1/rerank",
        &json!({"model": "rerank-v3.5", "query": query, "top_n": 1, "documents": [texts[0], {"text": texts[1]}], "return_documents": true}),
    );
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    let best = if want[0] >= want[1] { 0 } else { 1 };
    assert_eq!(results[0]["index"], best);
    assert_eq!(results[0]["document"]["text"], texts[best]);
    assert!((results[0]["relevance_score"].as_f64().unwrap() as f32 - want[best]).abs() < 1e-6);

    // /predict: one label per model output, sigmoid for a single label; a batch of pairs.
    let (status, body) = server.post(
        "/predict",
        &json!({"inputs": [[query, texts[0]], [query, texts[1]]]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[1][0]["label"], "LABEL_0");
    assert!((body[1][0]["score"].as_f64().unwrap() as f32 - want[1]).abs() < 1e-6);

    // An embedding route on a cross-encoder says which routes it has.
    let (status, body) = server.post("/embed", &json!({"inputs": "x"}));
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("/rerank"));
}

#[test]
fn errors_have_tei_and_openai_statuses_and_bodies() {
    let model = minilm_dir();
    let server = Server::start(
        &model,
        &["--max-client-batch-size", "4", "--payload-limit", "100000"],
    );
    let check = |path: &str, body: &str, status: u16, error_type: &str| {
        let (got, answer) = server.post_raw(path, body, &[]);
        assert_eq!(got, status, "{path} {body}: {answer}");
        if status == 200 {
            return;
        }
        if path.starts_with("/v1/") {
            assert_eq!(answer["error"]["type"], error_type, "{answer}");
            assert_eq!(answer["error"]["code"], status, "{answer}");
        } else {
            assert_eq!(answer["error_type"], error_type, "{answer}");
            assert!(answer["error"].is_string(), "{answer}");
        }
    };
    check("/embed", r#"{"inputs": []}"#, 400, "empty");
    check(
        "/embed",
        r#"{"inputs": ["a", "b", "c", "d", "e"]}"#,
        413,
        "validation",
    );
    let long = "word ".repeat(400);
    check("/embed", &json!({"inputs": long}).to_string(), 413, "validation");
    check(
        "/embed",
        &json!({"inputs": long, "truncate": true}).to_string(),
        200,
        "",
    );
    check("/embed", r#"{"inputs": "#, 400, "validation");
    check("/embed", r#"{"inputs": 7}"#, 422, "validation");
    check(
        "/embed",
        r#"{"inputs": "x", "prompt_name": "nope"}"#,
        422,
        "tokenizer",
    );
    // (A body over --payload-limit is 413 before it is read: tests/serve_hostile.rs sends those
    // on raw sockets, since the server closes the connection without reading the rest.)
    check(
        "/v1/embeddings",
        r#"{"input": "x", "dimensions": 0}"#,
        422,
        "tokenizer",
    );
    check(
        "/v1/embeddings",
        r#"{"input": "x", "dimensions": 385}"#,
        422,
        "tokenizer",
    );
    check("/v1/embeddings", r#"{"input": []}"#, 400, "empty");
    check("/v1/embeddings", r#"{"input": [[999999]]}"#, 422, "tokenizer");
    check("/v1/embeddings", r#"{"inputs": "x"}"#, 422, "validation");
}

/// A 200 answer when called with the right key; the status otherwise.
#[test]
fn api_key_guards_every_route_but_health_and_metrics() {
    let server = Server::start(&minilm_dir(), &["--api-key", "sesame"]);
    let body = r#"{"inputs": "x"}"#;
    assert_eq!(server.post_raw("/embed", body, &[]).0, 401);
    assert_eq!(
        server
            .post_raw("/embed", body, &[("authorization", "Bearer wrong")])
            .0,
        401
    );
    assert_eq!(
        server
            .post_raw("/embed", body, &[("authorization", "Bearer sesame")])
            .0,
        200
    );
    let (status, answer) = server.post_raw("/v1/embeddings", r#"{"input": "x"}"#, &[]);
    assert_eq!((status, answer["error"]["code"].clone()), (401, json!(401)));
    assert_eq!(server.get("/info").0, 401);
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/metrics").0, 200);
}
