//! Batches in and results out without stopping the GPU between batches.
//!
//! In: a batch's four index arrays (token, position and type ids, cu_seqlens) are written into
//! one pinned staging buffer and copied with ONE asynchronous copy on `copy_stream` into a
//! device buffer of the same slot; `stream` waits for that copy with an event before the first
//! kernel of the batch. A pageable copy (what `clone_htod` of a Vec does) would make the driver
//! wait for the stream to drain first, so the GPU would idle while the host packs, copies and
//! launches the next batch; with the slot the host queues batch i + 1 while batch i runs.
//! Slots are leased: a [`BatchSlot`] is held by its `CudaBatch`; when that drops (all its kernels
//! queued), an event is recorded on `stream`, and the next upload into the slot makes
//! `copy_stream` wait for it, so a copy never overwrites indices that a queued kernel still
//! reads. A slot's staging buffer is rewritten only after its previous copy has finished (host
//! wait on the slot's `uploaded` event, normally long past). The least recently used free slot is
//! leased, and at least two exist, so that batch i + 1's copy waits only for batch i - 1's
//! kernels and runs while batch i computes. New slots are made only when every slot is leased (a
//! caller holding several batches at once) or too small (slots only grow), so a steady stream of
//! batches cycles through two or three slots and allocates nothing.
//!
//! Out: [`Transfers::download_start`] queues the copy of a result into a pinned buffer on
//! `stream` and returns at once; [`PendingMatrix::wait`] waits for it. Dropping an unwaited
//! result waits too (the pinned buffer must outlive the copy).
//!
//! Timing (for `gpu_bench`): with `set_timing(true)`, each batch records timed events when its
//! indices are in and when its `CudaBatch` drops (after its last kernel and its download are
//! queued); [`Transfers::gpu_seconds`] sums those spans, the GPU's busy time, which the bench
//! compares with the wall-clock time to show what the host leaves idle between batches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};

use super::device::{error, raw_ptr, Device, DeviceBuffer};
use crate::backend::{HostMatrix, PendingMatrix};
use crate::error::Result;

struct SlotInner {
    words: usize,
    staging: PinnedHostSlice<u32>,
    /// Owned here, used through `base`.
    _buffer: CudaSlice<u32>,
    base: u64,
    /// Recorded on `copy_stream` after the copy into `device`.
    uploaded: CudaEvent,
    /// Recorded on `stream` when the batch that used the slot drops.
    released: CudaEvent,
}

struct Slot {
    leased: AtomicBool,
    /// The upload number of its last lease: the least recently used free slot is leased next.
    last_use: AtomicU64,
    inner: Mutex<SlotInner>,
}

/// Slots made before any is reused. With one slot, batch i + 1's copy would wait for batch i's
/// kernels (the slot's last use); with two, it waits for batch i - 1's, which are done while
/// batch i runs, so the copy overlaps batch i.
const MIN_SLOTS: usize = 2;

/// The batch slots, the pinned download buffers, the timing spans and the launch count.
#[derive(Default)]
pub(super) struct Transfers {
    slots: Mutex<Vec<Arc<Slot>>>,
    downloads: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
    timing: AtomicBool,
    spans: Arc<Mutex<Vec<(CudaEvent, CudaEvent)>>>,
    /// Batches uploaded through slots.
    pub batches: AtomicU64,
}

/// A batch's indices on the device, in a leased slot: `ptr(i)` is the start of the i-th array.
pub(super) struct BatchSlot {
    slot: Arc<Slot>,
    offsets: [usize; 4],
    base: u64,
    stream: Arc<CudaStream>,
    start: Option<CudaEvent>,
    spans: Arc<Mutex<Vec<(CudaEvent, CudaEvent)>>>,
}

impl BatchSlot {
    pub fn ptr(&self, array: usize) -> u64 {
        self.base + 4 * self.offsets[array] as u64
    }
}

impl Drop for BatchSlot {
    fn drop(&mut self) {
        // Every kernel that reads this batch is queued on `stream` by now (a CudaBatch is only
        // borrowed by the ops), so the event marks the last use of the slot's device buffer.
        if let Ok(inner) = self.slot.inner.lock() {
            let _ = inner.released.record(&self.stream);
        }
        if let Some(start) = self.start.take() {
            if let Ok(end) = self
                .stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            {
                if let Ok(mut spans) = self.spans.lock() {
                    spans.push((start, end));
                }
            }
        }
        self.slot.leased.store(false, Ordering::Release);
    }
}

/// A download's pinned buffer and the event after its copy; dropping it waits for the copy.
struct InFlight {
    event: CudaEvent,
    pinned: Option<PinnedHostSlice<u8>>,
    pool: Arc<Mutex<Vec<PinnedHostSlice<u8>>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let _ = self.event.synchronize();
        if let (Some(pinned), Ok(mut pool)) = (self.pinned.take(), self.pool.lock()) {
            pool.push(pinned);
        }
    }
}

impl Transfers {
    pub fn set_timing(&self, on: bool) {
        self.timing.store(on, Ordering::Relaxed);
    }

    /// The GPU time of the batches since the last call (waits for them), in seconds.
    pub fn gpu_seconds(&self) -> Result<f64> {
        let spans: Vec<_> = std::mem::take(&mut *self.spans.lock().map_err(|_| poisoned())?);
        let mut total = 0.0f64;
        for (start, end) in &spans {
            let ms = start
                .elapsed_ms(end)
                .map_err(|e| error("gpu_seconds", format!("timing events: {e}")))?;
            total += ms as f64 / 1e3;
        }
        Ok(total)
    }

    /// Copies `arrays` (concatenated) into a free slot; `stream` waits for the copy.
    pub fn upload(&self, device: &Device, op: &'static str, arrays: [&[u32]; 4]) -> Result<BatchSlot> {
        let words: usize = arrays.iter().map(|a| a.len()).sum();
        let slot = self.lease(device, op, words)?;
        let mut inner = slot.inner.lock().map_err(|_| poisoned())?;
        let fail = |what: &str, e: cudarc::driver::DriverError| device.driver(op, what, e);
        inner
            .uploaded
            .synchronize()
            .map_err(|e| fail("waiting for the slot's previous copy", e))?;
        let ptr = inner
            .staging
            .as_mut_ptr()
            .map_err(|e| fail("mapping the staging buffer", e))?;
        // SAFETY: `staging` holds `inner.words >= words` u32s, and no copy reads it now (the
        // previous one has finished, the next is queued below).
        let host = unsafe { std::slice::from_raw_parts_mut(ptr, words) };
        let mut offsets = [0usize; 4];
        let mut at = 0;
        for (i, a) in arrays.iter().enumerate() {
            offsets[i] = at;
            host[at..at + a.len()].copy_from_slice(a);
            at += a.len();
        }
        let copy = &device.copy_stream;
        copy.wait(&inner.released)
            .map_err(|e| fail("ordering the copy after the slot's last use", e))?;
        device
            .ctx()
            .bind_to_thread()
            .map_err(|e| fail("binding the context to this thread", e))?;
        // SAFETY: `host` is pinned memory that stays untouched until `uploaded` completes (see
        // above); the destination holds `inner.words >= words` u32s.
        unsafe { result::memcpy_htod_async(inner.base, &*host, copy.cu_stream()) }
            .map_err(|e| fail(&format!("copying {} bytes of batch indices", 4 * words), e))?;
        inner
            .uploaded
            .record(copy)
            .map_err(|e| fail("recording the copy", e))?;
        device
            .stream
            .wait(&inner.uploaded)
            .map_err(|e| fail("ordering the batch after its copy", e))?;
        let start = if self.timing.load(Ordering::Relaxed) {
            Some(
                device
                    .stream
                    .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .map_err(|e| fail("recording a timing event", e))?,
            )
        } else {
            None
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        let base = inner.base;
        drop(inner);
        Ok(BatchSlot {
            slot,
            offsets,
            base,
            stream: device.stream.clone(),
            start,
            spans: self.spans.clone(),
        })
    }

    /// A slot of at least `words` u32s, leased to the caller.
    fn lease(&self, device: &Device, op: &'static str, words: usize) -> Result<Arc<Slot>> {
        // Leases are only taken under this lock (a slot goes from leased to free on its own, never
        // back), so a slot seen free here can be leased below.
        let mut slots = self.slots.lock().map_err(|_| poisoned())?;
        let use_number = self.batches.load(Ordering::Relaxed);
        let lease = |s: &Arc<Slot>| {
            let won = s
                .leased
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok();
            if won {
                s.last_use.store(use_number, Ordering::Relaxed);
            }
            won
        };
        let mut free = Vec::new(); // (index, fits, last use) of the free slots
        for (i, s) in slots.iter().enumerate() {
            if !s.leased.load(Ordering::Acquire) {
                let fits = s.inner.lock().map_err(|_| poisoned())?.words >= words;
                free.push((i, fits, s.last_use.load(Ordering::Relaxed)));
            }
        }
        free.sort_by_key(|&(_, fits, last)| (!fits, last));
        // The least recently used free slot that is large enough (once MIN_SLOTS exist); else the
        // least recently used free one, too small, is replaced; else a new one.
        if slots.len() >= MIN_SLOTS {
            if let Some(&(i, true, _)) = free.first() {
                if lease(&slots[i]) {
                    return Ok(slots[i].clone());
                }
            }
        }
        let small = free
            .iter()
            .find(|&&(i, fits, _)| !fits && slots.len() >= MIN_SLOTS && lease(&slots[i]))
            .map(|&(i, _, _)| i);
        let slot = Arc::new(self.new_slot(device, op, words)?);
        slot.last_use.store(use_number, Ordering::Relaxed);
        match small {
            Some(i) => {
                let old = std::mem::replace(&mut slots[i], slot.clone());
                let inner = old.inner.lock().map_err(|_| poisoned())?;
                // The pinned buffer must outlive its last copy; the device buffer is freed on
                // `stream`, after every kernel that used it.
                let _ = inner.uploaded.synchronize();
                device.memory.sub(4 * inner.words);
            }
            None => slots.push(slot.clone()),
        }
        Ok(slot)
    }

    fn new_slot(&self, device: &Device, op: &'static str, words: usize) -> Result<Slot> {
        let words = words.max(4096).next_power_of_two();
        let fail = |what: &str, e: cudarc::driver::DriverError| device.driver(op, what, e);
        let ctx = device.ctx();
        // SAFETY: contents unset; written before every copy.
        let staging = unsafe { ctx.alloc_pinned::<u32>(words) }
            .map_err(|e| fail(&format!("allocating {} bytes of pinned memory", 4 * words), e))?;
        // SAFETY: contents unset; the copy writes what a batch reads.
        let buffer = unsafe { device.stream.alloc::<u32>(words) }
            .map_err(|e| fail(&format!("allocating {} bytes", 4 * words), e))?;
        // The allocation is ordered on `stream`: the copy stream must not use it before.
        device
            .copy_stream
            .join(&device.stream)
            .map_err(|e| fail("ordering the copy stream after an allocation", e))?;
        device.memory.add(4 * words);
        let base = raw_ptr(&device.stream, &buffer);
        Ok(Slot {
            leased: AtomicBool::new(true),
            last_use: AtomicU64::new(0),
            inner: Mutex::new(SlotInner {
                words,
                staging,
                _buffer: buffer,
                base,
                uploaded: ctx.new_event(None).map_err(|e| fail("creating an event", e))?,
                released: ctx.new_event(None).map_err(|e| fail("creating an event", e))?,
            }),
        })
    }

    /// Queues the copy of the first `bytes` bytes of `buffer` into pinned memory on `stream`;
    /// the returned matrix is built by `convert` once the copy has landed.
    pub fn download_start(
        &self,
        device: &Device,
        op: &'static str,
        buffer: &DeviceBuffer,
        bytes: usize,
        convert: impl FnOnce(&[u8]) -> HostMatrix + Send + 'static,
    ) -> Result<PendingMatrix> {
        let fail = |what: &str, e: cudarc::driver::DriverError| device.driver(op, what, e);
        let reused = {
            let mut pool = self.downloads.lock().map_err(|_| poisoned())?;
            pool.iter()
                .position(|p| p.len() >= bytes)
                .map(|i| pool.swap_remove(i))
        };
        let mut pinned = match reused {
            Some(p) => p,
            // SAFETY: contents unset; the copy writes the bytes that are read. Not
            // write-combined: the host reads this memory.
            None => unsafe {
                device
                    .ctx()
                    .alloc_pinned_with_flags::<u8>(bytes.max(4096).next_power_of_two(), 0)
            }
            .map_err(|e| fail("allocating pinned memory for a download", e))?,
        };
        let host = pinned
            .as_mut_ptr()
            .map_err(|e| fail("mapping a download buffer", e))?;
        device
            .ctx()
            .bind_to_thread()
            .map_err(|e| fail("binding the context to this thread", e))?;
        // SAFETY: `pinned` holds at least `bytes` bytes and lives in `InFlight` until the event
        // after the copy has completed; `buffer` holds at least `bytes` bytes.
        unsafe {
            let dst = std::slice::from_raw_parts_mut(host, bytes);
            result::memcpy_dtoh_async(dst, buffer.ptr(), device.stream.cu_stream())
        }
        .map_err(|e| fail("copying a result back", e))?;
        let event = device
            .stream
            .record_event(None)
            .map_err(|e| fail("recording a download", e))?;
        let flight = InFlight {
            event,
            pinned: Some(pinned),
            pool: self.downloads.clone(),
        };
        let label = device.label.clone();
        let queued = device.take_queued();
        Ok(PendingMatrix::waiting(move || {
            flight.event.synchronize().map_err(|e| {
                error(
                    "download",
                    format!(
                        "waiting for a result on {label}: {}: {e}",
                        super::device::queued_failure(&queued)
                    ),
                )
            })?;
            let pinned = flight.pinned.as_ref().expect("not yet returned");
            let data = pinned
                .as_slice()
                .map_err(|e| error("download", format!("reading a download buffer: {e}")))?;
            Ok(convert(&data[..bytes]))
        }))
    }
}

fn poisoned() -> crate::Error {
    error("transfer", "a lock was poisoned by a panic on another thread")
}

/// The pipeline's knobs and gauges, for tests and benchmarks.
impl super::CudaBackend {
    /// Device bytes the backend holds now (weights, pooled activations, batch slots).
    pub fn device_bytes(&self) -> usize {
        self.device.memory.live()
    }

    /// Copies batches in with a plain synchronous copy of their own (the path before slots and
    /// the copy stream): for tests that compare the two.
    pub fn set_synchronous_uploads(&self, on: bool) {
        self.synchronous_uploads.store(on, Ordering::Relaxed);
    }

    /// Records the GPU time of each batch (two timed events per batch); see `gpu_seconds`.
    pub fn set_timing(&self, on: bool) {
        self.transfers.set_timing(on);
    }

    /// The summed GPU time of the batches uploaded since the last call, in seconds: from the
    /// batch's indices landing to its last queued work (its download included). Waits for them.
    pub fn gpu_seconds(&self) -> Result<f64> {
        self.transfers.gpu_seconds()
    }

    /// Kernels launched and batches uploaded since the backend opened.
    pub fn launch_counts(&self) -> (u64, u64) {
        (
            self.device.launches.load(Ordering::Relaxed),
            self.transfers.batches.load(Ordering::Relaxed),
        )
    }
}
