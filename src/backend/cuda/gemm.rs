//! The host side of the linear layer's GEMM: which kernel runs, and everything it needs.
//!
//! Two paths compute the same thing (kernels/gemm.cu's header states it):
//! - sm80 (kernels/gemm.cu): mma.sync + ldmatrix + cp.async, any GPU of compute capability 8.0 or
//!   newer, any shape (gemm_f16_simple when K % 8 != 0). The portable path, and the check on the
//!   other one.
//! - sm90 (kernels/gemm_sm90.cu): wgmma + TMA + warp specialization, a persistent grid. Compute
//!   capability 9.x only (its PTX is compute_90a), K % 64 == 0 and N % 64 == 0 (every BERT shape);
//!   anything else takes the sm80 path.
//!
//! Which path runs is gemm_choice.rs's decision (a self-check on first use, a fallback to sm80
//! when the sm90 setup fails; `EMBER_GEMM=sm80|sm90` or `CudaBackend::set_gemm` forces one);
//! `EMBER_GEMM_TILE=128x256` (a name of [`TILES`] without `gemm_sm90_`, or
//! `CudaBackend::force_gemm_tile`) forces one sm90 tile shape, for tests and tuning. The automatic
//! choice ([`choose_tile`]) takes the cooperative tiles only; the ping-pong ones wait for a GPU
//! run that shows them right and faster.
//!
//! The sm90 kernels read x and w through TMA tensor maps (cuTensorMapEncodeTiled, a host-only
//! driver call: no cuBLAS). A weight's maps are made once, at `load_linear`, one per tile height
//! BN; an activation's map depends on its buffer's address and row count, so it is cached per
//! (address, rows, cols, BM): buffers come from a pool, so the same few keys recur every batch.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cudarc::driver::sys::{
    self, CUfunction_attribute_enum, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, DeviceRepr, PushKernelArg};

use super::device::{error, Device};
use super::gemm_choice::{injected_sm90_fault, GemmPath, InjectedSm90Fault};
use crate::error::Result;

/// One sm90 tile shape: a kernel of kernels/gemm_sm90.cu and the constants it was compiled with
/// (its GEMM_SM90(...) line; `smem_bytes` must match its SmemLayout<..>::TOTAL).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tile {
    /// The kernel's name in the PTX.
    pub name: &'static str,
    /// Rows of the output tile (BM).
    pub bm: usize,
    /// Columns of the output tile (BN).
    pub bn: usize,
    /// Consumer warpgroups, which run the wgmma; one producer warpgroup feeds them.
    pub consumers: usize,
    /// Pipeline stages of A and W tiles in shared memory.
    pub stages: usize,
    /// Each consumer warpgroup takes whole tiles of its own, in turn (BM = 64), rather than 64 rows
    /// of a shared one (BM = 64 x consumers).
    pub pingpong: bool,
    /// Relative tensor-core efficiency of the shape at full occupancy (128x256 = 1): smaller
    /// tiles read more shared memory per flop and pay the epilogue more often. First guesses, to
    /// be replaced by H100 measurements (the GEMM table of scripts/cuda/gpu_bench.py times every tile
    /// on every shape).
    pub efficiency: f64,
}

impl Tile {
    /// Threads per block: 128 per consumer warpgroup and 128 for the producer.
    pub fn threads(&self) -> u32 {
        128 * (self.consumers as u32 + 1)
    }

    /// Stages of [BM + BN rows x 128 bytes], two 8-byte mbarriers per stage and two more (the
    /// ping-pong turns), 1024 bytes of slack to round the dynamic shared memory base up to the
    /// swizzle period.
    pub fn smem_bytes(&self) -> u32 {
        (self.stages * (self.bm + self.bn) * 128 + 16 * self.stages + 16 + 1024) as u32
    }
}

/// Every sm90 kernel, in the order of `Sm90::kernels`.
pub const TILES: [Tile; 6] = [
    Tile {
        name: "gemm_sm90_128x256",
        bm: 128,
        bn: 256,
        consumers: 2,
        stages: 4,
        pingpong: false,
        efficiency: 1.0,
    },
    Tile {
        name: "gemm_sm90_128x192",
        bm: 128,
        bn: 192,
        consumers: 2,
        stages: 5,
        pingpong: false,
        efficiency: 0.97,
    },
    Tile {
        name: "gemm_sm90_128x128",
        bm: 128,
        bn: 128,
        consumers: 2,
        stages: 6,
        pingpong: false,
        efficiency: 0.9,
    },
    Tile {
        name: "gemm_sm90_64x128",
        bm: 64,
        bn: 128,
        consumers: 1,
        stages: 8,
        pingpong: false,
        efficiency: 0.7,
    },
    // Ping-pong: not in the automatic choice until a GPU run has shown them correct and faster
    // (the GEMM table times every tile on every shape); EMBER_GEMM_TILE=pp_64x256 forces one.
    Tile {
        name: "gemm_sm90_pp_64x256",
        bm: 64,
        bn: 256,
        consumers: 2,
        stages: 5,
        pingpong: true,
        efficiency: 1.0,
    },
    Tile {
        name: "gemm_sm90_pp_64x192",
        bm: 64,
        bn: 192,
        consumers: 2,
        stages: 6,
        pingpong: true,
        efficiency: 0.97,
    },
];

/// The distinct tile heights BN of [`TILES`]: a weight gets one tensor map per height (and an
/// activation one per BM: 128 or 64).
const WEIGHT_BOXES: [usize; 3] = [256, 192, 128];

/// Whether the sm90 kernels can take this shape at all.
pub fn sm90_supports(m: usize, n: usize, k: usize) -> bool {
    m > 0
        && n > 0
        && k > 0
        && n.is_multiple_of(64)
        && k.is_multiple_of(64)
        && m < (1 << 31)
        && n <= (1 << 20)
        && k <= (1 << 20)
}

/// The tile of [`TILES`] for an M x N x K GEMM on `sms` multiprocessors: the least estimated
/// time, where a persistent CTA runs ceil(tiles / grid) tiles one after the other and a tile
/// costs BM * BN * K / efficiency. Only shapes whose BN divides N are considered (a partial
/// N-tile wastes its whole width), with 128x128 as the fallback (N % 64 == 0 always fits it
/// to within half a tile).
pub fn choose_tile(m: usize, n: usize, k: usize, sms: usize) -> usize {
    let sms = sms.max(1);
    let mut best = (f64::INFINITY, 2);
    for (i, t) in TILES.iter().enumerate() {
        if t.pingpong || !n.is_multiple_of(t.bn) {
            continue;
        }
        let tiles = m.div_ceil(t.bm) * (n / t.bn);
        let rounds = tiles.div_ceil(sms);
        let cost = rounds as f64 * (t.bm * t.bn * k) as f64 / t.efficiency;
        if cost < best.0 {
            best = (cost, i);
        }
    }
    best.1
}

/// A driver tensor map (`CUtensorMap`, 128 bytes, 64-byte aligned), passed by value as a
/// `const __grid_constant__` kernel parameter.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct TensorMap(sys::CUtensorMap);

// SAFETY: a plain 128-byte C struct, which is exactly the kernel parameter's layout.
unsafe impl DeviceRepr for TensorMap {}

/// The 2-D map of a row-major f16 matrix [rows, cols] at `ptr`, read in boxes of [box_rows, 64]
/// (64 halves = one 128-byte row, the widest box the 128-byte swizzle allows) and written to
/// shared memory with that swizzle; rows past the end read as zeros.
fn encode(ptr: u64, rows: usize, cols: usize, box_rows: usize) -> std::result::Result<TensorMap, String> {
    if injected_sm90_fault() == Some(InjectedSm90Fault::TensorMap) {
        return Err(format!(
            "cuTensorMapEncodeTiled ([{rows}, {cols}], box [{box_rows}, 64]) failed on purpose (EMBER_FAULT_SM90=tensor-map)"
        ));
    }
    if !ptr.is_multiple_of(16) || !cols.is_multiple_of(8) {
        return Err(format!(
            "TMA needs 16-byte aligned rows (address {ptr:#x}, {cols} columns)"
        ));
    }
    let dims = [cols as u64, rows as u64]; // innermost first
    let strides = [(cols * 2) as u64]; // bytes from one row to the next (rank - 1 entries)
    let boxes = [64u32, box_rows as u32];
    let element_strides = [1u32, 1];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer is to a live local array of the length the rank (2) implies; the
    // call only encodes (it does not touch device memory) and fills `map`.
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()
        .map_err(|e| format!("cuTensorMapEncodeTiled ([{rows}, {cols}], box [{box_rows}, 64]): {e}"))?;
        Ok(TensorMap(map.assume_init()))
    }
}

/// A weight's tensor maps, one per tile height of [`WEIGHT_BOXES`] (made at `load_linear`).
pub struct WeightMaps([TensorMap; 3]);

impl WeightMaps {
    pub(super) fn for_bn(&self, bn: usize) -> &TensorMap {
        let i = WEIGHT_BOXES.iter().position(|&b| b == bn).unwrap_or(0);
        &self.0[i]
    }
}

/// Bound on cached activation maps: a few dozen keys recur in steady state; past this many the
/// cache is cleared rather than grown (memory must not grow with the input).
const MAX_CACHED_MAPS: usize = 1024;

const NO_TILE: usize = usize::MAX;

/// The tile `EMBER_GEMM_TILE` forces (None: unset); a name that is no tile is an error.
pub fn forced_tile_from_env() -> std::result::Result<Option<usize>, String> {
    match std::env::var("EMBER_GEMM_TILE") {
        Ok(name) => tile_named(&name)
            .map(Some)
            .map_err(|e| format!("EMBER_GEMM_TILE: {e}")),
        Err(_) => Ok(None),
    }
}

/// The index of the tile called `name` ("128x256" or "gemm_sm90_128x256").
fn tile_named(name: &str) -> std::result::Result<usize, String> {
    TILES
        .iter()
        .position(|t| t.name == name || t.name.strip_prefix("gemm_sm90_") == Some(name))
        .ok_or_else(|| {
            let names: Vec<&str> = TILES.iter().map(|t| &t.name["gemm_sm90_".len()..]).collect();
            format!("no sm90 GEMM tile {name}: the tiles are {}", names.join(", "))
        })
}

/// The sm90 kernels of a 9.x GPU, its multiprocessor count and the activation-map cache.
pub struct Sm90 {
    kernels: Vec<CudaFunction>,
    sms: usize,
    /// An index of [`TILES`] that every shape takes, or `NO_TILE` (EMBER_GEMM_TILE, tests).
    forced_tile: AtomicUsize,
    x_maps: Mutex<HashMap<(u64, usize, usize, usize), TensorMap>>,
}

impl Sm90 {
    /// `kernels` in the order of [`TILES`]; raises each one's dynamic shared memory limit.
    /// `forced_tile`: an index of [`TILES`] every shape takes (EMBER_GEMM_TILE), if any.
    pub fn new(
        kernels: Vec<CudaFunction>,
        sms: usize,
        forced_tile: Option<usize>,
    ) -> std::result::Result<Sm90, String> {
        for (kernel, tile) in kernels.iter().zip(&TILES) {
            kernel
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    tile.smem_bytes() as i32,
                )
                .map_err(|e| {
                    format!(
                        "kernel {}: cannot allow {} bytes of shared memory: {e}",
                        tile.name,
                        tile.smem_bytes()
                    )
                })?;
        }
        Ok(Sm90 {
            kernels,
            sms,
            forced_tile: AtomicUsize::new(forced_tile.unwrap_or(NO_TILE)),
            x_maps: Mutex::new(HashMap::new()),
        })
    }

    /// The tile the sm90 path would use for this shape.
    pub fn tile_for(&self, m: usize, n: usize, k: usize) -> usize {
        match self.forced_tile.load(Ordering::Relaxed) {
            NO_TILE => choose_tile(m, n, k, self.sms),
            forced => forced,
        }
    }

    /// The tile the automatic choice takes for this shape, whatever is forced.
    pub fn auto_tile(&self, m: usize, n: usize, k: usize) -> usize {
        choose_tile(m, n, k, self.sms)
    }

    /// The forced tile, if one is (EMBER_GEMM_TILE or `force_tile`).
    pub fn forced(&self) -> Option<usize> {
        Some(self.forced_tile.load(Ordering::Relaxed)).filter(|&t| t != NO_TILE)
    }

    /// Makes every shape take the tile called `name` (None: back to the per-shape choice).
    pub fn force_tile(&self, name: Option<&str>) -> std::result::Result<(), String> {
        let tile = name.map_or(Ok(NO_TILE), tile_named)?;
        self.forced_tile.store(tile, Ordering::Relaxed);
        Ok(())
    }

    /// The maps of a weight [n, k] at `ptr`, or `None` when the sm90 path cannot take it. Err:
    /// the driver refused a map (the caller turns the sm90 GEMM off).
    pub fn weight_maps(
        &self,
        ptr: u64,
        n: usize,
        k: usize,
    ) -> std::result::Result<Option<WeightMaps>, String> {
        if !sm90_supports(1, n, k) {
            return Ok(None);
        }
        let mut maps = [None; 3];
        for (slot, &bn) in maps.iter_mut().zip(&WEIGHT_BOXES) {
            *slot = Some(encode(ptr, n, k, bn)?);
        }
        Ok(Some(WeightMaps(maps.map(|m| m.expect("filled above")))))
    }

    /// The map of an activation [rows, cols] at `ptr` for tiles of `bm` rows (cached).
    pub(super) fn x_map(
        &self,
        ptr: u64,
        rows: usize,
        cols: usize,
        bm: usize,
    ) -> std::result::Result<TensorMap, String> {
        let key = (ptr, rows, cols, bm);
        // The cache holds plain values, valid whatever a panicking holder was doing.
        let mut cache = self.x_maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = cache.get(&key) {
            return Ok(*map);
        }
        let map = encode(ptr, rows, cols, bm)?;
        if cache.len() >= MAX_CACHED_MAPS {
            cache.clear();
        }
        cache.insert(key, map);
        Ok(map)
    }
}

/// Device pointers and sizes of one `linear` call, checked by the caller.
pub struct GemmArgs {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    /// 0 when there is no residual.
    pub residual: u64,
    pub out: u64,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// An ACT_* code of kernels/common.cuh.
    pub act: i32,
}

/// The kernel `launch` will run for this shape: a name of [`TILES`] or of kernels/gemm.cu
/// (deciding the path first, which may run the self-check).
pub fn kernel_name(
    device: &Device,
    has_weight_maps: bool,
    m: usize,
    n: usize,
    k: usize,
) -> Result<&'static str> {
    Ok(match sm90_for(device, has_weight_maps, m, n, k)? {
        Some(sm90) => TILES[sm90.tile_for(m, n, k)].name,
        None if k.is_multiple_of(8) => "gemm_f16",
        None => "gemm_f16_simple",
    })
}

/// The sm90 kernels when this shape takes them: loaded, the weight has maps, the shape fits,
/// and the device's decision is sm90.
fn sm90_for(device: &Device, has_weight_maps: bool, m: usize, n: usize, k: usize) -> Result<Option<&Sm90>> {
    let Some(sm90) = device.kernels.sm90.as_ref() else {
        return Ok(None);
    };
    if !has_weight_maps || !sm90_supports(m, n, k) {
        return Ok(None);
    }
    Ok((device.gemm_path("linear")? == GemmPath::Sm90).then_some(sm90))
}

/// Launches out = act(x · wᵀ + bias) (+ residual) on the path and tile chosen for the shape.
/// An activation whose tensor map the driver refuses turns the sm90 GEMM off on this device (a
/// warning), and this call runs on sm80 (unless EMBER_GEMM=sm90 forbids: then an error).
pub fn launch(device: &Device, weight_maps: Option<&WeightMaps>, a: &GemmArgs) -> Result<()> {
    if let (Some(sm90), Some(maps)) = (
        sm90_for(device, weight_maps.is_some(), a.m, a.n, a.k)?,
        weight_maps,
    ) {
        let t = sm90.tile_for(a.m, a.n, a.k);
        match sm90.x_map(a.x, a.m, a.k, TILES[t].bm) {
            Ok(map_x) => return launch_sm90(device, sm90, t, &map_x, maps.for_bn(TILES[t].bn), a),
            Err(why) => device.sm90_broke("linear", why)?,
        }
    }
    launch_sm80(device, a)
}

/// The 32-bit M, N, K the kernels take.
fn dims(a: &GemmArgs) -> Result<(i32, i32, i32)> {
    let dim = |what: &str, v: usize| {
        i32::try_from(v).map_err(|_| {
            error(
                "linear",
                format!("{what} = {v} is past the kernels' 32-bit indices"),
            )
        })
    };
    Ok((
        dim("rows", a.m)?,
        dim("out_features", a.n)?,
        dim("in_features", a.k)?,
    ))
}

/// One sm90 GEMM with tile `t` of [`TILES`] (the shape must be one [`sm90_supports`]).
pub(super) fn launch_sm90(
    device: &Device,
    sm90: &Sm90,
    t: usize,
    map_x: &TensorMap,
    map_w: &TensorMap,
    a: &GemmArgs,
) -> Result<()> {
    let (mi, ni, ki) = dims(a)?;
    let ptrs = [a.bias, a.residual, a.out];
    let tile = &TILES[t];
    let tiles = a.m.div_ceil(tile.bm) * a.n.div_ceil(tile.bn);
    let grid = (tiles.min(sm90.sms.max(1)) as u32, 1, 1);
    device.launch_with_smem(
        "linear",
        tile.name,
        &sm90.kernels[t],
        grid,
        tile.threads(),
        tile.smem_bytes(),
        |b| {
            b.arg(map_x).arg(map_w);
            for p in &ptrs {
                b.arg(p);
            }
            b.arg(&mi).arg(&ni).arg(&ki).arg(&a.act);
        },
    )
}

/// One GEMM of kernels/gemm.cu (any shape).
pub(super) fn launch_sm80(device: &Device, a: &GemmArgs) -> Result<()> {
    let (mi, ni, ki) = dims(a)?;
    let ptrs = [a.bias, a.residual, a.out];
    let kernels = &device.kernels;
    let (kernel, name, grid, block) = if a.k.is_multiple_of(8) {
        // gemm.cu: 128 x 64 output tiles, 128 threads; K % 8 keeps every 16-byte copy aligned.
        let grid = (a.n.div_ceil(64) as u32, a.m.div_ceil(128) as u32, 1);
        (&kernels.gemm, "gemm_f16", grid, 128)
    } else {
        let grid = (a.m as u32, a.n.div_ceil(256) as u32, 1);
        (&kernels.gemm_simple, "gemm_f16_simple", grid, 256)
    };
    device.launch("linear", name, kernel, grid, block, |b| {
        b.arg(&a.x).arg(&a.w);
        for p in &ptrs {
            b.arg(p);
        }
        b.arg(&mi).arg(&ni).arg(&ki).arg(&a.act);
    })
}

/// The (N, K) of BERT's GEMMs that the tile table is made for: bge-small, base and large (fused
/// QKV, attention output, FFN up, FFN down).
pub const BERT_GEMM_SHAPES: [(usize, usize); 12] = [
    (1152, 384),
    (384, 384),
    (1536, 384),
    (384, 1536),
    (2304, 768),
    (768, 768),
    (3072, 768),
    (768, 3072),
    (3072, 1024),
    (1024, 1024),
    (4096, 1024),
    (1024, 4096),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bert_shape_takes_the_sm90_path_with_a_dividing_tile() {
        for &(n, k) in &BERT_GEMM_SHAPES {
            for m in [1, 77, 1000, 1024, 8191, 8192, 16384, 65536] {
                assert!(sm90_supports(m, n, k), "{m} {n} {k}");
                let t = &TILES[choose_tile(m, n, k, 132)];
                assert_eq!(n % t.bn, 0, "{m} {n} {k}: {}", t.name);
            }
        }
        assert!(!sm90_supports(100, 1, 64));
        assert!(!sm90_supports(100, 64, 100));
        assert!(!sm90_supports(0, 64, 64));
    }

    #[test]
    fn big_shapes_get_big_tiles_and_small_ones_fill_the_machine() {
        // 16384 x 4096: 128 x 256 tiles (2048 of them, 16 rounds on 132 SMs).
        assert_eq!(
            TILES[choose_tile(16384, 4096, 1024, 132)].name,
            "gemm_sm90_128x256"
        );
        // 1024 x 384: 128 x 256 does not divide 384; 64 x 128 makes 48 tiles rather than 24.
        assert_eq!(TILES[choose_tile(1024, 384, 384, 132)].name, "gemm_sm90_64x128");
    }

    /// TILES restates each GEMM_SM90(NAME, BN, CONSUMERS, STAGES, PINGPONG) line of
    /// kernels/gemm_sm90.cu by hand, and a disagreement would fail silently on the GPU: the
    /// kernel arms full[s] with its own (BM + BN) * 128 bytes while TMA delivers the host's boxes
    /// (a hang until the watchdog traps), and a host `smem_bytes` below the kernel's
    /// SmemLayout::TOTAL puts the barriers past the end of shared memory. Checked here, on the CPU.
    #[test]
    fn tiles_match_the_kernels_gemm_sm90_lines() {
        let source = include_str!("../../../kernels/gemm_sm90.cu");
        let lines: Vec<Vec<&str>> = source
            .lines()
            .filter_map(|l| l.strip_prefix("GEMM_SM90(")?.strip_suffix(')'))
            .map(|args| args.split(',').map(str::trim).collect())
            .collect();
        assert_eq!(lines.len(), TILES.len(), "GEMM_SM90 lines vs TILES");
        for args in &lines {
            let [name, bn, consumers, stages, pingpong] = args[..] else {
                panic!("GEMM_SM90 line with {} arguments: {args:?}", args.len())
            };
            let t = TILES
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("{name} is not in TILES"));
            assert_eq!(t.bn.to_string(), bn, "{name}: BN");
            assert_eq!(t.consumers.to_string(), consumers, "{name}: CONSUMERS");
            assert_eq!(t.stages.to_string(), stages, "{name}: STAGES");
            assert_eq!(t.pingpong.to_string(), pingpong, "{name}: PINGPONG");
            // SmemLayout<BM, BN, STAGES>::TOTAL, with the kernel's BM.
            let bm = if t.pingpong { 64 } else { 64 * t.consumers };
            let total = t.stages * (bm + t.bn) * 128 + 2 * t.stages * 8 + 16 + 1024;
            assert_eq!(t.smem_bytes() as usize, total, "{name}: shared memory");
        }
    }

    #[test]
    fn shared_memory_fits_an_h100() {
        // 227 KiB of dynamic shared memory per block on sm_90.
        for t in &TILES {
            assert!(t.smem_bytes() <= 227 * 1024, "{}: {}", t.name, t.smem_bytes());
            let bm = if t.pingpong { 64 } else { 64 * t.consumers };
            assert_eq!(t.bm, bm, "{}", t.name);
            assert!(WEIGHT_BOXES.contains(&t.bn), "{}", t.name);
        }
    }
}
