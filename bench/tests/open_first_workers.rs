//! Runs the built `im-bench signin --open-first --workers 2` against the fake engine of the
//! unit tests, so that the parent and its real worker processes go through the open phase,
//! the sign-in phase and the hold together.

use std::sync::atomic::Ordering;

// The test uses only part of the fake engine.
#[allow(dead_code)]
#[path = "../src/fake_engine.rs"]
mod fake_engine;

use fake_engine::FakeEngine;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_first_with_two_workers() {
    let engine = FakeEngine::start().await;
    let cache_dir = std::env::temp_dir().join(format!(
        "im-bench-open-first-workers-{}",
        std::process::id()
    ));

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_im-bench"))
        .args([
            "signin",
            "--open-first",
            "--workers",
            "2",
            "--connections",
            "6",
        ])
        .args([
            "--hold-secs",
            "1",
            "--heartbeat-ms",
            "200",
            "--user-prefix",
            "open-first",
        ])
        .args(["--url", &engine.url])
        .arg("--cache-dir")
        .arg(&cache_dir)
        .output()
        .await
        .expect("run im-bench");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("opens per second"), "{stdout}");
    assert!(stdout.contains("6 connections opened in"), "{stdout}");
    assert!(
        stdout.contains("6 of 6 open connections signed in within"),
        "{stdout}"
    );
    assert!(stdout.contains("errors at sign-in     none"), "{stdout}");
    assert!(stdout.contains("errors after sign-in  none"), "{stdout}");
    // Token preparation opens one connection per user and sends no SIGN_IN, so 6 of the
    // handshakes come from it and 6 from the workers, all before the first SIGN_IN.
    assert_eq!(engine.opened_before_sign_in.load(Ordering::SeqCst), 12);
}
