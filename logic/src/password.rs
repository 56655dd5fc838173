//! Argon2id password hashing off the async threads, at most one hash per CPU at a time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::error::LogicError;

/// Hashes new passwords with the configured parameters and verifies stored hashes.
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Bounds the hashes in progress, so memory stays at CPUs × `argon2_memory_kib`. Each
    /// permit is held until its hash ends, even when the caller stopped waiting.
    permits: Arc<Semaphore>,
    /// Hash of a random password, verified when the user does not exist, so that an unknown
    /// username takes about as long as a wrong password.
    dummy_hash: Arc<str>,
    /// Hashes and verifications waiting for a permit or running, for metrics.
    in_flight: Arc<AtomicI64>,
}

impl PasswordHasher {
    /// Builds the hasher and computes its dummy hash, which blocks for one hash.
    ///
    /// # Errors
    ///
    /// [`LogicError::Internal`] when hashing fails.
    pub fn new(params: Params) -> Result<PasswordHasher, LogicError> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let dummy_password = crate::token::generate();
        let dummy_hash = hash_blocking(&argon2, &dummy_password)?;
        Ok(PasswordHasher {
            argon2,
            permits: Arc::new(Semaphore::new(cpus)),
            dummy_hash: dummy_hash.into(),
            in_flight: Arc::default(),
        })
    }

    /// Returns the Argon2id PHC string of `password` with a fresh random salt.
    ///
    /// # Errors
    ///
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

    /// Runs `work` on the blocking pool once a permit is free. The permit and the in-flight
    /// count move into the blocking task, so a caller that gives up while the hash runs does
    /// not free the permit before the hash ends.
    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, LogicError> + Send + 'static,
    ) -> Result<T, LogicError> {
        let counted = InFlight::enter(&self.in_flight);
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LogicError::Internal("password hashing semaphore closed"))?;
        tokio::task::spawn_blocking(move || {
            let _held = (permit, counted);
            work()
        })
        .await
        .map_err(|_| LogicError::Internal("password hashing task panicked"))?
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
    async fn malformed_stored_hash_is_internal() {
        let hasher = fast_hasher();
        let outcome = hasher
            .verify("anything".to_owned(), Some("plain".to_owned()))
            .await;
        assert!(matches!(outcome, Err(LogicError::Internal(_))));
    }
}
