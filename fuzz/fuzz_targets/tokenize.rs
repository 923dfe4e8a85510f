//! Arbitrary text (valid UTF-8 of any content, or a query/passage pair split at the first NUL)
//! through the fixture model's tokenizer: every sequence fits the length asked for, every id
//! fits the embedding tables, and nothing panics.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ember::tokenize::TextTokenizer;
use libfuzzer_sys::fuzz_target;

const VOCAB: usize = 1000;

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-bert-embed-f32");
        let config = ember::config::ModelConfig::load(&dir).expect("fixture config");
        assert!(config.vocab_size <= VOCAB);
        TextTokenizer::load(&dir, config.vocab_size, config.type_vocab_size).expect("fixture tokenizer")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&len_byte, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let t = tokenizer();
    let max_length = t.min_max_length() + usize::from(len_byte) % 64;
    let sequence = match text.split_once('\0') {
        Some((query, passage)) => t.encode_pair(query, passage, max_length),
        None => t.encode(text, max_length),
    }
    .expect("any UTF-8 text tokenizes");
    assert!(!sequence.is_empty() && sequence.len() <= max_length);
    assert_eq!(sequence.type_ids.len(), sequence.len());
    assert!(sequence.token_ids.iter().all(|&id| (id as usize) < VOCAB));
    assert!(sequence.type_ids.iter().all(|&id| id < 2));
});
