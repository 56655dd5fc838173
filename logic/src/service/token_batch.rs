//! Token records read from PostgreSQL in batches, for sign-ins that miss the Redis cache.
//!
//! After Redis restarts, its token cache is empty, and every device that reconnects misses it.
//! Read one by one, each miss is a query of its own on the pool. Callers here queue their
//! (user, device) pair on a [`Batcher`] instead, which reads up to [`TOKEN_BATCH_MAX`] records
//! with one query while the next batch fills.

use super::batch::{BatchWork, Batcher};
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};
use crate::store::pg::device_tokens;
use crate::store::pg::PgStore;
use crate::store::redis::TokenRecord;

/// Maximum pairs per query.
pub const TOKEN_BATCH_MAX: usize = 512;

/// Handle for queueing token reads on their batching task.
pub type TokenLoader = Batcher<TokenReads>;

/// The batch work that reads the token records of a batch of (user, device) pairs.
pub struct TokenReads {
    pg: PgStore,
}

impl TokenReads {
    /// Returns the work that reads from `pg`.
    pub fn new(pg: PgStore) -> TokenReads {
        TokenReads { pg }
    }
}

impl BatchWork for TokenReads {
    type Item = (UserId, DeviceId);
    type Output = Option<TokenRecord>;
    const ITEMS: &'static str = "tokens";

    async fn run(&self, keys: &[(UserId, DeviceId)]) -> Result<Vec<Self::Output>, LogicError> {
        let mut records = device_tokens::load_many(&self.pg, keys).await?;
        Ok(keys
            .iter()
            .map(|(user, device)| records.remove(&(user.0, device.0)))
            .collect())
    }
}

impl Batcher<TokenReads> {
    /// Returns the token record of `device` of `user` from PostgreSQL, or `None` when the
    /// device is not the user's or has no token.
    ///
    /// # Errors
    ///
    /// Store errors of the batch, [`LogicError::Timeout`] past the deadline.
    pub async fn load(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> Result<Option<TokenRecord>, LogicError> {
        self.submit((user, device)).await
    }
}
