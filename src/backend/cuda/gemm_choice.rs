//! Which GEMM runs `linear` on a device, and why: the sm90 kernels (kernels/gemm_sm90.cu) or the
//! portable sm80 ones (kernels/gemm.cu).
//!
//! The sm90 GEMM is the faster path on Hopper but the newer and less proven one, so it must never
//! cost a user the whole backend. A failure to load its module, to raise a kernel's shared-memory
//! limit or to encode a tensor map is a warning (once per cause and process, naming it) and the
//! sm80 GEMM runs instead; and before the sm90 GEMM is trusted on a device, a small self-check
//! (gemm_self_check.rs) runs it on a few awkward shapes against f64 and decides. `EMBER_GEMM`
//! forces either path: `sm80` never loads the sm90 module; `sm90` skips the self-check, and a
//! device that cannot run it is then an error rather than a silent change of path.
//!
//! [`decide`] is the whole decision, a pure function of the request, the setup's outcome and the
//! self-check's, so that every case is unit-tested on a machine without a GPU. [`GemmState`] keeps
//! those three per device and caches the answer for the launch path.
//!
//! A self-check cannot contain a trap: a kernel that traps (the sm90 pipeline's watchdog) leaves
//! the CUDA context unusable, for every kernel. The self-check then returns that error instead of
//! a verdict; scripts/cuda/gpu-run.sh runs the sm90 kernels in processes of their own for that reason.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

/// What a caller asks for (`EMBER_GEMM`, or [`super::CudaBackend::set_gemm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmChoice {
    /// The sm90 GEMM where the GPU has it set up and its self-check passed, else sm80
    /// (`EMBER_GEMM` unset or `auto`).
    Auto,
    /// Always kernels/gemm.cu (`EMBER_GEMM=sm80`).
    Sm80,
    /// The sm90 GEMM without the self-check; an error where it cannot run (`EMBER_GEMM=sm90`).
    Sm90,
}

impl GemmChoice {
    /// The value of `EMBER_GEMM` (None: unset).
    pub fn from_env(value: Option<&str>) -> Result<GemmChoice, String> {
        match value {
            None | Some("auto") => Ok(GemmChoice::Auto),
            Some("sm80") => Ok(GemmChoice::Sm80),
            Some("sm90") => Ok(GemmChoice::Sm90),
            Some(other) => Err(format!("EMBER_GEMM={other}: expected sm80, sm90 or auto")),
        }
    }
}

/// The kernels `linear` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmPath {
    /// kernels/gemm.cu: `mma.sync` tensor-core tiles, for compute capability 8.0 and later.
    Sm80,
    /// kernels/gemm_sm90.cu: wgmma, TMA and warp specialization, for Hopper (9.0a) only.
    Sm90,
}

impl GemmPath {
    /// The name `EMBER_GEMM` and `ember info` use.
    pub fn name(self) -> &'static str {
        match self {
            GemmPath::Sm80 => "sm80",
            GemmPath::Sm90 => "sm90",
        }
    }
}

/// What became of the sm90 GEMM's setup on a device.
#[derive(Debug, Clone, PartialEq)]
pub enum Sm90Setup {
    /// Not compute capability 9.x: compute_90a PTX loads nowhere else.
    NotHopper {
        /// The device's compute capability, major part.
        major: i32,
        /// The device's compute capability, minor part.
        minor: i32,
    },
    /// Not loaded: the backend was opened with `EMBER_GEMM=sm80`.
    NotLoaded,
    /// Module loaded, shared-memory limits raised, and every tensor map so far encoded.
    Ready,
    /// One of those failed; the message names the step and the driver's words.
    Failed(String),
}

/// The self-check's outcome on a device.
#[derive(Debug, Clone, PartialEq)]
pub enum SelfCheck {
    /// Not run (yet) on this device.
    NotRun,
    /// What was checked ("3 shapes x 4 tiles against f64").
    Passed(String),
    /// The first disagreement or launch error.
    Failed(String),
}

/// What [`decide`] concludes.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Run `path`; `why` is for `ember info` and errors; `warn`: the user should hear of it
    /// (the sm90 GEMM is off because something failed).
    Use {
        /// The kernels to run.
        path: GemmPath,
        /// Why this path, in words.
        why: String,
        /// Whether the user should hear of it.
        warn: bool,
    },
    /// The sm90 GEMM is set up but not yet checked on this device: run the self-check, record
    /// its outcome, and decide again.
    RunSelfCheck,
    /// `EMBER_GEMM=sm90` was asked for and cannot be honoured.
    Refuse(String),
}

/// The GEMM path for a request, given the sm90 setup's and the self-check's outcomes.
pub fn decide(request: GemmChoice, setup: &Sm90Setup, check: &SelfCheck) -> Verdict {
    let use_sm80 = |why: String, warn: bool| Verdict::Use {
        path: GemmPath::Sm80,
        why,
        warn,
    };
    match (request, setup) {
        (GemmChoice::Sm80, _) => use_sm80("forced by EMBER_GEMM=sm80".into(), false),
        (GemmChoice::Sm90, Sm90Setup::Ready) => Verdict::Use {
            path: GemmPath::Sm90,
            why: "forced by EMBER_GEMM=sm90 (no self-check)".into(),
            warn: false,
        },
        (GemmChoice::Sm90, Sm90Setup::NotHopper { major, minor }) => Verdict::Refuse(format!(
            "EMBER_GEMM=sm90, but the sm90 GEMM needs compute capability 9.x and this GPU is {major}.{minor}"
        )),
        (GemmChoice::Sm90, Sm90Setup::NotLoaded) => Verdict::Refuse(
            "EMBER_GEMM=sm90, but the sm90 GEMM was not loaded (the backend was opened with EMBER_GEMM=sm80)"
                .into(),
        ),
        (GemmChoice::Sm90, Sm90Setup::Failed(why)) => {
            Verdict::Refuse(format!("EMBER_GEMM=sm90, but the sm90 GEMM cannot run: {why}"))
        }
        (GemmChoice::Auto, Sm90Setup::NotHopper { major, minor }) => use_sm80(
            format!("compute capability {major}.{minor}: the sm90 GEMM needs 9.x"),
            false,
        ),
        (GemmChoice::Auto, Sm90Setup::NotLoaded) => use_sm80(
            "the sm90 GEMM was not loaded (opened with EMBER_GEMM=sm80)".into(),
            false,
        ),
        (GemmChoice::Auto, Sm90Setup::Failed(why)) => {
            use_sm80(format!("the sm90 GEMM failed to set up: {why}"), true)
        }
        (GemmChoice::Auto, Sm90Setup::Ready) => match check {
            SelfCheck::NotRun => Verdict::RunSelfCheck,
            SelfCheck::Passed(what) => Verdict::Use {
                path: GemmPath::Sm90,
                why: format!("self-check passed ({what})"),
                warn: false,
            },
            SelfCheck::Failed(why) => use_sm80(format!("the sm90 GEMM failed its self-check: {why}"), true),
        },
    }
}

/// `EMBER_FAULT_SM90`: makes one sm90 failure happen on purpose, so that the fallback can be
/// tested on a GPU where the sm90 GEMM works (tests/gpu_faults.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedSm90Fault {
    /// The module "fails to load".
    Setup,
    /// Every tensor map "fails to encode".
    TensorMap,
    /// The self-check sees a wrong element in every sm90 result.
    SelfCheck,
}

impl InjectedSm90Fault {
    pub fn parse(value: &str) -> Result<InjectedSm90Fault, String> {
        match value {
            "setup" => Ok(InjectedSm90Fault::Setup),
            "tensor-map" => Ok(InjectedSm90Fault::TensorMap),
            "self-check" => Ok(InjectedSm90Fault::SelfCheck),
            other => Err(format!(
                "EMBER_FAULT_SM90={other}: expected setup, tensor-map or self-check"
            )),
        }
    }
}

/// The fault `EMBER_FAULT_SM90` asks for (read once; a bad value is reported by `Device::open`
/// through [`injected_sm90_fault_setting`]).
pub fn injected_sm90_fault() -> Option<InjectedSm90Fault> {
    injected_sm90_fault_setting().ok().flatten()
}

pub fn injected_sm90_fault_setting() -> Result<Option<InjectedSm90Fault>, String> {
    static FAULT: OnceLock<Result<Option<InjectedSm90Fault>, String>> = OnceLock::new();
    FAULT
        .get_or_init(|| match std::env::var("EMBER_FAULT_SM90") {
            Ok(v) => InjectedSm90Fault::parse(&v).map(Some),
            Err(_) => Ok(None),
        })
        .clone()
}

/// Prints `message` to standard error once per process (a library has no logger here; the CLI
/// and the tests read standard error).
pub fn warn_once(message: &str) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let Ok(mut seen) = SEEN.lock() else { return };
    if seen.get_or_insert_with(HashSet::new).insert(message.to_string()) {
        eprintln!("ember: warning: {message}");
    }
}

struct Inputs {
    request: GemmChoice,
    setup: Sm90Setup,
    check: SelfCheck,
}

/// A device's request, setup and self-check outcomes, and the path they lead to.
pub struct GemmState {
    inputs: Mutex<Inputs>,
    /// The last [`Verdict::Use`]'s path for the launch path's fast read: 0 not decided (or
    /// changed since), 1 sm80, 2 sm90.
    cached: AtomicU8,
}

/// How [`GemmState::path`] runs the self-check when the decision needs it: Err only when the
/// device is unusable afterwards.
pub type SelfCheckRunner<'a> = &'a dyn Fn() -> Result<SelfCheck, String>;

impl GemmState {
    pub fn new(request: GemmChoice, setup: Sm90Setup) -> GemmState {
        GemmState {
            inputs: Mutex::new(Inputs {
                request,
                setup,
                check: SelfCheck::NotRun,
            }),
            cached: AtomicU8::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inputs> {
        // The inputs are plain values, valid whatever a panicking holder was doing.
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path last decided, if nothing has changed since (the launch path's cheap read).
    pub fn cached(&self) -> Option<GemmPath> {
        match self.cached.load(Ordering::Acquire) {
            1 => Some(GemmPath::Sm80),
            2 => Some(GemmPath::Sm90),
            _ => None,
        }
    }

    /// The path now: from the cache, else decided (running the self-check once if needed, with
    /// the lock held so that two threads do not both run it). `label` names the device in the
    /// warning. Err: a refused `EMBER_GEMM=sm90`, or a self-check that left the device unusable.
    pub fn path(&self, label: &str, self_check: SelfCheckRunner) -> Result<GemmPath, String> {
        match self.cached() {
            Some(path) => Ok(path),
            None => self.resolve(label, self_check).map(|(path, _)| path),
        }
    }

    /// The path and why (running the self-check if it has not run).
    pub fn resolve(&self, label: &str, self_check: SelfCheckRunner) -> Result<(GemmPath, String), String> {
        let mut inputs = self.lock();
        loop {
            if let Some(done) = self.conclude(&inputs, label) {
                return done;
            }
            inputs.check = self_check()?;
        }
    }

    /// The path and why without running anything: `Ok(None)` while the self-check is pending.
    /// Warns of a fallback like [`GemmState::resolve`] (at open, a failed setup is heard of at
    /// once, not at the first GEMM).
    pub fn settle(&self, label: &str) -> Result<Option<(GemmPath, String)>, String> {
        let inputs = self.lock();
        self.conclude(&inputs, label).transpose()
    }

    /// [`decide`] on the current inputs: warns of a fallback and caches a path; None when the
    /// self-check must run first.
    fn conclude(&self, inputs: &Inputs, label: &str) -> Option<Result<(GemmPath, String), String>> {
        match decide(inputs.request, &inputs.setup, &inputs.check) {
            Verdict::Use { path, why, warn } => {
                if warn {
                    warn_once(&format!("{label}: using the sm80 GEMM: {why}"));
                }
                let code = match path {
                    GemmPath::Sm80 => 1,
                    GemmPath::Sm90 => 2,
                };
                self.cached.store(code, Ordering::Release);
                Some(Ok((path, why)))
            }
            Verdict::Refuse(why) => Some(Err(why)),
            Verdict::RunSelfCheck => None,
        }
    }

    pub fn request(&self) -> GemmChoice {
        self.lock().request
    }

    /// Changes the request; Err (and no change) when `EMBER_GEMM=sm90` semantics cannot be met.
    pub fn set_request(&self, request: GemmChoice) -> Result<(), String> {
        let mut inputs = self.lock();
        if let Verdict::Refuse(why) = decide(request, &inputs.setup, &inputs.check) {
            return Err(why);
        }
        inputs.request = request;
        self.cached.store(0, Ordering::Release);
        Ok(())
    }

    /// Whether the sm90 kernels are loaded and set up (whatever the request or the self-check).
    pub fn sm90_ready(&self) -> bool {
        self.lock().setup == Sm90Setup::Ready
    }

    /// Records a failure of the sm90 setup found after the device was opened (a tensor map that
    /// did not encode): from now on the sm90 GEMM is off on this device, with that cause.
    pub fn sm90_failed(&self, why: String) {
        let mut inputs = self.lock();
        if inputs.setup == Sm90Setup::Ready {
            inputs.setup = Sm90Setup::Failed(why);
            self.cached.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(v: Verdict) -> (GemmPath, String, bool) {
        match v {
            Verdict::Use { path, why, warn } => (path, why, warn),
            other => panic!("expected a path, got {other:?}"),
        }
    }

    const HOPPER_FAILED: &str = "loading the PTX of kernels/gemm_sm90.cu failed: CUDA_ERROR_INVALID_PTX";

    #[test]
    fn auto_on_hopper_waits_for_the_self_check_and_follows_it() {
        let ready = Sm90Setup::Ready;
        assert_eq!(
            decide(GemmChoice::Auto, &ready, &SelfCheck::NotRun),
            Verdict::RunSelfCheck
        );
        let (path, why, warn) = used(decide(
            GemmChoice::Auto,
            &ready,
            &SelfCheck::Passed("3 shapes x 4 tiles".into()),
        ));
        assert_eq!((path, warn), (GemmPath::Sm90, false));
        assert!(why.contains("self-check passed (3 shapes x 4 tiles)"), "{why}");
        let (path, why, warn) = used(decide(
            GemmChoice::Auto,
            &ready,
            &SelfCheck::Failed("gemm_sm90_128x192 on 77x384x448: error 0.3".into()),
        ));
        assert_eq!((path, warn), (GemmPath::Sm80, true));
        assert!(
            why.contains("self-check") && why.contains("gemm_sm90_128x192"),
            "{why}"
        );
    }

    #[test]
    fn auto_falls_back_with_a_warning_naming_a_failed_setup() {
        let failed = Sm90Setup::Failed(HOPPER_FAILED.into());
        for check in [SelfCheck::NotRun, SelfCheck::Passed("x".into())] {
            let (path, why, warn) = used(decide(GemmChoice::Auto, &failed, &check));
            assert_eq!((path, warn), (GemmPath::Sm80, true));
            assert!(why.contains(HOPPER_FAILED), "{why}");
        }
    }

    #[test]
    fn auto_off_hopper_is_sm80_without_a_warning() {
        let (path, why, warn) = used(decide(
            GemmChoice::Auto,
            &Sm90Setup::NotHopper { major: 8, minor: 0 },
            &SelfCheck::NotRun,
        ));
        assert_eq!((path, warn), (GemmPath::Sm80, false));
        assert!(why.contains("8.0"), "{why}");
        let (path, _, warn) = used(decide(
            GemmChoice::Auto,
            &Sm90Setup::NotLoaded,
            &SelfCheck::NotRun,
        ));
        assert_eq!((path, warn), (GemmPath::Sm80, false));
    }

    #[test]
    fn ember_gemm_forces_either_path() {
        for setup in [
            Sm90Setup::Ready,
            Sm90Setup::NotLoaded,
            Sm90Setup::Failed(HOPPER_FAILED.into()),
            Sm90Setup::NotHopper { major: 9, minor: 0 },
        ] {
            for check in [
                SelfCheck::NotRun,
                SelfCheck::Passed("x".into()),
                SelfCheck::Failed("y".into()),
            ] {
                let (path, why, warn) = used(decide(GemmChoice::Sm80, &setup, &check));
                assert_eq!((path, warn), (GemmPath::Sm80, false));
                assert!(why.contains("EMBER_GEMM=sm80"), "{why}");
                let forced = decide(GemmChoice::Sm90, &setup, &check);
                if setup == Sm90Setup::Ready {
                    // Forced: the self-check's outcome does not matter.
                    let (path, why, _) = used(forced);
                    assert_eq!(path, GemmPath::Sm90);
                    assert!(why.contains("EMBER_GEMM=sm90"), "{why}");
                } else {
                    let Verdict::Refuse(why) = forced else {
                        panic!("{setup:?}: EMBER_GEMM=sm90 was not refused: {forced:?}")
                    };
                    assert!(why.contains("EMBER_GEMM=sm90"), "{why}");
                }
            }
        }
        let Verdict::Refuse(why) = decide(
            GemmChoice::Sm90,
            &Sm90Setup::Failed(HOPPER_FAILED.into()),
            &SelfCheck::NotRun,
        ) else {
            panic!("not refused")
        };
        assert!(why.contains(HOPPER_FAILED), "{why}");
    }

    #[test]
    fn ember_gemm_values() {
        assert_eq!(GemmChoice::from_env(None), Ok(GemmChoice::Auto));
        assert_eq!(GemmChoice::from_env(Some("auto")), Ok(GemmChoice::Auto));
        assert_eq!(GemmChoice::from_env(Some("sm80")), Ok(GemmChoice::Sm80));
        assert_eq!(GemmChoice::from_env(Some("sm90")), Ok(GemmChoice::Sm90));
        let err = GemmChoice::from_env(Some("cublas")).unwrap_err();
        assert!(err.contains("EMBER_GEMM=cublas"), "{err}");
        assert!(InjectedSm90Fault::parse("tensor-map").is_ok());
        assert!(InjectedSm90Fault::parse("nope")
            .unwrap_err()
            .contains("EMBER_FAULT_SM90=nope"));
    }

    #[test]
    fn the_state_runs_the_self_check_once_and_caches_the_path() {
        let state = GemmState::new(GemmChoice::Auto, Sm90Setup::Ready);
        assert_eq!(state.settle("cuda:0"), Ok(None));
        let runs = std::cell::Cell::new(0);
        let check = || {
            runs.set(runs.get() + 1);
            Ok(SelfCheck::Passed("1 shape".into()))
        };
        assert_eq!(state.path("cuda:0", &check), Ok(GemmPath::Sm90));
        assert_eq!(state.path("cuda:0", &check), Ok(GemmPath::Sm90));
        assert_eq!(runs.get(), 1);
        // A tensor map that fails later turns the sm90 GEMM off for good.
        state.sm90_failed("cuTensorMapEncodeTiled: CUDA_ERROR_INVALID_VALUE".into());
        let (path, why) = state.resolve("cuda:0", &check).unwrap();
        assert_eq!(path, GemmPath::Sm80);
        assert!(why.contains("cuTensorMapEncodeTiled"), "{why}");
        assert_eq!(runs.get(), 1);
        // Forcing sm90 is now refused, and leaves the request as it was.
        assert!(state.set_request(GemmChoice::Sm90).is_err());
        assert_eq!(state.request(), GemmChoice::Auto);
        assert!(!state.sm90_ready());
    }

    #[test]
    fn a_self_check_that_breaks_the_device_is_an_error_not_a_path() {
        let state = GemmState::new(GemmChoice::Auto, Sm90Setup::Ready);
        let broken = || Err("the sm90 self-check left cuda:0 unusable: CUDA_ERROR_LAUNCH_FAILED".to_string());
        let err = state.path("cuda:0", &broken).unwrap_err();
        assert!(err.contains("unusable"), "{err}");
        // Not cached: the next call asks again (and gets the same answer from a dead context).
        assert_eq!(state.settle("cuda:0"), Ok(None));
    }

    #[test]
    fn forcing_paths_at_run_time_switches_the_cached_answer() {
        let state = GemmState::new(GemmChoice::Auto, Sm90Setup::Ready);
        let failing = || Ok(SelfCheck::Failed("wrong".into()));
        assert_eq!(state.path("cuda:0", &failing), Ok(GemmPath::Sm80));
        state.set_request(GemmChoice::Sm90).unwrap();
        assert_eq!(state.path("cuda:0", &failing), Ok(GemmPath::Sm90));
        state.set_request(GemmChoice::Sm80).unwrap();
        assert_eq!(state.path("cuda:0", &failing), Ok(GemmPath::Sm80));
    }
}
