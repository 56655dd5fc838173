//! Token preparation: make sure each bench user `<prefix>-<i>` exists and has a device token,
//! reusing cached tokens so that reruns skip the server's slow password hashing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use im_client::{Client, ClientError, ConnectOptions, DeviceInfo, ErrorCode, LoginReply};
use rand::Rng as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cache::{CachedToken, TokenCache};
use crate::session::Target;
use crate::stats::{connect_failure, request_failure, ErrorCounts, Failure};

/// A cached token is reused only while it stays valid this much longer.
const REUSE_MARGIN_MS: i64 = 86_400_000;

/// New tokens between two saves of the cache, so an interrupted run keeps most of its work.
const SAVE_EVERY: usize = 1000;

/// Time between two progress lines of token preparation.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Settings of token preparation.
#[derive(Debug, Clone)]
pub(crate) struct PrepareConfig {
    pub(crate) url: String,
    pub(crate) password: String,
    pub(crate) user_prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) concurrency: usize,
    pub(crate) cache_path: PathBuf,
    /// Log in again even for users with a valid cached token.
    pub(crate) refresh: bool,
}

/// Errors of token preparation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    #[error("reading token cache {path} failed")]
    ReadCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing token cache {path} failed")]
    WriteCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {needed} users got no token")]
    UsersFailed {
        failed: u64,
        needed: u64,
        errors: ErrorCounts,
    },
    #[error("token cache {path} has no token for {missing} users of the slice, first {first}")]
    MissingTokens {
        path: PathBuf,
        missing: u64,
        first: String,
    },
}

/// Returns the name of bench user `index`.
pub(crate) fn username(prefix: &str, index: u64) -> String {
    format!("{prefix}-{index}")
}

/// Ensures users 0..connections have tokens, registering and logging in those without a
/// reusable cached token. Prints progress to stderr every [`PROGRESS_EVERY`].
pub(crate) async fn prepare(
    config: &PrepareConfig,
    connections: u64,
) -> Result<Vec<Target>, PrepareError> {
    let mut cache =
        TokenCache::load(&config.cache_path).map_err(|source| PrepareError::ReadCache {
            path: config.cache_path.clone(),
            source,
        })?;
    if cache.skipped_lines > 0 {
        eprintln!(
            "prepare: skipped {} malformed lines of {}",
            cache.skipped_lines,
            config.cache_path.display()
        );
    }

    let needed = users_needing_login(config, &cache, connections, now_ms());
    eprintln!(
        "prepare: {connections} users, {} cached tokens reused, {} need a token",
        connections - needed.len() as u64,
        needed.len()
    );
    if !needed.is_empty() {
        log_in_all(config, &mut cache, needed).await?;
    }
    targets_from_cache(
        &cache,
        &config.user_prefix,
        &config.cache_path,
        0..connections,
    )
}

/// Returns the indices of users without a token that stays valid for another day.
fn users_needing_login(
    config: &PrepareConfig,
    cache: &TokenCache,
    connections: u64,
    now_ms: i64,
) -> Vec<u64> {
    (0..connections)
        .filter(|index| {
            let cached = cache.entries.get(&username(&config.user_prefix, *index));
            config.refresh || !cached.is_some_and(|token| token.valid_for(now_ms, REUSE_MARGIN_MS))
        })
        .collect()
}

/// Builds the sign-in targets of `range` from the cache.
///
/// # Errors
///
/// [`PrepareError::MissingTokens`] when a user of the range has no cached token.
pub(crate) fn targets_from_cache(
    cache: &TokenCache,
    user_prefix: &str,
    cache_path: &Path,
    range: std::ops::Range<u64>,
) -> Result<Vec<Target>, PrepareError> {
    let mut targets = Vec::with_capacity(usize::try_from(range.end - range.start).unwrap_or(0));
    let mut missing = Vec::new();
    for index in range {
        let name = username(user_prefix, index);
        match cache.entries.get(&name) {
            Some(cached) => targets.push(Target {
                index,
                user_id: cached.user_id,
                device_id: cached.device_id,
                token: cached.token.clone(),
            }),
            None => missing.push(name),
        }
    }
    match missing.first() {
        None => Ok(targets),
        Some(first) => Err(PrepareError::MissingTokens {
            path: cache_path.to_owned(),
            missing: missing.len() as u64,
            first: first.clone(),
        }),
    }
}

async fn log_in_all(
    config: &PrepareConfig,
    cache: &mut TokenCache,
    needed: Vec<u64>,
) -> Result<(), PrepareError> {
    let total = needed.len() as u64;
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for index in needed {
        let name = username(&config.user_prefix, index);
        let cached_device = cache.entries.get(&name).map(|cached| cached.device_id);
        let permits = Arc::clone(&permits);
        let config = config.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = log_in_user(&config, &name, cached_device).await;
            (name, result)
        });
    }

    let mut errors = ErrorCounts::default();
    let mut done = 0u64;
    let mut unsaved = 0usize;
    let mut last_report = Instant::now();
    while let Some(joined) = tasks.join_next().await {
        done += 1;
        match joined {
            Ok((name, Ok(token))) => {
                cache.entries.insert(name, token);
                unsaved += 1;
            }
            Ok((_, Err(failure))) => errors.add_failure(failure),
            Err(_) => errors.add("prepare_task_failed", 1),
        }
        if unsaved >= SAVE_EVERY {
            save(cache, config)?;
            unsaved = 0;
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            eprintln!("prepare: {done}/{total} done, {} failed", errors.total());
            last_report = Instant::now();
        }
    }
    save(cache, config)?;
    eprintln!("prepare: {done}/{total} done, {} failed", errors.total());

    match errors.total() {
        0 => Ok(()),
        failed => Err(PrepareError::UsersFailed {
            failed,
            needed: total,
            errors,
        }),
    }
}

fn save(cache: &TokenCache, config: &PrepareConfig) -> Result<(), PrepareError> {
    cache
        .save(&config.cache_path)
        .map_err(|source| PrepareError::WriteCache {
            path: config.cache_path.clone(),
            source,
        })
}

/// Gets a token for user `name` on a fresh connection, as [`log_in_or_register`] does.
/// `cached_device` is the device of the user's cached token, if the cache has one.
async fn log_in_user(
    config: &PrepareConfig,
    name: &str,
    cached_device: Option<u64>,
) -> Result<CachedToken, Failure> {
    let options = ConnectOptions {
        timeout: config.timeout,
        ..ConnectOptions::default()
    };
    let client = Client::connect(&config.url, &options)
        .await
        .map_err(|error| connect_failure(&config.url, &error))?;
    let reply = log_in_retrying_busy(&client, name, &config.password, cached_device).await;
    // The token is what matters here; a failed close costs the server nothing lasting.
    let _ = client.close().await;
    let reply = reply.map_err(|error| request_failure("login", &error))?;
    Ok(CachedToken {
        user_id: reply.user_id,
        device_id: reply.device_id,
        token: reply.token,
        expires_at_ms: reply.token_expires_at_ms,
    })
}

/// Max attempts per user while the engine replies BUSY, TIMEOUT or UNAVAILABLE.
const BUSY_ATTEMPTS: u32 = 20;

/// Runs [`log_in_or_register`], waiting and trying again while the engine replies BUSY (it has
/// more password calls in flight than its `logic_max_password_calls` allows), TIMEOUT or
/// UNAVAILABLE (password hashing on loaded cores can pass the call deadline). A retry is safe:
/// a REGISTER that went through before its reply was lost makes the next one return
/// USERNAME_TAKEN, and LOGIN follows. The wait
/// is random between 250 and 750 ms, so that the users turned away together come back spread out.
async fn log_in_retrying_busy(
    client: &Client,
    name: &str,
    password: &str,
    cached_device: Option<u64>,
) -> Result<LoginReply, ClientError> {
    let mut attempt = 1;
    loop {
        match log_in_or_register(client, name, password, cached_device).await {
            Err(ClientError::Server {
                code: ErrorCode::Busy | ErrorCode::Timeout | ErrorCode::Unavailable,
                ..
            }) if attempt < BUSY_ATTEMPTS => {
                attempt += 1;
                let wait = rand::rng().random_range(250..750);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            other => return other,
        }
    }
}

/// Logs user `name` in. Each REGISTER and LOGIN costs the logic tier a password hash, failing
/// ones included, so the request likely to succeed goes first. A user without a cached device
/// is likely new: REGISTER, then LOGIN, also after USERNAME_TAKEN (an earlier run registered the
/// user but its token is not cached). A user with one is likely registered: LOGIN with that
/// device, and REGISTER first only when LOGIN returns INVALID_CREDENTIALS (the database was
/// reset).
async fn log_in_or_register(
    client: &Client,
    name: &str,
    password: &str,
    cached_device: Option<u64>,
) -> Result<LoginReply, ClientError> {
    let Some(device_id) = cached_device else {
        match client.register(name, password).await {
            Ok(_)
            | Err(ClientError::Server {
                code: ErrorCode::UsernameTaken,
                ..
            }) => {}
            Err(error) => return Err(error),
        }
        return client.login(name, password, 0, device()).await;
    };
    match client.login(name, password, device_id, device()).await {
        Err(ClientError::Server {
            code: ErrorCode::InvalidCredentials,
            ..
        }) => {
            client.register(name, password).await?;
            client.login(name, password, 0, device()).await
        }
        // The cached device is gone (for example after a database reset): ask for a new one.
        Err(ClientError::Server {
            code: ErrorCode::DeviceNotOwned | ErrorCode::DeviceUnknown,
            ..
        }) if device_id != 0 => client.login(name, password, 0, device()).await,
        other => other,
    }
}

fn device() -> DeviceInfo {
    DeviceInfo {
        platform: "bench".into(),
        model: "im-bench".into(),
        app_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_login_is_retried() {
        let engine = crate::fake_engine::FakeEngine::start().await;
        let client = Client::connect(&engine.url, &ConnectOptions::default())
            .await
            .expect("connect");

        let reply = log_in_retrying_busy(&client, "user-busy3", "secret-password", Some(7)).await;

        assert_eq!(reply.expect("login after BUSY").token, "good");
    }

    #[tokio::test]
    async fn busy_login_gives_up_after_bound() {
        let engine = crate::fake_engine::FakeEngine::start().await;
        let client = Client::connect(&engine.url, &ConnectOptions::default())
            .await
            .expect("connect");

        let reply = log_in_retrying_busy(&client, "user-busy99", "secret-password", Some(7)).await;

        assert!(
            matches!(
                reply,
                Err(ClientError::Server {
                    code: ErrorCode::Busy,
                    ..
                })
            ),
            "{reply:?}"
        );
    }

    /// Returns the REGISTER and LOGIN requests `engine` received, after logging in `name` with
    /// `cached_device`.
    async fn password_requests(
        engine: &crate::fake_engine::FakeEngine,
        name: &str,
        cached_device: Option<u64>,
    ) -> Vec<String> {
        let client = Client::connect(&engine.url, &ConnectOptions::default())
            .await
            .expect("connect");
        let reply = log_in_or_register(&client, name, "secret-password", cached_device).await;
        assert_eq!(reply.expect("token").token, "good");
        engine.password_requests.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn new_user_registers_before_login() {
        let engine = crate::fake_engine::FakeEngine::start().await;

        let requests = password_requests(&engine, "bench-0", None).await;

        assert_eq!(requests, vec!["REGISTER bench-0", "LOGIN bench-0"]);
    }

    #[tokio::test]
    async fn taken_username_logs_in() {
        let engine = crate::fake_engine::FakeEngine::start().await;
        let earlier = Client::connect(&engine.url, &ConnectOptions::default())
            .await
            .expect("connect");
        earlier
            .register("bench-0", "secret-password")
            .await
            .expect("register");

        let requests = password_requests(&engine, "bench-0", None).await;

        assert_eq!(
            requests,
            vec!["REGISTER bench-0", "REGISTER bench-0", "LOGIN bench-0"]
        );
    }

    #[tokio::test]
    async fn cached_user_logs_in_only() {
        let engine = crate::fake_engine::FakeEngine::start().await;

        let requests = password_requests(&engine, "bench-0", Some(100)).await;

        assert_eq!(requests, vec!["LOGIN bench-0"]);
    }

    fn config(refresh: bool) -> PrepareConfig {
        PrepareConfig {
            url: "ws://127.0.0.1:1/ws".into(),
            password: "bench-password".into(),
            user_prefix: "bench".into(),
            timeout: Duration::from_secs(1),
            concurrency: 1,
            cache_path: PathBuf::from("/nonexistent/bench-tokens.tsv"),
            refresh,
        }
    }

    fn cache_with(entries: &[(&str, i64)]) -> TokenCache {
        let mut cache = TokenCache::default();
        for (index, (name, expires_at_ms)) in entries.iter().enumerate() {
            let index = index as u64;
            cache.entries.insert(
                (*name).to_owned(),
                CachedToken {
                    user_id: index + 1,
                    device_id: index + 100,
                    token: format!("token-{index}"),
                    expires_at_ms: *expires_at_ms,
                },
            );
        }
        cache
    }

    #[test]
    fn needing_login_skips_fresh_tokens() {
        let now = 1_000_000_000_000;
        let cache = cache_with(&[
            ("bench-0", now + 2 * REUSE_MARGIN_MS),
            ("bench-1", now + REUSE_MARGIN_MS / 2),
        ]);

        let needed = users_needing_login(&config(false), &cache, 3, now);

        assert_eq!(needed, vec![1, 2]);
    }

    #[test]
    fn needing_login_refresh_takes_all() {
        let now = 1_000_000_000_000;
        let cache = cache_with(&[("bench-0", now + 2 * REUSE_MARGIN_MS)]);

        let needed = users_needing_login(&config(true), &cache, 2, now);

        assert_eq!(needed, vec![0, 1]);
    }

    #[test]
    fn targets_come_from_cache_in_order() {
        let cache = cache_with(&[("bench-0", 1), ("bench-1", 1), ("bench-2", 1)]);

        let targets =
            targets_from_cache(&cache, "bench", Path::new("cache.tsv"), 1..3).expect("targets");

        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].index, 1);
        assert_eq!(targets[0].user_id, 2);
        assert_eq!(targets[0].device_id, 101);
        assert_eq!(targets[1].token, "token-2");
    }

    #[test]
    fn targets_missing_user_is_error() {
        let cache = cache_with(&[("bench-0", 1)]);

        let result = targets_from_cache(&cache, "bench", Path::new("cache.tsv"), 0..3);

        let Err(PrepareError::MissingTokens { missing, first, .. }) = result else {
            panic!("MissingTokens expected");
        };
        assert_eq!(missing, 2);
        assert_eq!(first, "bench-1");
    }
}
