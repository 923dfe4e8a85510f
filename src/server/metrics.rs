//! The server's counters and histograms, rendered in the Prometheus text format at /metrics.
//! Names follow text-embeddings-inference's (`te_` prefix) so that its dashboards work.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed bucket bounds (cumulative counts are computed when rendered).
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let mut s = self.state.lock().unwrap();
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            s.counts[i] += 1;
        }
        s.sum += value;
        s.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = self.state.lock().unwrap();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&s.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", s.sum, s.count);
    }
}

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const TOKENS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// Why a request failed, as the `err` label of `te_request_failure`.
pub const FAILURE_KINDS: &[&str] = &[
    "unauthorized",
    "payload_too_large",
    "malformed",
    "validation",
    "tokenizer",
    "overloaded",
    "backend",
    "cancelled",
];

pub struct Metrics {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    failures: Vec<AtomicU64>,
    /// Requests admitted and not yet answered.
    pub in_flight: AtomicU64,
    pub tokenization_seconds: Histogram,
    pub queue_seconds: Histogram,
    pub inference_seconds: Histogram,
    pub request_seconds: Histogram,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub input_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            successes: AtomicU64::new(0),
            failures: FAILURE_KINDS.iter().map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicU64::new(0),
            tokenization_seconds: Histogram::new(SECONDS),
            queue_seconds: Histogram::new(SECONDS),
            inference_seconds: Histogram::new(SECONDS),
            request_seconds: Histogram::new(SECONDS),
            batch_size: Histogram::new(SIZES),
            batch_tokens: Histogram::new(TOKENS),
            input_tokens: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a failure of `kind`, one of [`FAILURE_KINDS`].
    pub fn fail(&self, kind: &str) {
        if let Some(i) = FAILURE_KINDS.iter().position(|k| *k == kind) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(
            &mut out,
            "te_request_count",
            "Requests received",
            self.requests.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "te_request_success",
            "Requests answered with 2xx",
            self.successes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP te_request_failure Failed requests by kind\n# TYPE te_request_failure counter"
        );
        for (kind, count) in FAILURE_KINDS.iter().zip(&self.failures) {
            let _ = writeln!(
                out,
                "te_request_failure{{err=\"{kind}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        counter(
            &mut out,
            "te_request_input_tokens",
            "Tokens of all admitted inputs",
            self.input_tokens.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP te_queue_size Requests admitted and not yet answered\n# TYPE te_queue_size gauge\nte_queue_size {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        self.tokenization_seconds.render(
            &mut out,
            "te_request_tokenization_duration",
            "Seconds tokenizing a request",
        );
        self.queue_seconds.render(
            &mut out,
            "te_request_queue_duration",
            "Seconds a request waited for a worker",
        );
        self.inference_seconds.render(
            &mut out,
            "te_request_inference_duration",
            "Seconds per forward pass",
        );
        self.request_seconds.render(
            &mut out,
            "te_request_duration",
            "Seconds from admission to answer",
        );
        self.batch_size
            .render(&mut out, "te_batch_next_size", "Sequences per forward pass");
        self.batch_tokens
            .render(&mut out, "te_batch_next_tokens", "Tokens per forward pass");
        out
    }
}
