//! The streaming input reader (ember::stream::input) on arbitrary bytes: the first byte picks the format (text, JSONL with
//! an id field, query/passage pairs), the rest is the input stream. Every line is a parsed item
//! or an error that names its line; line numbers count up from 1 without gaps.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

use ember::stream::input;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let format = match selector % 3 {
        0 => input::Format::Text,
        1 => input::Format::Jsonl {
            text_field: "text".into(),
            id_field: Some("id".into()),
        },
        _ => input::Format::Pairs { id_field: None },
    };
    let name = Path::new("fuzz.jsonl");
    let mut lines = input::Lines::new(Box::new(std::io::Cursor::new(stream.to_vec())), name);
    let mut expected = 1;
    while let Some((number, line)) = lines.next_line().expect("reading memory cannot fail") {
        assert_eq!(number, expected);
        expected += 1;
        assert!(!line.contains(&b'\n'));
        match input::parse(&format, name, number, line) {
            Ok(item) => assert_eq!(item.line, number),
            Err(e) => assert!(e.to_string().contains(&format!("line {number}")), "{e}"),
        }
    }
    let newlines = stream.iter().filter(|&&b| b == b'\n').count() as u64;
    let last_unterminated = u64::from(stream.last().is_some_and(|&b| b != b'\n'));
    assert_eq!(expected - 1, newlines + last_unterminated);
});
