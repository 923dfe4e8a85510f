//! `ember serve` under hostile and heavy use: bodies that are huge, slow, malformed or full of
//! tiny inputs, request heads that trickle in, clients that vanish, more clients than places, and SIGTERM with work in flight.
//! Each gets a clean status, never a crash, and the other clients' answers stay exact.

mod common;
mod serve_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::minilm_dir;
use serde_json::{json, Value};
use serve_support::{f32s, Server};

/// Sends raw bytes and returns the status line's code (0 when the server closed first).
fn raw_status(server: &Server, head: &str, body: &[u8], pause: Option<Duration>) -> u16 {
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in body.chunks(1 << 16) {
        if stream.write_all(chunk).is_err() {
            break; // the server answered and closed: read what it said
        }
        if let Some(p) = pause {
            std::thread::sleep(p);
        }
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn reference(server: &Server) -> Vec<f32> {
    let (status, body) = server.post("/embed", &json!({"inputs": "a reference sentence"}));
    assert_eq!(status, 200, "{body}");
    f32s(&body[0])
}

#[test]
fn hostile_bodies_get_clean_statuses_and_leave_other_answers_exact() {
    let server = Server::start(&minilm_dir(), &["--body-timeout", "1"]);
    let before = reference(&server);

    // 100 MB declared: 413 before the body is read.
    let head = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n";
    assert_eq!(raw_status(&server, head, &[b'['; 1 << 20], None), 413);

    // 100 MB chunked (no length declared): cut at the limit, 413.
    let chunked = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut body = Vec::new();
    for _ in 0..100 {
        body.extend_from_slice(format!("{:x}\r\n", 1 << 20).as_bytes());
        body.extend(std::iter::repeat_n(b' ', 1 << 20));
        body.extend_from_slice(b"\r\n");
    }
    assert_eq!(raw_status(&server, chunked, &body, None), 413);

    // A million tiny inputs: over the payload limit (2 MB) long before the batch limit.
    let million = json!({"inputs": vec!["a"; 1_000_000]}).to_string();
    let head = format!(
        "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        million.len()
    );
    assert_eq!(raw_status(&server, &head, million.as_bytes(), None), 413);
    // Under the payload limit but over the batch limit: 413 too, TEI's "validation".
    let many = json!({"inputs": vec!["a"; 100_000]}).to_string();
    let (status, answer) = server.post_raw("/embed", &many, &[]);
    assert_eq!((status, answer["error_type"].clone()), (413, json!("validation")));

    // Invalid escapes: a lone surrogate, a bad \u, raw invalid UTF-8 bytes.
    assert_eq!(server.post_raw("/embed", r#"{"inputs": "\udc00"}"#, &[]).0, 400);
    assert_eq!(server.post_raw("/embed", r#"{"inputs": "\uZZZZ"}"#, &[]).0, 400);
    let head = "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n";
    assert_eq!(
        raw_status(&server, head, b"{\"inputs\": \"\xff\xfe\"}", None),
        400
    );

    // Wrong types and malformed JSON.
    assert_eq!(server.post_raw("/embed", r#"{"inputs": {"a": 1}}"#, &[]).0, 422);
    assert_eq!(server.post_raw("/embed", r#"{"inputs": ["a", "#, &[]).0, 400);
    assert_eq!(
        server.post_raw("/rerank", r#"{"query": 1, "texts": []}"#, &[]).0,
        422
    );

    // Slowloris: a body that trickles in past --body-timeout is 408, and the server moves on.
    let slow =
        "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n";
    let started = Instant::now();
    let status = raw_status(
        &server,
        slow,
        b"{\"inputs\": \"a slow body that trickles\"}",
        Some(Duration::from_millis(1500)),
    );
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(10));

    // Slowloris on the head: header bytes trickling in for longer than --body-timeout close
    // the connection, while other clients are answered as usual.
    let slow_head = std::thread::spawn({
        let address = server.address();
        move || {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.set_read_timeout(Some(Duration::from_millis(250))).unwrap();
            stream.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n").unwrap();
            let started = Instant::now();
            let mut byte = [0u8; 256];
            while started.elapsed() < Duration::from_secs(20) {
                if stream.write_all(b"X").is_err() {
                    return started.elapsed();
                }
                match stream.read(&mut byte) {
                    // Closed (or answered and closed): the server gave up on this client.
                    Ok(_) => return started.elapsed(),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return started.elapsed(),
                }
            }
            started.elapsed()
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reference(&server), before, "a slow head changed another answer");
    let held = slow_head.join().unwrap();
    assert!(
        held >= Duration::from_millis(500) && held < Duration::from_secs(5),
        "a head trickling in was held for {held:?} (the limit is 1 s)"
    );

    assert_eq!(
        reference(&server),
        before,
        "hostile requests changed another answer"
    );
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn a_full_queue_is_429_at_once_and_admitted_answers_stay_exact() {
    let server = Server::start(&minilm_dir(), &["--max-concurrent-requests", "2"]);
    let texts: Vec<String> = (0..32)
        .map(|i| format!("{i} {}", "many words in a long text ".repeat(40)))
        .collect();
    let body = json!({"inputs": texts, "truncate": true});
    let (status, want) = server.post("/embed", &body);
    assert_eq!(status, 200);
    let results: Vec<(u16, Value, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    let t = Instant::now();
                    let (s, v) = server.post("/embed", &body);
                    (s, v, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let overloaded: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(!overloaded.is_empty(), "12 clients, 2 places, no 429");
    for (status, answer, _) in &results {
        match status {
            200 => assert_eq!(answer, &want, "an admitted answer differs"),
            429 => assert_eq!(answer["error_type"], "overloaded"),
            other => panic!("status {other}: {answer}"),
        }
    }
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("te_request_failure{err=\"overloaded\"}"),
        "{metrics}"
    );
}

#[test]
fn clients_that_disconnect_free_their_place_and_sigterm_drains() {
    let server = Server::start(&minilm_dir(), &["--max-concurrent-requests", "1"]);
    let texts: Vec<String> = (0..32).map(|i| format!("{i} {}", "words ".repeat(200))).collect();
    let body = json!({"inputs": texts, "truncate": true}).to_string();
    // Clients that send a request and vanish at once, many times over: the one place is freed
    // each time (or the next request would be 429 forever).
    for _ in 0..5 {
        let head = format!(
            "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(server.address()).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        drop(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = server.post("/embed", &json!({"inputs": "after the vanished clients"}));
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            Instant::now() < deadline,
            "the vanished clients' place was never freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGTERM while a request is in flight: it is answered, then the server exits cleanly.
    let mut server = server;
    let pid = server.child.id() as libc::pid_t;
    let request = std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| server.post_raw("/embed", &body, &[]));
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill(2) on the child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        in_flight.join().unwrap()
    });
    assert_eq!(
        request.0, 200,
        "the in-flight request was not answered: {}",
        request.1
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "ember serve exited with {status} after SIGTERM");
}
