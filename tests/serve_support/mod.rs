//! Starting `ember serve` for a test: the real binary on a loopback port chosen by the system,
//! its address read from its "listening on" line, and a HTTP client (ureq) bound to it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::cli::ember_command;

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// `ember serve --model MODEL --port 0` plus `extra`; waits until it listens.
    pub fn start(model: &Path, extra: &[&str]) -> Server {
        let mut child = ember_command()
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--port",
                "0",
                "--threads",
                "2",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("ember serve ended before listening").unwrap();
            if let Some(address) = line.strip_prefix("ember: listening on ") {
                break address.to_string();
            }
        };
        // Keep draining stderr so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs `body` as JSON; returns the status and the parsed answer (a string when not JSON).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), &[])
    }

    pub fn post_raw(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = agent()
            .post(&self.url(path))
            .set("content-type", "application/json");
        for (k, v) in headers {
            request = request.set(k, v);
        }
        answer(request.send_string(body))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match agent().get(&self.url(path)).call() {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// host:port, for raw sockets (tests/serve_hostile.rs).
    pub fn address(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let (status, response) = match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(code, r)) => (code, r),
        Err(e) => panic!("request failed: {e}"),
    };
    let text = response.into_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A JSON array of numbers as f32s (exact: the server writes each f32's value).
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}
