//! A private redis-server child process on a loopback port, for tests that stop, pause or flush
//! Redis without touching the shared test Redis.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server child process, killed when dropped.
pub(crate) struct RedisChild {
    child: Child,
    port: u16,
}

impl RedisChild {
    pub(crate) async fn start(port: u16) -> RedisChild {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot start redis-server ({err}): run scripts/test, which installs it")
            });
        let redis = RedisChild { child, port };
        redis.wait_ready().await;
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Polls PING until the server replies. Start-up takes a few milliseconds, and 5 s covers a
    /// loaded machine.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = redis::Client::open(self.url()).expect("valid URL");
        loop {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGSTOP or SIGCONT: a stopped server keeps its connections open but never replies.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.stop();
    }
}
