//! Returns the free pages of glibc's heaps to the kernel after connections come and go.
//!
//! Opening a connection and signing it in allocate short-lived blocks (the handshake, the
//! call to the logic tier and its reply) between the long-lived ones of other connections.
//! Once freed, they leave whole free pages inside the heaps, and glibc's `free` returns
//! memory to the kernel only from the top of a heap, so those pages stay resident.
//! `malloc_trim(0)` releases every free page of every heap (glibc 2.8 and later). At 15,000
//! idle signed-in connections it cut the engine's resident memory by about 180 bytes per
//! connection (tuning.md, "Connection memory").

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::metrics::EngineMetrics;

/// Time between checks for connection churn, and so the longest time freed pages stay
/// resident after the last connection opened, signed in or closed.
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// Starts a task that trims the heaps every `TRIM_INTERVAL` in which a connection was
/// accepted, signed in or closed. It ends with the runtime.
pub(crate) fn spawn_trimmer(runtime: &tokio::runtime::Handle, metrics: EngineMetrics) {
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(TRIM_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_churn = churn(&metrics);
        loop {
            interval.tick().await;
            let current = churn(&metrics);
            if current == last_churn {
                continue;
            }
            last_churn = current;
            let started = Instant::now();
            // Off the runtime's worker: after 15,000 connections closed one trim took 49 ms.
            let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
            debug!(
                released,
                micros = started.elapsed().as_micros() as u64,
                "heap trimmed"
            );
        }
    });
}

/// Returns a number that changes whenever a connection is accepted, signs in or closes.
fn churn(metrics: &EngineMetrics) -> u64 {
    metrics
        .shards
        .iter()
        .map(|shard| shard.churn.load(Ordering::Relaxed))
        .fold(0, u64::wrapping_add)
}

/// Releases the free pages of glibc's heaps. Returns true when memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc")))]
fn trim() -> bool {
    // SAFETY: malloc_trim only takes the allocator's own locks and touches its own state.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators keep their own free memory; there is nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu", not(feature = "mimalloc"))))]
fn trim() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::ShardMetrics;

    #[test]
    fn churn_counts_accepts_sign_ins_and_closes() {
        let shard = Arc::new(ShardMetrics::default());
        let metrics = EngineMetrics {
            shards: vec![shard.clone()],
            ..EngineMetrics::default()
        };
        let start = churn(&metrics);
        shard.note_churn();
        let accepted = churn(&metrics);
        assert_ne!(accepted, start);
        shard.count_sign_in(crate::metrics::SignInKind::SignIn, im_proto::ErrorCode::Ok);
        let signed_in = churn(&metrics);
        assert_ne!(signed_in, accepted);
        shard.count_close(Some(1000));
        assert_ne!(churn(&metrics), signed_in);
    }

    #[test]
    fn trim_runs() {
        drop(vec![0u8; 1 << 20]);
        trim();
    }
}
