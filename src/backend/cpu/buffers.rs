//! Recycled activation buffers. Every op of the backend returns a fresh tensor; allocated with
//! `vec![0.0; n]`, each large one is a new mmap that the kernel zero-fills page by page on first
//! touch and unmaps on drop. Profiled on MiniLM, those page faults and unmaps took about 15 % of
//! a forward pass. Dropped [`super::CpuTensor`]s give their storage back here instead, and the
//! next op of a similar size reuses it as it is: every op of the backend writes every element of
//! its output, so clearing it first would be a pass over memory for nothing (a memset on one
//! thread before each parallel op: 12 % of a bf16 forward pass in a profile on a Xeon with AMX).
//! Debug builds (and so the tests) fill a reused buffer with NaN instead, so that an element an
//! op forgets to write cannot pass for a stale right value.
//!
//! Bounded: at most [`KEPT`] buffers are kept, so the pool never holds more than a few of the
//! largest activations of the last forward pass.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// Buffers kept for reuse: a BERT layer has about six live activations at a time.
const KEPT: usize = 8;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A vector of `len` values for an op that writes every one of them, reusing a kept buffer when
/// one is large enough: its values are whatever was there (zeros when newly allocated; NaN in
/// debug builds). An allocation the system refuses is an [`Error::OutOfMemory`] naming `op`, not
/// an abort.
pub fn for_overwrite(op: &'static str, len: usize) -> Result<Vec<f32>> {
    let bytes = len.saturating_mul(std::mem::size_of::<f32>());
    let refuse = |why: String| Error::OutOfMemory {
        device: "cpu".into(),
        op,
        message: format!("{bytes} bytes for an activation of {len} values: {why}"),
    };
    if let Some(limit) = crate::backend::injected_alloc_limit().filter(|&l| bytes > l) {
        return Err(refuse(format!("over EMBER_FAULT_ALLOC_LIMIT={limit}")));
    }
    if len >= 1024 {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // The smallest kept buffer that fits, so that big ones stay for big requests.
        let best = (0..pool.len())
            .filter(|&i| pool[i].capacity() >= len)
            .min_by_key(|&i| pool[i].capacity());
        if let Some(i) = best {
            let mut buffer = pool.swap_remove(i);
            drop(pool);
            if cfg!(debug_assertions) {
                buffer.clear();
                buffer.resize(len, f32::NAN);
            } else {
                // Only a part past the old length is written here.
                buffer.resize(len, 0.0);
            }
            return Ok(buffer);
        }
    }
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(len).map_err(|e| refuse(e.to_string()))?;
    buffer.resize(len, 0.0);
    Ok(buffer)
}

/// Keeps `buffer` for reuse (or frees it when the pool is full of larger ones).
pub fn recycle(buffer: Vec<f32>) {
    if buffer.capacity() < 1024 {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < KEPT {
        pool.push(buffer);
    } else if let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
        if pool[smallest].capacity() < buffer.capacity() {
            pool[smallest] = buffer;
        }
    }
}

/// Makes `v` at least `len` long (new entries `T::default()`), keeping what is there: for a
/// kernel's scratch that every call writes before it reads, so nothing is cleared.
pub(super) fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}
