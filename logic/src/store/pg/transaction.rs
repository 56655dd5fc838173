//! A transaction whose BEGIN goes out together with its first statements, saving the round trip
//! that `tokio_postgres::Client::transaction` waits for.
//!
//! tokio-postgres sends a request when its future is first polled, and the server runs requests
//! in the order they arrive. So BEGIN, polled before the first statements in one `join!`,
//! reaches the server first and every statement runs inside the transaction. A statement not yet
//! prepared on the connection sends its Parse first, after BEGIN too.

use std::future::Future;

use deadpool_postgres::Object;

use crate::error::{ErrorChain, LogicError};

/// A pooled connection inside a transaction that [`Pipelined::begin_with`] opens. End it with
/// [`Pipelined::commit`] or [`Pipelined::rollback`]. Dropped before either, as when the task that
/// runs it is cancelled, it closes its connection, which rolls the transaction back, instead of
/// returning the connection to the pool inside the transaction.
pub struct Pipelined {
    client: Option<Object>,
}

impl Pipelined {
    /// Takes `client` for a transaction that has not begun yet.
    pub fn new(client: Object) -> Self {
        Self {
            client: Some(client),
        }
    }

    /// Returns the connection, for statements of the transaction.
    pub fn db(&self) -> &Object {
        self.client
            .as_ref()
            .expect("the client is taken only when the transaction ends")
    }

    /// Sends BEGIN, then polls `statements`, which run on [`Pipelined::db`], and returns their
    /// result. The statements must not run before this call: build them as a future that does
    /// nothing until polled, such as an `async` block.
    ///
    /// # Errors
    ///
    /// The error of BEGIN when it failed, else the error of `statements`.
    pub async fn begin_with<T>(
        &self,
        statements: impl Future<Output = Result<T, LogicError>>,
    ) -> Result<T, LogicError> {
        let (begun, result) = tokio::join!(self.db().batch_execute("BEGIN"), statements);
        begun?;
        result
    }

    /// Commits the transaction and returns the connection to the pool.
    ///
    /// # Errors
    ///
    /// [`LogicError::Database`] when COMMIT fails. PostgreSQL then rolls the transaction back.
    pub async fn commit(mut self) -> Result<(), LogicError> {
        let result = self.db().batch_execute("COMMIT").await;
        self.client.take();
        Ok(result?)
    }

    /// Rolls the transaction back and returns the connection to the pool, or closes it when
    /// ROLLBACK fails, so that no later user of the pool finds it inside the transaction.
    pub async fn rollback(mut self) {
        if let Err(err) = self.db().batch_execute("ROLLBACK").await {
            tracing::warn!(error = %ErrorChain(&err), "ROLLBACK failed; closing the connection");
            if let Some(client) = self.client.take() {
                drop(Object::take(client));
            }
            return;
        }
        self.client.take();
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            tracing::debug!("transaction dropped before its end; closing its connection");
            drop(Object::take(client));
        }
    }
}
