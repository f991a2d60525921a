//! An S3 server that stops answering ends the agent's work within the no-progress bound
//! (`--no-progress-timeout`, default 5 minutes) with an error that says so, instead of read
//! timeouts retried for a quarter of an hour. Two ways to stop: never answer a request, or
//! send the headers of a response and then nothing of its body.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};

/// Serves plain HTTP on loopback: `respond` decides what each request gets; the connection is
/// then held open and silent until the client goes.
fn hanging_server(respond: fn(&str) -> Option<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    if text.contains("\r\n\r\n") {
                        if let Some(reply) = respond(&text) {
                            let _ = conn.write_all(reply.as_bytes());
                        }
                        request.clear();
                    }
                }
            });
        }
    });
    port
}

fn agent(port: u16, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "correct horse battery staple\n").unwrap();
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("agent")
        .args(args)
        .env("BERTH_REPOSITORY", "s3://stalled/repo")
        .env("BERTH_S3_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("BERTH_S3_INSECURE_HTTP", "true")
        .env("BERTH_S3_REGION", "us-east-1")
        .env("BERTH_REPOSITORY_KEY_FILE", &key)
        .env("AWS_ACCESS_KEY_ID", "stall-test")
        .env("AWS_SECRET_ACCESS_KEY", "stall-test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("BERTH_S3_NO_PROGRESS_TIMEOUT")
        .output()
        .unwrap()
}

fn assert_stalled(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent succeeded against a silent server: {stderr}");
    assert!(stderr.contains("made no progress within the no-progress bound"), "{stderr}");
    assert!(stderr.contains("--no-progress-timeout"), "names the knob: {stderr}");
}

#[test]
fn a_server_that_never_answers_ends_the_work_at_the_bound() {
    let port = hanging_server(|_| None);
    let out = agent(port, &["--no-progress-timeout", "3", "snapshots"]);
    assert_stalled(&out);
}

#[test]
fn a_response_body_that_stops_ends_the_work_at_the_bound() {
    // Every request is answered 200; a GET's body promises a kilobyte and sends ten bytes.
    let port = hanging_server(|request| {
        Some(if request.starts_with("GET") {
            "HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nContent-Type: application/octet-stream\r\n\r\n0123456789".into()
        } else {
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()
        })
    });
    let out = agent(port, &["--no-progress-timeout", "3", "snapshots"]);
    assert_stalled(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("response body"), "{stderr}");
}

#[test]
fn the_bound_must_be_positive() {
    let out = agent(1, &["--no-progress-timeout", "0", "snapshots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-progress-timeout"));
}
