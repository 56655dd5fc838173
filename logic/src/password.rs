//! Argon2id password hashing off the async threads, with a bounded number of hashes at a time
//! and a bounded wait for one of them.
//!
//! REGISTER and LOGIN each hash once, and the business API's Register can be called as fast as a
//! client likes. A hash that finds every place taken waits up to `password_hash_wait_ms` for one
//! and is then rejected with BUSY, so callers never queue without limit.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::error::LogicError;

/// Maximum wait of a hash for a place, as [`PasswordHasher::new`] sets it.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(1000);

/// Hashes new passwords with the configured parameters and verifies stored hashes.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Bounds the hashes in progress, so memory stays at `max_parallel` × `argon2_memory_kib`.
    /// Each permit is held until its hash ends, even when the caller stopped waiting.
    permits: Arc<Semaphore>,
    /// The permits there are: hashes that run at once.
    max_parallel: usize,
    /// Maximum wait for a permit, after which the hash is rejected.
    max_wait: Duration,
    /// Hash of a random password, verified when the user does not exist, so that an unknown
    /// username takes about as long as a wrong password.
    dummy_hash: Arc<str>,
    /// Hashes and verifications waiting for a permit or running, for metrics.
    in_flight: Arc<AtomicI64>,
}

impl PasswordHasher {
    /// Builds a hasher that runs one hash per CPU at a time and waits [`DEFAULT_MAX_WAIT`]
    /// for a place, as [`PasswordHasher::with_limits`] does.
    ///
    /// # Errors
    ///
    /// [`LogicError::Internal`] when hashing fails.
    pub fn new(params: Params) -> Result<PasswordHasher, LogicError> {
        PasswordHasher::with_limits(params, 0, DEFAULT_MAX_WAIT)
    }

    /// Builds the hasher and computes its dummy hash, which blocks for one hash. At most
    /// `max_parallel` hashes run at once, one per CPU when it is 0, and a hash that waits
    /// longer than `max_wait` for its turn is rejected.
    ///
    /// # Errors
    ///
    /// [`LogicError::Internal`] when hashing fails.
    pub fn with_limits(
        params: Params,
        max_parallel: usize,
        max_wait: Duration,
    ) -> Result<PasswordHasher, LogicError> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let max_parallel = match max_parallel {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let dummy_password = crate::token::generate();
        let dummy_hash = hash_blocking(&argon2, &dummy_password)?;
        Ok(PasswordHasher {
            argon2,
            permits: Arc::new(Semaphore::new(max_parallel)),
            max_parallel,
            max_wait,
            dummy_hash: dummy_hash.into(),
            in_flight: Arc::default(),
        })
    }

    /// Returns how many hashes run at once.
    pub fn max_parallel(&self) -> usize {
        self.max_parallel
    }

    /// Returns the Argon2id PHC string of `password` with a fresh random salt.
    ///
    /// # Errors
    ///
    /// [`LogicError::PasswordsBusy`] when no place came free within the wait,
    /// [`LogicError::Internal`] when hashing fails.
    pub async fn hash(&self, password: String) -> Result<String, LogicError> {
        let argon2 = self.argon2.clone();
        self.run_blocking(move || hash_blocking(&argon2, &password))
            .await
    }

    /// Checks `password` against `stored`, a PHC string; with `None` it checks against the
    /// dummy hash and returns false.
    ///
    /// # Errors
    ///
    /// [`LogicError::PasswordsBusy`] when no place came free within the wait,
    /// [`LogicError::Internal`] when the stored hash does not parse.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, LogicError> {
        let argon2 = self.argon2.clone();
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = self
            .run_blocking(move || verify_blocking(&argon2, &password, &hash))
            .await?;
        Ok(known && matched)
    }

    /// Returns how many hashes and verifications are waiting for a CPU or running.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Runs `work` on the blocking pool once a permit is free, or rejects it when none came
    /// free within `max_wait`. Waiters get permits in the order they came. The permit and the
    /// in-flight count move into the blocking task, so a caller that gives up while the hash
    /// runs does not free the permit before the hash ends.
    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, LogicError> + Send + 'static,
    ) -> Result<T, LogicError> {
        let counted = InFlight::enter(&self.in_flight);
        // The timeout polls the acquire first, so a free permit is taken even with no wait.
        let acquired = tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned());
        let permit = match acquired.await {
            Ok(permit) => {
                permit.map_err(|_| LogicError::Internal("password hashing semaphore closed"))?
            }
            Err(_) => {
                return Err(LogicError::PasswordsBusy {
                    max: self.max_parallel,
                    wait_ms: u64::try_from(self.max_wait.as_millis()).unwrap_or(u64::MAX),
                })
            }
        };
        tokio::task::spawn_blocking(move || {
            let _held = (permit, counted);
            work()
        })
        .await
        .map_err(|_| LogicError::Internal("password hashing task panicked"))?
    }
}

/// Builds the text of [`LogicError::PasswordsBusy`] for `max` places and a wait of `wait_ms`.
/// The text names the busy places, the time the call waited and the pause before a retry,
/// and the settings that an operator can raise.
pub(crate) fn busy_message(max: usize, wait_ms: u64) -> String {
    let places = match max {
        1 => "the 1 password hash place (max_password_hashes) is busy".to_owned(),
        _ => format!("all {max} password hash places (max_password_hashes) are busy"),
    };
    let freed = match max {
        1 => "it did not come free",
        _ => "none came free",
    };
    if wait_ms == 0 {
        format!(
            "the server is busy hashing passwords: {places}, and password_hash_wait_ms is 0, so \
             the call did not wait; retry after a short pause"
        )
    } else {
        format!(
            "the server is busy hashing passwords: {places}, and {freed} within {wait_ms} ms \
             (password_hash_wait_ms); retry after a pause of about {wait_ms} ms"
        )
    }
}

/// One unit of the in-flight gauge, given back on drop.
struct InFlight(Arc<AtomicI64>);

impl InFlight {
    fn enter(gauge: &Arc<AtomicI64>) -> InFlight {
        gauge.fetch_add(1, Ordering::Relaxed);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn hash_blocking(argon2: &Argon2<'_>, password: &str) -> Result<String, LogicError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|_| LogicError::Internal("cannot encode password salt"))?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| LogicError::Internal("password hashing failed"))
}

fn verify_blocking(argon2: &Argon2<'_>, password: &str, stored: &str) -> Result<bool, LogicError> {
    let parsed = PasswordHash::new(stored)
        .map_err(|_| LogicError::Internal("stored password hash is not a PHC string"))?;
    match argon2.verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(_) => Err(LogicError::Internal(
            "stored password hash has invalid parameters",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_hasher() -> PasswordHasher {
        PasswordHasher::new(Params::new(1024, 1, 1, None).expect("valid params")).expect("hasher")
    }

    #[tokio::test]
    async fn hash_verifies_only_its_password() {
        let hasher = fast_hasher();
        let hash = hasher.hash("correct horse".to_owned()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{hash}");
        let right = hasher
            .verify("correct horse".to_owned(), Some(hash.clone()))
            .await;
        assert!(right.expect("verify"));
        let wrong = hasher.verify("wrong horse".to_owned(), Some(hash)).await;
        assert!(!wrong.expect("verify"));
    }

    #[tokio::test]
    async fn unknown_user_never_verifies() {
        let hasher = fast_hasher();
        let outcome = hasher.verify("anything".to_owned(), None).await;
        assert!(!outcome.expect("verify"));
    }

    #[tokio::test]
    async fn in_flight_returns_to_zero() {
        let hasher = fast_hasher();
        let hashes = (0..4).map(|i| hasher.hash(format!("password {i}")));
        let results = futures::future::join_all(hashes).await;

        assert!(results.iter().all(Result::is_ok));
        assert_eq!(hasher.in_flight(), 0);
    }

    #[tokio::test]
    async fn waiting_hash_counts_as_in_flight() {
        let hasher = fast_hasher();
        let cpus = u32::try_from(hasher.permits.available_permits()).expect("few CPUs");
        let all_permits = hasher.permits.clone().acquire_many_owned(cpus).await;
        let mut waiting = Box::pin(hasher.hash("password".to_owned()));

        assert!(futures::poll!(&mut waiting).is_pending());
        assert_eq!(hasher.in_flight(), 1);
        drop(waiting);
        assert_eq!(hasher.in_flight(), 0);
        drop(all_permits);
    }

    #[tokio::test]
    async fn hash_that_waits_too_long_is_rejected() {
        let params = Params::new(1024, 1, 1, None).expect("valid params");
        let hasher =
            PasswordHasher::with_limits(params, 1, Duration::from_millis(20)).expect("hasher");
        assert_eq!(hasher.max_parallel(), 1);
        let only_permit = hasher.permits.clone().acquire_owned().await;

        let rejected = hasher.hash("password".to_owned()).await;
        match rejected {
            Err(LogicError::PasswordsBusy {
                max: 1,
                wait_ms: 20,
            }) => {}
            other => panic!("expected PasswordsBusy, got {other:?}"),
        }
        assert_eq!(hasher.in_flight(), 0);

        drop(only_permit);
        let hash = hasher
            .hash("password".to_owned())
            .await
            .expect("a free place");
        assert!(hasher
            .verify("password".to_owned(), Some(hash))
            .await
            .expect("verify"));
    }

    #[test]
    fn busy_message_fits_the_count() {
        let one = busy_message(1, 100);
        assert_eq!(
            one,
            "the server is busy hashing passwords: the 1 password hash place \
             (max_password_hashes) is busy, and it did not come free within 100 ms \
             (password_hash_wait_ms); retry after a pause of about 100 ms"
        );
        let four = busy_message(4, 250);
        assert_eq!(
            four,
            "the server is busy hashing passwords: all 4 password hash places \
             (max_password_hashes) are busy, and none came free within 250 ms \
             (password_hash_wait_ms); retry after a pause of about 250 ms"
        );
        let no_wait = busy_message(2, 0);
        assert_eq!(
            no_wait,
            "the server is busy hashing passwords: all 2 password hash places \
             (max_password_hashes) are busy, and password_hash_wait_ms is 0, so the call did \
             not wait; retry after a short pause"
        );
    }

    #[test]
    fn busy_error_displays_busy_message() {
        let err = LogicError::PasswordsBusy {
            max: 3,
            wait_ms: 40,
        };
        assert_eq!(err.to_string(), busy_message(3, 40));
    }

    #[tokio::test]
    async fn no_wait_still_takes_a_free_place() {
        let params = Params::new(1024, 1, 1, None).expect("valid params");
        let hasher = PasswordHasher::with_limits(params, 1, Duration::ZERO).expect("hasher");
        hasher
            .hash("password".to_owned())
            .await
            .expect("a free place");
    }

    #[test]
    fn zero_means_one_hash_per_cpu() {
        let params = Params::new(1024, 1, 1, None).expect("valid params");
        let hasher = PasswordHasher::with_limits(params, 0, DEFAULT_MAX_WAIT).expect("hasher");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(hasher.max_parallel(), cpus);
        assert_eq!(hasher.permits.available_permits(), cpus);
    }

    #[tokio::test]
    async fn malformed_stored_hash_is_internal() {
        let hasher = fast_hasher();
        let outcome = hasher
            .verify("anything".to_owned(), Some("plain".to_owned()))
            .await;
        assert!(matches!(outcome, Err(LogicError::Internal(_))));
    }
}
