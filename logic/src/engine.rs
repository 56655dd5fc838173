//! Calls from the logic tier to engine nodes (`ConnectIntService`): kicks and message pushes,
//! over one lazily connected channel per node address.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use im_proto::v1::connect_int_service_client::ConnectIntServiceClient;
use im_proto::v1::{DeliverReply, DeliverRequest, KickReason, KickRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::ids::{ConnId, DeviceId};
use im_proto::internal_secret::AttachSecret;

/// An engine node's client, sending the internal secret with every call.
type EngineClient = ConnectIntServiceClient<InterceptedService<Channel, AttachSecret>>;

/// Channels kept before the cache is emptied. Engine nodes are few, so reaching it means that
/// node addresses change often (for example on every restart) and old ones are no longer needed.
const MAX_CACHED_NODES: usize = 1024;

/// Error of a call to an engine node.
#[derive(Debug, thiserror::Error)]
pub enum EngineCallError {
    /// The node address is not a valid URI authority.
    #[error("invalid engine node address {node:?}")]
    InvalidAddress {
        /// The address from the online status.
        node: String,
        /// The parser's complaint.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call failed or timed out.
    #[error("engine call failed")]
    Call(#[source] tonic::Status),
}

/// Channels to engine nodes, created on first use and reused for later calls.
#[derive(Clone)]
pub struct EngineClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    call_timeout: Duration,
    secret: AttachSecret,
}

impl EngineClients {
    /// Creates an empty cache; `call_timeout` bounds connecting and each call, and every call
    /// carries `internal_secret` unless it is empty.
    pub fn new(call_timeout: Duration, internal_secret: &str) -> EngineClients {
        EngineClients {
            channels: Arc::new(Mutex::new(HashMap::new())),
            call_timeout,
            secret: AttachSecret::new(internal_secret),
        }
    }

    fn client(&self, node: &str) -> Result<EngineClient, EngineCallError> {
        Ok(ConnectIntServiceClient::with_interceptor(
            self.channel(node)?,
            self.secret.clone(),
        ))
    }

    /// Asks `node` to send KICKED to connection `conn_id` and close it. Returns whether the node
    /// still had the connection.
    ///
    /// # Errors
    ///
    /// [`EngineCallError`] when the address is invalid or the call fails or times out.
    pub async fn kick(
        &self,
        node: &str,
        device: DeviceId,
        conn_id: ConnId,
        reason: KickReason,
    ) -> Result<bool, EngineCallError> {
        let mut client = self.client(node)?;
        let mut request = tonic::Request::new(KickRequest {
            device_id: device.0,
            conn_id: conn_id.0,
            reason: reason as i32,
        });
        request.set_timeout(self.call_timeout);
        let reply = client.kick(request).await.map_err(EngineCallError::Call)?;
        Ok(reply.into_inner().found)
    }

    /// Asks `node` to push the messages in `request` to its connections, and returns how many
    /// targets it reached and missed.
    ///
    /// # Errors
    ///
    /// [`EngineCallError`] when the address is invalid or the call fails or times out.
    pub async fn deliver(
        &self,
        node: &str,
        request: DeliverRequest,
    ) -> Result<DeliverReply, EngineCallError> {
        let mut client = self.client(node)?;
        let mut request = tonic::Request::new(request);
        request.set_timeout(self.call_timeout);
        let reply = client
            .deliver(request)
            .await
            .map_err(EngineCallError::Call)?;
        Ok(reply.into_inner())
    }

    fn channel(&self, node: &str) -> Result<Channel, EngineCallError> {
        // A poisoned lock only means another caller panicked while inserting; the map itself
        // is still a valid cache.
        let mut channels = self.channels.lock().unwrap_or_else(|err| err.into_inner());
        if let Some(channel) = channels.get(node) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{node}"))
            .map_err(|source| EngineCallError::InvalidAddress {
                node: node.to_owned(),
                source,
            })?
            .connect_timeout(self.call_timeout)
            .timeout(self.call_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        if channels.len() >= MAX_CACHED_NODES {
            channels.clear();
        }
        channels.insert(node.to_owned(), channel.clone());
        Ok(channel)
    }
}
