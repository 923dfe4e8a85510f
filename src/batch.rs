//! Packing: many tokenized sequences laid end to end in one flat token array, with no padding
//! anywhere. `cu_seqlens` (cumulative sequence lengths, as FlashAttention and TEI call them) tells
//! where each sequence starts: sequence `s` owns tokens `cu_seqlens[s]..cu_seqlens[s + 1]`.

use crate::error::{Error, Result};

/// One tokenized input: a text or a (query, passage) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Vocabulary ids, special tokens included.
    pub token_ids: Vec<u32>,
    /// Token type (segment) ids, one per token: 0 for the query, 1 for the passage of a pair.
    pub type_ids: Vec<u32>,
    /// Whether tokens were cut to fit the max length.
    pub truncated: bool,
}

impl Sequence {
    /// Tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.token_ids.len()
    }

    /// Whether the sequence has no token at all.
    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty()
    }
}

/// A packed batch: `tokens` rows in every activation, `cu_seqlens.len() - 1` sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// range [0, vocab_size), one per token
    pub token_ids: Vec<u32>,
    /// range [0, type_vocab_size), one per token
    pub type_ids: Vec<u32>,
    /// index into the position table, one per token (XLM-R offsets these by padding_idx + 1)
    pub position_ids: Vec<u32>,
    /// sequence boundaries, `cu_seqlens[0] == 0`, last entry == number of tokens
    pub cu_seqlens: Vec<u32>,
    /// length of the longest sequence
    pub max_len: usize,
}

impl Batch {
    /// Packs sequences in the given order. `position_offset` is added to every position id
    /// (0 for BERT, padding_idx + 1 for XLM-RoBERTa). Empty sequences are rejected: every
    /// sequence carries at least its special tokens, and pooling an empty one has no meaning.
    pub fn pack(sequences: &[&Sequence], position_offset: u32) -> Result<Batch> {
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();
        let mut batch = Batch {
            token_ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            position_ids: Vec::with_capacity(tokens),
            cu_seqlens: Vec::with_capacity(sequences.len() + 1),
            max_len: 0,
        };
        batch.cu_seqlens.push(0);
        for (index, seq) in sequences.iter().enumerate() {
            if seq.is_empty() || seq.type_ids.len() != seq.len() {
                return Err(Error::input(
                    format!("sequence {index}"),
                    format!(
                        "{} token ids and {} type ids; need as many of each and at least one",
                        seq.len(),
                        seq.type_ids.len()
                    ),
                ));
            }
            batch.token_ids.extend_from_slice(&seq.token_ids);
            batch.type_ids.extend_from_slice(&seq.type_ids);
            batch
                .position_ids
                .extend((0..seq.len() as u32).map(|p| p + position_offset));
            batch.cu_seqlens.push(batch.token_ids.len() as u32);
            batch.max_len = batch.max_len.max(seq.len());
        }
        Ok(batch)
    }

    /// Tokens of every sequence together: the rows of the batch's activations.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }

    /// Sequences in the batch.
    pub fn num_sequences(&self) -> usize {
        self.cu_seqlens.len() - 1
    }

    /// Why the batch's arrays disagree, if they do: one type id and one position id per token,
    /// `cu_seqlens` rising strictly (no empty sequence) from 0 to the token count, and `max_len`
    /// the longest sequence. Every backend and the encoder check a batch with this one rule.
    pub fn layout_error(&self) -> Option<String> {
        let tokens = self.token_ids.len();
        let cu = &self.cu_seqlens;
        let longest = cu
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]) as usize)
            .max()
            .unwrap_or(0);
        if self.type_ids.len() != tokens || self.position_ids.len() != tokens {
            Some(format!(
                "{tokens} token ids, {} type ids and {} position ids",
                self.type_ids.len(),
                self.position_ids.len()
            ))
        } else if cu.first() != Some(&0)
            || cu.last().map(|&t| t as usize) != Some(tokens)
            || cu.windows(2).any(|w| w[1] <= w[0])
        {
            Some(format!(
                "cu_seqlens must rise strictly from 0 to the token count {tokens}, got {cu:?}"
            ))
        } else if self.max_len != longest {
            Some(format!(
                "max_len is {}, the longest sequence has {longest} tokens",
                self.max_len
            ))
        } else {
            None
        }
    }

    /// The first token whose id in `ids` is `entries` or more, as (token, id): an id that would
    /// read past a table of `entries` rows.
    pub fn first_id_past(ids: &[u32], entries: usize) -> Option<(usize, u32)> {
        ids.iter()
            .position(|&id| id as usize >= entries)
            .map(|t| (t, ids[t]))
    }

    /// Sequences `range` of this batch as a batch of their own, ids unchanged.
    pub fn sequences(&self, range: std::ops::Range<usize>) -> Batch {
        let tokens = self.cu_seqlens[range.start] as usize..self.cu_seqlens[range.end] as usize;
        let base = self.cu_seqlens[range.start];
        let cu_seqlens: Vec<u32> = self.cu_seqlens[range.start..=range.end]
            .iter()
            .map(|&c| c - base)
            .collect();
        let max_len = cu_seqlens
            .windows(2)
            .map(|w| (w[1] - w[0]) as usize)
            .max()
            .unwrap_or(0);
        Batch {
            token_ids: self.token_ids[tokens.clone()].to_vec(),
            type_ids: self.type_ids[tokens.clone()].to_vec(),
            position_ids: self.position_ids[tokens].to_vec(),
            cu_seqlens,
            max_len,
        }
    }

    /// Token range of sequence `s`.
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        self.cu_seqlens[s] as usize..self.cu_seqlens[s + 1] as usize
    }
}

/// Splits `lengths` (token counts, in input order) into batches of input indices such that no
/// batch holds more than `token_budget` tokens or `max_sequences` sequences. Indices are sorted by
/// length first, so that each batch holds sequences of similar length: attention work per batch
/// is then even, and the split does not depend on where a text sits in the input. A sequence
/// longer than the budget gets a batch of its own.
pub fn plan_batches(lengths: &[usize], token_budget: usize, max_sequences: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut current_tokens = 0;
    for i in order {
        let fits = current_tokens + lengths[i] <= token_budget && current.len() < max_sequences;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
            current_tokens = 0;
        }
        current.push(i);
        current_tokens += lengths[i];
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize) -> Sequence {
        Sequence {
            token_ids: (0..n as u32).map(|t| t + 100).collect(),
            type_ids: vec![0; n],
            truncated: false,
        }
    }

    #[test]
    fn pack_lays_sequences_end_to_end() {
        let (a, b, c) = (seq(3), seq(1), seq(5));
        let batch = Batch::pack(&[&a, &b, &c], 2).unwrap();
        assert_eq!(batch.cu_seqlens, vec![0, 3, 4, 9]);
        assert_eq!(batch.max_len, 5);
        assert_eq!(batch.position_ids[..4], [2, 3, 4, 2]);
        assert_eq!(batch.range(2), 4..9);
        assert_eq!(batch.num_sequences(), 3);
    }

    #[test]
    fn a_slice_of_sequences_is_the_batch_packed_from_them() {
        let seqs = [seq(3), seq(1), seq(5), seq(2)];
        let whole = Batch::pack(&seqs.iter().collect::<Vec<_>>(), 2).unwrap();
        for (a, b) in [(0, 4), (0, 1), (1, 3), (2, 4), (3, 4)] {
            let part = whole.sequences(a..b);
            let want = Batch::pack(&seqs[a..b].iter().collect::<Vec<_>>(), 2).unwrap();
            assert_eq!(part, want, "sequences {a}..{b}");
            assert_eq!(part.layout_error(), None);
        }
    }

    #[test]
    fn pack_rejects_empty_and_mismatched_sequences() {
        let empty = seq(0);
        assert!(Batch::pack(&[&empty], 0).is_err());
        let mut bad = seq(3);
        bad.type_ids.pop();
        let err = Batch::pack(&[&seq(2), &bad], 0).unwrap_err().to_string();
        assert!(err.contains("sequence 1"), "{err}");
    }

    #[test]
    fn plan_respects_budget_and_covers_every_index_once() {
        let lengths = [5, 1, 9, 3, 3, 20, 7, 2];
        let batches = plan_batches(&lengths, 10, 3);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for b in &batches {
            let tokens: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(b.len() <= 3);
            assert!(tokens <= 10 || b.len() == 1, "{b:?}");
        }
    }
}
