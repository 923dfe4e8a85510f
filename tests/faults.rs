//! Faults while encoding (issue: hostile inputs and faults): kill -9 at random points of a long
//! run then `--resume`, a full disk, an unwritable output folder, running out of memory (a GPU
//! that is not there: tests/pipeline.rs). After each, either the run finishes with the bytes of an
//! uninterrupted run, or it stops with an error and leaves no output that looks complete.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::cli::*;
use common::*;
use ember::Device;

/// A small xorshift generator; the seed is printed so that a failure can be replayed with
/// EMBER_FAULT_SEED.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("EMBER_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: EMBER_FAULT_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Kills runs of `args` (which must name `output` and `--resume`) at random points until one
/// finishes: right after the start, or a random few milliseconds after a random checkpoint.
/// Returns how many runs were killed while working.
fn kill_at_random_points(args: &[&str], output: &Path, kills: usize, rng: &mut Rng) -> usize {
    let journal = output.with_file_name(format!(
        "{}.journal",
        output.file_name().unwrap().to_str().unwrap()
    ));
    let mut killed = 0;
    for round in 0.. {
        let mut child = ember_command().args(args).stderr(Stdio::piped()).spawn().unwrap();
        let started = Instant::now();
        if round < kills {
            if round == 0 {
                // Before or around the first write.
                std::thread::sleep(Duration::from_millis(rng.below(40)));
            } else {
                let records = journal_records(&journal) + 1 + rng.below(6) as usize;
                while journal_records(&journal) < records && child.try_wait().unwrap().is_none() {
                    assert!(started.elapsed() < Duration::from_secs(120), "no progress");
                    std::thread::sleep(Duration::from_millis(2));
                }
                std::thread::sleep(Duration::from_micros(rng.below(20_000)));
            }
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                let out = child.wait_with_output().unwrap();
                assert!(!out.status.success());
                assert_nothing_complete(output);
                killed += 1;
                continue;
            }
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        return killed;
    }
    unreachable!()
}

#[test]
fn kill_9_at_random_points_then_resume_is_byte_identical() {
    let mut rng = Rng::new("kill_9_at_random_points");
    let dir = scratch("kill-random");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(8000));
    let model = embed_model();
    for (name, extra) in [("out.npy", &[][..]), ("out.jsonl", &["--pooling", "mean"][..])] {
        let window = ["--window", "100", "--threads", "1", "--checkpoint-secs", "0"];
        let base = [&encode_base(&model, &input)[..], &window[..], extra].concat();
        let whole = dir.join(format!("whole-{name}"));
        ok(ember(&[&base[..], &["--output", s(&whole)]].concat()));
        let output = dir.join(name);
        let args = [&base[..], &["--output", s(&output), "--resume"]].concat();
        let killed = kill_at_random_points(&args, &output, 6, &mut rng);
        eprintln!("{name}: {killed} runs killed before one finished");
        assert!(killed >= 4, "only {killed} kills landed while the run worked");
        assert_eq!(
            std::fs::read(&output).unwrap(),
            std::fs::read(&whole).unwrap(),
            "{name}"
        );
        let partial = dir.join(format!("{name}.partial"));
        assert!(!partial.exists() && !dir.join(format!("{name}.journal")).exists());
    }
}

#[test]
fn a_full_disk_stops_with_an_error_and_resume_finishes() {
    let dir = scratch("full-disk");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(3000));
    let model = embed_model();
    let base = [
        &encode_base(&model, &input)[..],
        &["--window", "100", "--checkpoint-secs", "0"],
    ]
    .concat();
    let whole = dir.join("whole.npy");
    ok(ember(&[&base[..], &["--output", s(&whole)]].concat()));
    let output = dir.join("out.npy");
    let args = [&base[..], &["--output", s(&output)]].concat();
    // The file size limit stands in for a full disk: a write past it fails with EFBIG, as one
    // fails with ENOSPC on a full disk (SIGXFSZ is ignored so that the write returns an error).
    let mut command = ember_command();
    command.args(&args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 200_000,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("out.npy.partial") && err.contains("too large"),
        "{err}"
    );
    assert!(
        err.contains("--resume"),
        "finished rows must be kept and said so: {err}"
    );
    assert_nothing_complete(&output);
    // Room again: the run resumes where its journal says and ends byte-identical.
    ok(ember(&[&args[..], &["--resume"]].concat()));
    assert_eq!(std::fs::read(&output).unwrap(), std::fs::read(&whole).unwrap());
}

#[test]
fn an_unwritable_output_is_an_error_before_any_work() {
    let dir = scratch("unwritable");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(50));
    let model = embed_model();
    let file = dir.join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let mut targets = vec![
        dir.join("missing-folder/out.npy"),
        file.join("out.npy"),
        Path::new("/proc/ember-cannot-write-here.npy").to_path_buf(),
    ];
    // Permission bits do not stop root, who runs the tests in some containers.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let locked = dir.join("locked");
        std::fs::create_dir(&locked).unwrap();
        let read_only: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o555);
        std::fs::set_permissions(&locked, read_only).unwrap();
        targets.push(locked.join("out.npy"));
    }
    for target in targets {
        let started = Instant::now();
        let out = encode(&model, &input, &target, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{}: {err}", target.display());
        assert!(err.contains(s(&target)), "the error must name the output: {err}");
        assert!(!err.contains("texts,"), "it failed after encoding: {err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_nothing_complete(&target);
        assert!(!target.with_extension("npy.journal").exists());
    }
}

#[test]
fn out_of_memory_on_the_cpu_halves_batches_and_keeps_the_results() {
    out_of_memory_scenario(Device::Cpu);
}

#[test]
#[ignore = "a child of out_of_memory_on_the_cpu_halves_batches_and_keeps_the_results"]
fn child_encodes_under_an_allocation_limit() {
    if is_child() {
        encode_under_an_allocation_limit(Device::Cpu);
    }
}

#[test]
#[ignore = "a child of out_of_memory_on_the_cpu_halves_batches_and_keeps_the_results"]
fn child_reports_a_sequence_that_cannot_fit() {
    if is_child() {
        report_a_sequence_that_cannot_fit(Device::Cpu);
    }
}

#[test]
fn the_cli_cuts_batches_when_memory_runs_out_and_says_so() {
    let dir = scratch("oom-cli");
    let input = dir.join("in.txt");
    write_lines(&input, &mixed_corpus(600));
    let model = embed_model();
    let whole = dir.join("whole.npy");
    ok(encode(&model, &input, &whole, &[]));
    let output = dir.join("out.npy");
    let run = |limit: &str| {
        ember_command()
            .args(encode_base(&model, &input))
            .args(["--output", s(&output)])
            .env("EMBER_FAULT_ALLOC_LIMIT", limit)
            .output()
            .unwrap()
    };
    let out = ok(run("65536"));
    assert!(stderr(&out).contains("cut to"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&output).unwrap(), std::fs::read(&whole).unwrap());
    std::fs::remove_file(&output).unwrap();
    let out = run("1024");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("out of memory") && err.contains("single sequence"),
        "{err}"
    );
    assert_nothing_complete(&output);
}
