//! One head of attention on AMX tiles, for the bf16 CPU path (head dimensions that are multiples
//! of 32): `context = softmax(Q Kᵀ / sqrt(d)) V` with Q, K, V and the probabilities rounded to
//! bf16, products accumulated in f32, softmax in f32.
//!
//! Per block of 16 queries:
//! - scores: one 16 x 16 f32 tile per block of 16 keys, `tdpbf16ps` over the head dimension in
//!   steps of 32 (one step for d = 32, two for d = 64), four key blocks in flight (`tmm0..3`), the
//!   queries in `tmm4, 5`, the keys in `tmm6, 7`; stored to a 16 x L slab (never L x L);
//! - softmax of each slab row in f32 (the same code as the f32 path), written as bf16 A tiles of
//!   16 queries x 32 keys, zero past the sequence's end;
//! - context: `d / 16` accumulator tiles, one `tdpbf16ps` per 32 keys each, scaled by the
//!   inverse row sums on the way out.
//!
//! Layouts the tiles need (built once per head from the f32 qkv rows):
//! - keys as the B operand of Q Kᵀ: per key block and step, 16 rows (pairs of dimensions) of 16
//!   keys x 2 bf16: the transpose of the keys' bf16 pairs;
//! - values as the B operand of P V: per 32 keys and 16 columns, 16 rows (pairs of keys) of 16
//!   columns x 2 bf16.
//!
//! Keys past the end are zero rows of K (their scores are dropped) and zero rows of V; queries
//! past the end compute on zeros and are not stored. Each (sequence, head) is independent of the
//! batch around it, so batching invariance holds.

use super::amx::{bf16_pairs, load_tile_config, release_tiles, zero_accumulators};
use super::attention::softmax_numerators;

/// Rows of a tile, keys per key block, queries per query block.
const TILE: usize = 16;
/// bf16 values per tile row (64 bytes): one step of the head dimension, or 32 keys of P.
const STEP: usize = 32;

/// One 1 KiB tile, 64-byte aligned.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Tile([u32; TILE * TILE]);

const ZERO: Tile = Tile([0; TILE * TILE]);

/// Buffers reused from head to head.
#[derive(Default)]
pub(super) struct Scratch {
    keys: Vec<Tile>,
    values: Vec<Tile>,
    queries: Vec<Tile>,
    probabilities: Vec<Tile>,
    scores: Vec<f32>,
    context: Vec<Tile>,
}

/// Whether [`attend_head`] takes this head dimension.
pub(super) fn supports(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(STEP) && head_dim <= 128
}

/// The context of head `h` for the `len` tokens whose qkv rows are `rows` (stride `3 * heads *
/// head_dim`), written to `out[i * ldo..i * ldo + head_dim]` for token `i`.
///
/// # Panics
/// If AMX is not available, `head_dim` is not [`supports`]ed, or a slice is too short.
#[allow(clippy::too_many_arguments)] // strides and extents of one head's slice of the batch
pub(super) fn attend_head(
    rows: &[f32],
    len: usize,
    heads: usize,
    head_dim: usize,
    h: usize,
    scratch: &mut Scratch,
    out: &mut [f32],
    ldo: usize,
) {
    assert!(
        super::amx::is_available(),
        "AMX attention on a CPU or OS without AMX"
    );
    assert!(supports(head_dim), "AMX attention: head dimension {head_dim}");
    if len == 0 {
        return;
    }
    let hidden = heads * head_dim;
    let ld = 3 * hidden;
    let (q_at, k_at, v_at) = (h * head_dim, hidden + h * head_dim, 2 * hidden + h * head_dim);
    let steps = head_dim / STEP;
    let key_blocks = len.div_ceil(TILE);
    let key_steps = len.div_ceil(STEP);
    let padded = key_steps * STEP;
    let scale = 1.0 / (head_dim as f32).sqrt();

    scratch.keys.clear();
    scratch.keys.resize(2 * key_steps * steps, ZERO);
    scratch.values.clear();
    let column_blocks = head_dim / TILE;
    scratch.values.resize(key_steps * column_blocks, ZERO);
    // SAFETY: AVX-512F/BW and AVX512-BF16 are present (implied by AMX's availability, asserted
    // above); every row read is inside `rows`, every tile written inside the buffers sized here.
    unsafe {
        pack_keys(rows, ld, k_at, len, head_dim, &mut scratch.keys);
        pack_values(rows, ld, v_at, len, head_dim, &mut scratch.values);
    }
    scratch.queries.resize(steps, ZERO);
    scratch.probabilities.resize(key_steps, ZERO);
    scratch.scores.resize(TILE * padded, 0.0);
    scratch.context.resize(column_blocks, ZERO);
    // SAFETY: AMX is present and permitted (asserted above); released below.
    unsafe { load_tile_config() };
    for first in (0..len).step_by(TILE) {
        let queries = TILE.min(len - first);
        // Queries of this block as A tiles: row r = query first + r, 32 dimensions per step.
        for (t, tile) in scratch.queries.iter_mut().enumerate() {
            for r in 0..TILE {
                let row = (r < queries).then(|| &rows[(first + r) * ld + q_at + t * STEP..][..STEP]);
                // SAFETY: as for the keys above.
                unsafe { store_pairs(row.unwrap_or(&[]), &mut tile.0[r * TILE..(r + 1) * TILE]) };
            }
        }
        // SAFETY: the tile configuration is loaded; `queries` holds `steps` tiles, `keys`
        // `key_blocks * steps` (rounded up to whole 32-key steps), `scores` 16 rows of `padded`.
        unsafe {
            scores(
                &scratch.queries,
                &scratch.keys,
                steps,
                key_blocks,
                &mut scratch.scores,
                padded,
            )
        };
        let mut inverse_sums = [0.0f32; TILE];
        for (r, inverse_sum) in inverse_sums.iter_mut().enumerate() {
            if r >= queries {
                for tile in &mut scratch.probabilities {
                    tile.0[r * TILE..(r + 1) * TILE].fill(0);
                }
                continue;
            }
            let row = &mut scratch.scores[r * padded..(r + 1) * padded];
            *inverse_sum = 1.0 / softmax_numerators(row, len, scale);
            for (s, tile) in scratch.probabilities.iter_mut().enumerate() {
                let p = &row[s * STEP..(s * STEP + STEP).min(len)];
                // SAFETY: as for the keys above; keys past the end become zeros.
                unsafe { store_pairs(p, &mut tile.0[r * TILE..(r + 1) * TILE]) };
            }
        }
        // SAFETY: as above; `probabilities` holds `key_steps` tiles, `values` `key_steps *
        // column_blocks`, `context` `column_blocks`.
        unsafe {
            context(
                &scratch.probabilities,
                &scratch.values,
                key_steps,
                column_blocks,
                &mut scratch.context,
            )
        };
        for (r, inverse_sum) in inverse_sums.iter().enumerate().take(queries) {
            let out_row = &mut out[(first + r) * ldo..(first + r) * ldo + head_dim];
            for (c, tile) in scratch.context.iter().enumerate() {
                let sums = &tile.0[r * TILE..(r + 1) * TILE];
                for (o, &bits) in out_row[c * TILE..(c + 1) * TILE].iter_mut().zip(sums) {
                    *o = f32::from_bits(bits) * inverse_sum;
                }
            }
        }
    }
    // SAFETY: the configuration was loaded above.
    unsafe { release_tiles() };
}

/// `out[q]` = bf16 of `values[2q]` (low half) and `values[2q + 1]` (high half), rounded to
/// nearest even, for q < 16; values past the end of `values` (at most 32) are zeros.
///
/// # Safety
/// AVX-512F and AVX512-BF16 present.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn store_pairs(values: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(out.len() == TILE);
    // SAFETY: the features `bf16_pairs` needs are enabled here (it asserts its length itself);
    // `out` is 16 u32 (asserted), the 64 bytes the store writes.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr() as *mut _, bf16_pairs(values)) };
}

/// Keys as the B operand of Q Kᵀ: tile (key block b, step t), row q, column j = the bf16 pair
/// (2q, 2q + 1) of step t's dimensions of key 16b + j. Each key's pairs are one vector, scattered
/// down a column of the tile (the transpose).
///
/// # Safety
/// AVX-512F and AVX512-BF16 present; `keys` holds `ceil(len / 16) * head_dim / 32` zeroed tiles.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_keys(rows: &[f32], ld: usize, at: usize, len: usize, head_dim: usize, keys: &mut [Tile]) {
    use std::arch::x86_64::*;
    let steps = head_dim / STEP;
    let down_a_column = _mm512_setr_epi32(
        0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
    );
    for key in 0..len {
        let k = &rows[key * ld + at..][..head_dim];
        let (block, j) = (key / TILE, key % TILE);
        for t in 0..steps {
            // SAFETY: the features `bf16_pairs` needs are enabled here; it gets STEP = 32 values.
            let pairs = unsafe { bf16_pairs(&k[t * STEP..(t + 1) * STEP]) };
            let tile = &mut keys[block * steps + t];
            // SAFETY: `keys[block * steps + t]` is a bounds-checked 16 x 16 u32 tile; the scatter
            // writes column j < 16 of its 16 rows (u32 offsets j + 16q, q < 16), inside it.
            unsafe {
                _mm512_i32scatter_epi32::<4>(tile.0.as_mut_ptr().add(j) as *mut _, down_a_column, pairs)
            };
        }
    }
}

/// Values as the B operand of P V: tile (32-key step s, column block c), row q, column j = the
/// bf16 pair (V[32s + 2q][16c + j], V[32s + 2q + 1][16c + j]); a missing second key is zero.
/// Per pair of keys and column block: one conversion of both rows, one interleave.
///
/// # Safety
/// AVX-512F/BW and AVX512-BF16 present; `values` holds `ceil(len / 32) * head_dim / 16` zeroed
/// tiles.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_values(rows: &[f32], ld: usize, at: usize, len: usize, head_dim: usize, values: &mut [Tile]) {
    use std::arch::x86_64::*;
    let column_blocks = head_dim / TILE;
    // Words 0..16 are the first key's columns, 16..32 the second's: take them alternately.
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18,
        2, 17, 1, 16, 0,
    );
    for key_pair in 0..len.div_ceil(2) {
        let first = &rows[2 * key_pair * ld + at..][..head_dim];
        let second = (2 * key_pair + 1 < len).then(|| &rows[(2 * key_pair + 1) * ld + at..][..head_dim]);
        let (s, q) = (key_pair / TILE, key_pair % TILE);
        for c in 0..column_blocks {
            // SAFETY: `first` and `second` are `head_dim` values (bounds-checked slices) and
            // c < head_dim / 16, so each load reads 16 floats inside them. The transmute turns
            // 512 bits of bf16 pairs into 512 bits of integers: plain vectors of one size.
            let both: __m512i = unsafe {
                let a = _mm512_loadu_ps(first.as_ptr().add(c * TILE));
                let b = second.map_or(_mm512_setzero_ps(), |v| _mm512_loadu_ps(v.as_ptr().add(c * TILE)));
                std::mem::transmute(_mm512_cvtne2ps_pbh(b, a))
            };
            let pairs = _mm512_permutexvar_epi16(interleave, both);
            let tile = &mut values[s * column_blocks + c];
            // SAFETY: row q < 16 of a bounds-checked 16 x 16 u32 tile: the 64 bytes written.
            unsafe { _mm512_storeu_si512(tile.0.as_mut_ptr().add(q * TILE) as *mut _, pairs) };
        }
    }
}

/// The raw scores of 16 queries against every key: `scores[r * ld + key]`, four key blocks at a
/// time in `tmm0..3`.
///
/// # Safety
/// The 16 x 64-byte tile configuration is loaded; `queries` holds `steps` tiles, `keys`
/// `key_blocks * steps`, `scores` at least 16 rows of `key_blocks * 16` at stride `ld`.
unsafe fn scores(
    queries: &[Tile],
    keys: &[Tile],
    steps: usize,
    key_blocks: usize,
    scores: &mut [f32],
    ld: usize,
) {
    use std::arch::asm;
    debug_assert!(queries.len() >= steps && keys.len() >= key_blocks * steps);
    debug_assert!(scores.len() >= (TILE - 1) * ld + key_blocks * TILE);
    let stride = TILE * 4;
    let out = scores.as_mut_ptr();
    for group in (0..key_blocks).step_by(4) {
        // SAFETY: the tile configuration is loaded (the caller's contract).
        unsafe { zero_accumulators() };
        for t in 0..steps {
            // SAFETY: the configuration is loaded; `queries[t]` (bounds-checked) is a whole
            // 1 KiB tile, 16 rows of 64 bytes at the stride given.
            unsafe {
                asm!("tileloadd tmm4, [{q} + {s} * 1]", q = in(reg) queries[t].0.as_ptr(), s = in(reg) stride,
                    options(nostack, preserves_flags, readonly))
            };
            // Blocks past the last compute on whatever tile sits there (the block index is
            // clamped) and are never stored.
            let key = |i: usize| keys[(group + i).min(key_blocks - 1) * steps + t].0.as_ptr();
            // SAFETY: as for the query tile: each key tile comes from a bounds-checked index.
            unsafe {
                asm!(
                "tileloadd tmm6, [{k0} + {s} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{k1} + {s} * 1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm6, [{k2} + {s} * 1]",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tileloadd tmm7, [{k3} + {s} * 1]",
                "tdpbf16ps tmm3, tmm4, tmm7",
                    k0 = in(reg) key(0),
                    k1 = in(reg) key(1),
                    k2 = in(reg) key(2),
                    k3 = in(reg) key(3),
                    s = in(reg) stride,
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
        let live = (key_blocks - group).min(4);
        // SAFETY: block `group + i` (< key_blocks, as `live` stops there) is columns
        // `16 (group + i)..+16` of the 16 rows of `scores` at stride `ld`, which the caller made
        // at least `15 ld + 16 key_blocks` long (debug-asserted above).
        unsafe { store_accumulators(live, |i| out.add((group + i) * TILE) as *mut u8, ld * 4) };
    }
}

/// The unnormalized context of 16 queries: for each column block `c`, `context[c]` (16 x 16
/// f32) = sum over 32-key steps of P tile · V tile (`c` in tmm0..3, four column blocks at most).
///
/// # Safety
/// The tile configuration is loaded; `probabilities` holds `key_steps` tiles, `values`
/// `key_steps * column_blocks`, `context` `column_blocks` (at most 8: d <= 128, two passes of 4).
unsafe fn context(
    probabilities: &[Tile],
    values: &[Tile],
    key_steps: usize,
    column_blocks: usize,
    context: &mut [Tile],
) {
    use std::arch::asm;
    let stride = TILE * 4;
    for group in (0..column_blocks).step_by(4) {
        let live = (column_blocks - group).min(4);
        // SAFETY: the tile configuration is loaded (the caller's contract).
        unsafe { zero_accumulators() };
        for s in 0..key_steps {
            // SAFETY: the configuration is loaded; `probabilities[s]` (bounds-checked) is a
            // whole 1 KiB tile, 16 rows of 64 bytes at the stride given.
            unsafe {
                asm!("tileloadd tmm4, [{p} + {st} * 1]", p = in(reg) probabilities[s].0.as_ptr(), st = in(reg) stride,
                    options(nostack, preserves_flags, readonly))
            };
            let value = |i: usize| {
                values[s * column_blocks + (group + i).min(column_blocks - 1)]
                    .0
                    .as_ptr()
            };
            // SAFETY: as for the probability tile: each value tile comes from a bounds-checked
            // index.
            unsafe {
                asm!(
                "tileloadd tmm6, [{v0} + {st} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{v1} + {st} * 1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm6, [{v2} + {st} * 1]",
                "tdpbf16ps tmm2, tmm4, tmm6",
                "tileloadd tmm7, [{v3} + {st} * 1]",
                "tdpbf16ps tmm3, tmm4, tmm7",
                    v0 = in(reg) value(0),
                    v1 = in(reg) value(1),
                    v2 = in(reg) value(2),
                    v3 = in(reg) value(3),
                    st = in(reg) stride,
                    options(nostack, preserves_flags, readonly)
                )
            };
        }
        let base = context.as_mut_ptr();
        // SAFETY: `group + i` < column_blocks (`live` stops there), and `context` holds
        // `column_blocks` tiles (the caller's contract): each store fills one whole tile.
        unsafe { store_accumulators(live, |i| (*base.add(group + i)).0.as_mut_ptr() as *mut u8, stride) };
    }
}

/// Stores the first `live` (1 to 4) accumulator tiles, `tmm{i}` to `at(i)` with rows `stride`
/// bytes apart.
///
/// # Safety
/// The tile configuration is loaded; each `at(i)` writable for 16 rows of 64 bytes at `stride`.
#[inline]
unsafe fn store_accumulators(live: usize, at: impl Fn(usize) -> *mut u8, stride: usize) {
    use std::arch::asm;
    // SAFETY: the configuration is loaded, and `at(i)` for i < live (live >= 1) is writable for
    // 16 rows of 64 bytes at `stride` (the caller's contract).
    unsafe {
        asm!("tilestored [{c} + {s} * 1], tmm0", c = in(reg) at(0), s = in(reg) stride, options(nostack, preserves_flags))
    };
    if live > 1 {
        // SAFETY: tile 1 (live > 1), as above.
        unsafe {
            asm!("tilestored [{c} + {s} * 1], tmm1", c = in(reg) at(1), s = in(reg) stride, options(nostack, preserves_flags))
        };
    }
    if live > 2 {
        // SAFETY: tile 2 (live > 2), as above.
        unsafe {
            asm!("tilestored [{c} + {s} * 1], tmm2", c = in(reg) at(2), s = in(reg) stride, options(nostack, preserves_flags))
        };
    }
    if live > 3 {
        // SAFETY: tile 3 (live > 3), as above.
        unsafe {
            asm!("tilestored [{c} + {s} * 1], tmm3", c = in(reg) at(3), s = in(reg) stride, options(nostack, preserves_flags))
        };
    }
}
