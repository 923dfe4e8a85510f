//! The reading end of the pipeline: lines of a file or of standard input, parsed into texts or
//! (query, passage) pairs, with the line number of each kept for errors and for `--resume`.
//!
//! Lines are split on `\n`; a `\r` before it is dropped, and a final newline does not add an
//! empty text. In the plain-text format an empty line is the empty text.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};
use serde_json::Value;

/// How each input line is read.
#[derive(Debug, Clone)]
pub enum Format {
    /// The line is the text.
    Text,
    /// The line is a JSON object; the text is `text_field`, the optional id `id_field`.
    Jsonl {
        /// The field holding the text.
        text_field: String,
        /// The field holding the id, if any.
        id_field: Option<String>,
    },
    /// A JSON object with `query` and `passage` strings (and the optional id).
    Pairs {
        /// The field holding the id, if any.
        id_field: Option<String>,
    },
}

/// What a line holds once parsed.
#[derive(Debug, Clone)]
pub enum Payload {
    /// One text to embed (or a passage, when the query is given once for all lines).
    Text(String),
    /// A query and a passage to score together.
    Pair(String, String),
}

/// One parsed input line.
#[derive(Debug, Clone)]
pub struct Item {
    /// 1-based line number in the input file.
    pub line: u64,
    /// The JSONL id field's value, copied to JSONL output.
    pub id: Option<Value>,
    /// The text or pair.
    pub payload: Payload,
}

/// A contiguous slice `[start, end)` of the input's lines (0-based line indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineRange {
    /// The first line of the slice.
    pub start: u64,
    /// One past the last line; `None`: to the end of the input.
    pub end: Option<u64>,
}

/// `--shard I/N`: shard I (0-based) of N gets lines `[floor(I*L/N), floor((I+1)*L/N))` of the
/// L lines, so that shards 0, 1, ..., N-1 concatenate to the whole input in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u64,
    /// How many shards the input is cut into.
    pub count: u64,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: I/N with 0 <= I < N (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u64, u64) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's lines of an input of `lines` lines.
    pub fn range(self, lines: u64) -> LineRange {
        let at = |i: u64| (i as u128 * lines as u128 / self.count as u128) as u64;
        LineRange {
            start: at(self.index),
            end: Some(at(self.index + 1)),
        }
    }
}

/// Lines in a file as [`Lines`] counts them (a final line without a newline counts).
pub fn count_lines(path: &Path) -> Result<u64> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut count, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
    Ok(count + u64::from(last != b'\n'))
}

/// Opens the input: a file, or standard input for `-`.
pub fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    if path == Path::new("-") {
        Ok(Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())))
    } else {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(Box::new(BufReader::with_capacity(1 << 20, file)))
    }
}

/// Reads lines one at a time, numbering them from 1.
pub struct Lines {
    reader: Box<dyn BufRead + Send>,
    name: PathBuf,
    number: u64,
    buf: Vec<u8>,
}

impl Lines {
    /// Lines of `reader`; `name` is the input's name in error messages.
    pub fn new(reader: Box<dyn BufRead + Send>, name: &Path) -> Lines {
        Lines {
            reader,
            name: name.to_path_buf(),
            number: 0,
            buf: Vec::new(),
        }
    }

    /// The next line without its ending, and its 1-based number; `None` at the end.
    pub fn next_line(&mut self) -> Result<Option<(u64, &[u8])>> {
        self.buf.clear();
        let n = self
            .reader
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| Error::io(&self.name, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.number += 1;
        let mut line = &self.buf[..];
        line = line.strip_suffix(b"\n").unwrap_or(line);
        line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some((self.number, line)))
    }
}

/// Parses one line; the error names the file and the line.
pub fn parse(format: &Format, input: &Path, line: u64, bytes: &[u8]) -> Result<Item> {
    let location = || format!("{} line {line}", input.display());
    let text =
        std::str::from_utf8(bytes).map_err(|e| Error::input(location(), format!("invalid UTF-8: {e}")))?;
    let json = || -> Result<Value> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::input(location(), format!("not JSON: {e}")))?;
        if value.is_object() {
            Ok(value)
        } else {
            Err(Error::input(location(), "not a JSON object"))
        }
    };
    let string = |value: &Value, name: &str| {
        value
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| Error::input(location(), format!("needs a string field `{name}`")))
    };
    let id = |value: &mut Value, field: &Option<String>| -> Result<Option<Value>> {
        match field {
            None => Ok(None),
            Some(name) => match value.get_mut(name.as_str()).map(Value::take) {
                Some(id @ (Value::String(_) | Value::Number(_))) => Ok(Some(id)),
                _ => Err(Error::input(
                    location(),
                    format!("needs a string or number field `{name}` (--id-field)"),
                )),
            },
        }
    };
    let (id, payload) = match format {
        Format::Text => (None, Payload::Text(text.to_owned())),
        Format::Jsonl { text_field, id_field } => {
            let mut value = json()?;
            let text = string(&value, text_field)?;
            (id(&mut value, id_field)?, Payload::Text(text))
        }
        Format::Pairs { id_field } => {
            let mut value = json()?;
            let pair = Payload::Pair(string(&value, "query")?, string(&value, "passage")?);
            (id(&mut value, id_field)?, pair)
        }
    };
    Ok(Item { line, id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_line_once_in_order() {
        for lines in [0u64, 1, 7, 10, 1001] {
            for count in 1..6u64 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(lines);
                    assert_eq!(r.start, next);
                    next = r.end.unwrap();
                }
                assert_eq!(next, lines);
            }
        }
        assert!("3/3".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
    }

    #[test]
    fn lines_drop_endings_and_keep_empty_texts() {
        let data: &[u8] = b"a\r\n\nb";
        let mut lines = Lines::new(Box::new(data), Path::new("x"));
        let mut got = Vec::new();
        while let Some((n, l)) = lines.next_line().unwrap() {
            got.push((n, l.to_vec()));
        }
        assert_eq!(
            got,
            vec![(1, b"a".to_vec()), (2, b"".to_vec()), (3, b"b".to_vec())]
        );
    }

    #[test]
    fn jsonl_errors_name_the_line() {
        let f = Format::Jsonl {
            text_field: "text".into(),
            id_field: Some("id".into()),
        };
        let item = parse(&f, Path::new("in"), 4, br#"{"text": "hi", "id": 7}"#).unwrap();
        assert_eq!(item.id, Some(Value::from(7)));
        let err = parse(&f, Path::new("in"), 5, br#"{"id": 7}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 5") && err.contains("`text`"), "{err}");
        let err = parse(&f, Path::new("in"), 6, b"nope").unwrap_err().to_string();
        assert!(err.contains("line 6") && err.contains("not JSON"), "{err}");
    }
}
