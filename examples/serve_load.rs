//! A load generator for an OpenAI-compatible embeddings server (ember serve, or infinity-emb
//! beside it): N clients, each sending requests of a log-normal number of texts (1 to 64,
//! median 6) drawn from a corpus, for a bounded time and count, on loopback. Closed loop by
//! default (each client sends its next request when the last is answered: the server is kept
//! saturated); with `--rate R` the clients together send R requests a second at exponential
//! intervals (open loop: below the server's capacity the latency is a request's own). Prints
//! one JSON object: requests by status, tokens/s from the answers' `usage`, p50/p99 latency of
//! the answered requests, and the server's peak RSS (sampled from /proc when given its pid).
//!
//! usage: cargo run --release --example serve_load -- --url http://127.0.0.1:8080 \
//!            --path /v1/embeddings --corpus corpus.txt [--clients 64] [--seconds 30] \
//!            [--max-requests 200000] [--rate R] [--pid PID] [--model NAME] [--seed 1]
//!
//! A 429 is counted and retried after 20 ms (a client that is refused does not spin).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "/v1/embeddings")]
    path: String,
    #[arg(long)]
    corpus: std::path::PathBuf,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    #[arg(long, default_value_t = 200_000)]
    max_requests: u64,
    /// Requests a second over all clients, at exponential intervals (open loop); a client that
    /// falls behind its schedule sends at once. Without it, clients send back to back.
    #[arg(long)]
    rate: Option<f64>,
    /// The server's process id, to sample its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    model: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: a small deterministic generator, one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential interval of mean `1 / rate` seconds.
    fn interval(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-(1.0 - self.uniform()).ln() / rate)
    }

    /// Texts per request: round(exp(ln 6 + z)), z standard normal, clamped to 1..=64.
    fn texts_per_request(&mut self) -> usize {
        let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        ((6f64.ln() + z).exp().round() as usize).clamp(1, 64)
    }
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
    tokens: u64,
    texts: u64,
    /// Of `tokens` and `texts`, those of requests answered before the deadline: the rates are
    /// taken over the window the load was offered in, not over the drain after it.
    tokens_in_window: u64,
    texts_in_window: u64,
    wrong_rows: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args = Args::parse();
    let corpus: Vec<String> = std::fs::read_to_string(&args.corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", args.corpus.display()))
        .lines()
        .map(str::to_string)
        .collect();
    assert!(!corpus.is_empty(), "empty corpus");
    let url = format!("{}{}", args.url.trim_end_matches('/'), args.path);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let sent = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    let peak_rss = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        if let Some(pid) = args.pid {
            let (peak, stop) = (Arc::clone(&peak_rss), &stop);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        let clients: Vec<_> = (0..args.clients)
            .map(|c| {
                let (corpus, url, sent, tally, model) = (&corpus, &url, &sent, &tally, &args.model);
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(120))
                        .build();
                    let mut rng = Rng(args.seed.wrapping_mul(1_000_003).wrapping_add(c as u64 + 1) | 1);
                    let mut local = Tally::default();
                    let per_client = args.rate.map(|r| r / args.clients as f64);
                    let mut next_send = started;
                    loop {
                        if let Some(rate) = per_client {
                            next_send += rng.interval(rate);
                            if next_send >= deadline {
                                break;
                            }
                            std::thread::sleep(next_send.saturating_duration_since(Instant::now()));
                        }
                        if Instant::now() >= deadline
                            || sent.fetch_add(1, Ordering::Relaxed) >= args.max_requests
                        {
                            break;
                        }
                        let n = rng.texts_per_request();
                        let texts: Vec<&str> = (0..n)
                            .map(|_| corpus[(rng.next() % corpus.len() as u64) as usize].as_str())
                            .collect();
                        let t = Instant::now();
                        let result = agent.post(url).send_json(json!({"input": texts, "model": model}));
                        let status = match result {
                            Ok(response) => {
                                let ms = t.elapsed().as_secs_f64() * 1e3;
                                let body: Value = response.into_json().unwrap_or(Value::Null);
                                if body["data"].as_array().map(Vec::len) != Some(n) {
                                    local.wrong_rows += 1;
                                }
                                let tokens = body["usage"]["total_tokens"].as_u64().unwrap_or(0);
                                local.tokens += tokens;
                                local.texts += n as u64;
                                if Instant::now() <= deadline {
                                    local.tokens_in_window += tokens;
                                    local.texts_in_window += n as u64;
                                }
                                local.latencies_ms.push(ms);
                                "200".to_string()
                            }
                            Err(ureq::Error::Status(code, _)) => {
                                if code == 429 {
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                code.to_string()
                            }
                            Err(e) => format!("transport: {}", e.kind()),
                        };
                        *local.statuses.entry(status).or_default() += 1;
                    }
                    let mut all = tally.lock().unwrap();
                    for (k, v) in local.statuses {
                        *all.statuses.entry(k).or_default() += v;
                    }
                    all.latencies_ms.extend(local.latencies_ms);
                    all.tokens += local.tokens;
                    all.texts += local.texts;
                    all.tokens_in_window += local.tokens_in_window;
                    all.texts_in_window += local.texts_in_window;
                    all.wrong_rows += local.wrong_rows;
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let seconds = started.elapsed().as_secs_f64();
    let window = args.seconds.min(seconds);
    let mut tally = tally.into_inner().unwrap();
    tally.latencies_ms.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let l = &tally.latencies_ms;
        if l.is_empty() {
            f64::NAN
        } else {
            l[((l.len() - 1) as f64 * q).round() as usize]
        }
    };
    let peak = peak_rss.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "url": url,
            "clients": args.clients,
            "rate": args.rate,
            "seconds": seconds,
            "statuses": tally.statuses,
            "answered": tally.latencies_ms.len(),
            "wrong_row_counts": tally.wrong_rows,
            "texts": tally.texts,
            "tokens": tally.tokens,
            "tokens_per_s": tally.tokens_in_window as f64 / window,
            // infinity-emb's `usage` counts characters, not tokens: compare servers by texts/s
            // (every run sends the same requests, from the same seeds).
            "texts_per_s": tally.texts_in_window as f64 / window,
            "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99),
            "peak_rss_mib": (peak > 0).then(|| peak as f64 / 1024.0),
        })
    );
}
