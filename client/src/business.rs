//! A client of the logic tier's business API, `LogicExtService`, for back ends, tools, the
//! bench and tests: users, friends, groups and server-side sends.
//!
//! Every call except [`LogicApi::register`] and [`LogicApi::server_send`] acts as a user: the
//! request metadata carries the user id, device id and device token from a LOGIN. Build such a
//! handle with [`LogicApi::as_user`].

use std::fmt;
use std::time::Duration;

use im_proto::v1::logic_ext_service_client::LogicExtServiceClient;
use im_proto::v1::{
    CreateGroupRequest, FindUserRequest, Friend, FriendRequest, GetGroupRequest, GetUserRequest,
    GroupInfo, GroupMembersRequest, ListFriendsRequest, ListGroupsRequest, RegisterRequest,
    SendReply, SendRequest, ServerSendRequest, UserInfo,
};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, Endpoint};

use crate::LogicApiError;

/// Metadata key of the calling user's id.
pub const USER_ID_KEY: &str = "im-user-id";
/// Metadata key of the calling device's id.
pub const DEVICE_ID_KEY: &str = "im-device-id";
/// Metadata key of the calling device's token.
pub const TOKEN_KEY: &str = "im-token";
/// Metadata key of the logic tier's server secret, for ServerSend.
pub const SERVER_SECRET_KEY: &str = "im-server-secret";

/// A handle on the logic tier's `LogicExtService`, anonymous or acting as one user's device.
/// Clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct LogicApi {
    client: LogicExtServiceClient<Channel>,
    credentials: Option<Credentials>,
}

/// Metadata values of the acting device, encoded once.
#[derive(Clone)]
struct Credentials {
    user_id: u64,
    device_id: u64,
    token: AsciiMetadataValue,
}

impl fmt::Debug for LogicApi {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self
            .credentials
            .as_ref()
            .map(|credentials| (credentials.user_id, credentials.device_id));
        f.debug_struct("LogicApi")
            .field("user_and_device", &ids)
            .finish_non_exhaustive()
    }
}

impl LogicApi {
    /// Connects to the logic tier at `url` (`http://host:port`). `timeout` bounds the connect
    /// and each call.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Transport`] when the URL is invalid or the connect fails.
    pub async fn connect(url: &str, timeout: Duration) -> Result<LogicApi, LogicApiError> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await?;
        Ok(LogicApi {
            client: LogicExtServiceClient::new(channel),
            credentials: None,
        })
    }

    /// Returns a handle on the same connection that acts as device `device_id` of user
    /// `user_id`, with the device's token from LOGIN.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::InvalidMetadata`] when the token contains characters that HTTP/2 header
    /// values cannot carry.
    pub fn as_user(
        &self,
        user_id: u64,
        device_id: u64,
        token: &str,
    ) -> Result<LogicApi, LogicApiError> {
        let token = AsciiMetadataValue::try_from(token)
            .map_err(|_| LogicApiError::InvalidMetadata { key: TOKEN_KEY })?;
        Ok(LogicApi {
            client: self.client.clone(),
            credentials: Some(Credentials {
                user_id,
                device_id,
                token,
            }),
        })
    }

    /// Returns the user this handle acts as, if any.
    pub fn user_id(&self) -> Option<u64> {
        self.credentials
            .as_ref()
            .map(|credentials| credentials.user_id)
    }

    /// Creates a user and returns its id. `open` lets anyone send the user direct messages.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with USERNAME_TAKEN or INVALID_ARGUMENT, or another
    /// [`LogicApiError`] when the call fails.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
        open: bool,
    ) -> Result<u64, LogicApiError> {
        let body = RegisterRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            open,
        };
        let reply = self.client.clone().register(body).await?;
        Ok(reply.into_inner().user_id)
    }

    /// Returns a user by id.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with NOT_FOUND, a token error, or another
    /// [`LogicApiError`] when the call fails.
    pub async fn get_user(&self, user_id: u64) -> Result<UserInfo, LogicApiError> {
        let request = self.request(GetUserRequest { user_id });
        Ok(self.client.clone().get_user(request).await?.into_inner())
    }

    /// Returns a user by username.
    ///
    /// # Errors
    ///
    /// As [`get_user`](Self::get_user).
    pub async fn find_user(&self, username: &str) -> Result<UserInfo, LogicApiError> {
        let request = self.request(FindUserRequest {
            username: username.to_owned(),
        });
        Ok(self.client.clone().find_user(request).await?.into_inner())
    }

    /// Sends `user_id` a friend request, which that user's
    /// [`accept_friend`](Self::accept_friend) completes. When `user_id` has already sent the
    /// caller a request, this accepts it.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with ALREADY_EXISTS for a pending request or an existing
    /// friendship, NOT_FOUND for an unknown user, or another [`LogicApiError`].
    pub async fn request_friend(&self, user_id: u64) -> Result<(), LogicApiError> {
        let request = self.request(FriendRequest { user_id });
        self.client.clone().request_friend(request).await?;
        Ok(())
    }

    /// Accepts the friend request that `user_id` sent.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with NOT_FOUND when no request waits, or another
    /// [`LogicApiError`].
    pub async fn accept_friend(&self, user_id: u64) -> Result<(), LogicApiError> {
        let request = self.request(FriendRequest { user_id });
        self.client.clone().accept_friend(request).await?;
        Ok(())
    }

    /// Returns the caller's friends and pending friend requests in both directions.
    ///
    /// # Errors
    ///
    /// A [`LogicApiError`] when the call fails.
    pub async fn list_friends(&self) -> Result<Vec<Friend>, LogicApiError> {
        let request = self.request(ListFriendsRequest {});
        let reply = self.client.clone().list_friends(request).await?;
        Ok(reply.into_inner().friends)
    }

    /// Ends a friendship or withdraws a pending request.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with NOT_FOUND, or another [`LogicApiError`].
    pub async fn remove_friend(&self, user_id: u64) -> Result<(), LogicApiError> {
        let request = self.request(FriendRequest { user_id });
        self.client.clone().remove_friend(request).await?;
        Ok(())
    }

    /// Creates a group owned by the caller with `member_ids` as its other members, each of
    /// whom must be the caller's friend or open.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with GROUP_FULL, TOO_MANY_GROUPS, NOT_FOUND, NOT_FRIEND or
    /// INVALID_ARGUMENT, or another [`LogicApiError`].
    pub async fn create_group(
        &self,
        name: &str,
        member_ids: &[u64],
    ) -> Result<GroupInfo, LogicApiError> {
        let request = self.request(CreateGroupRequest {
            name: name.to_owned(),
            member_ids: member_ids.to_vec(),
        });
        Ok(self
            .client
            .clone()
            .create_group(request)
            .await?
            .into_inner())
    }

    /// Adds members to a group the caller belongs to; each must be the caller's friend or
    /// open.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with NOT_GROUP_MEMBER, ALREADY_EXISTS, GROUP_FULL,
    /// TOO_MANY_GROUPS, NOT_FRIEND or NOT_FOUND, or another [`LogicApiError`].
    pub async fn add_group_members(
        &self,
        group_id: u64,
        user_ids: &[u64],
    ) -> Result<GroupInfo, LogicApiError> {
        let request = self.request(GroupMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        });
        let reply = self.client.clone().add_group_members(request).await?;
        Ok(reply.into_inner())
    }

    /// Removes members from a group: any member removes itself, the owner removes anyone.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with PERMISSION_DENIED, NOT_GROUP_MEMBER or NOT_FOUND, or
    /// another [`LogicApiError`].
    pub async fn remove_group_members(
        &self,
        group_id: u64,
        user_ids: &[u64],
    ) -> Result<GroupInfo, LogicApiError> {
        let request = self.request(GroupMembersRequest {
            group_id,
            user_ids: user_ids.to_vec(),
        });
        let reply = self.client.clone().remove_group_members(request).await?;
        Ok(reply.into_inner())
    }

    /// Returns the groups the caller belongs to.
    ///
    /// # Errors
    ///
    /// A [`LogicApiError`] when the call fails.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>, LogicApiError> {
        let request = self.request(ListGroupsRequest {});
        let reply = self.client.clone().list_groups(request).await?;
        Ok(reply.into_inner().groups)
    }

    /// Returns a group the caller belongs to.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::Server`] with NOT_FOUND or NOT_GROUP_MEMBER, or another
    /// [`LogicApiError`].
    pub async fn get_group(&self, group_id: u64) -> Result<GroupInfo, LogicApiError> {
        let request = self.request(GetGroupRequest { group_id });
        Ok(self.client.clone().get_group(request).await?.into_inner())
    }

    /// Posts a message as `sender_user_id` from a back end, authenticated by the logic tier's
    /// server secret instead of a device token.
    ///
    /// # Errors
    ///
    /// [`LogicApiError::InvalidMetadata`] when the secret cannot be a header value, the SEND
    /// error codes as [`LogicApiError::Server`], or another [`LogicApiError`].
    pub async fn server_send(
        &self,
        server_secret: &str,
        sender_user_id: u64,
        send: SendRequest,
    ) -> Result<SendReply, LogicApiError> {
        let secret = AsciiMetadataValue::try_from(server_secret).map_err(|_| {
            LogicApiError::InvalidMetadata {
                key: SERVER_SECRET_KEY,
            }
        })?;
        let mut request = tonic::Request::new(ServerSendRequest {
            sender_user_id,
            send: Some(send),
        });
        request.metadata_mut().insert(SERVER_SECRET_KEY, secret);
        Ok(self.client.clone().server_send(request).await?.into_inner())
    }

    /// Wraps `body` in a request that carries the acting device's metadata, if any.
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        if let Some(credentials) = &self.credentials {
            insert_credentials(request.metadata_mut(), credentials);
        }
        request
    }
}

fn insert_credentials(metadata: &mut MetadataMap, credentials: &Credentials) {
    // Decimal digits are always valid header values.
    metadata.insert(USER_ID_KEY, AsciiMetadataValue::from(credentials.user_id));
    metadata.insert(
        DEVICE_ID_KEY,
        AsciiMetadataValue::from(credentials.device_id),
    );
    metadata.insert(TOKEN_KEY, credentials.token.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_api() -> LogicApi {
        // A lazy channel never dials until a call, so no server is needed here.
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        LogicApi {
            client: LogicExtServiceClient::new(channel),
            credentials: None,
        }
    }

    #[tokio::test]
    async fn user_request_carries_metadata() {
        let api = offline_api().as_user(7, 99, "abc123").expect("valid token");

        let request = api.request(ListFriendsRequest {});

        let metadata = request.metadata();
        assert_eq!(metadata.get(USER_ID_KEY).unwrap(), "7");
        assert_eq!(metadata.get(DEVICE_ID_KEY).unwrap(), "99");
        assert_eq!(metadata.get(TOKEN_KEY).unwrap(), "abc123");
    }

    #[tokio::test]
    async fn anonymous_request_has_no_metadata() {
        let request = offline_api().request(ListFriendsRequest {});

        assert!(request.metadata().get(USER_ID_KEY).is_none());
        assert!(request.metadata().get(TOKEN_KEY).is_none());
    }

    #[tokio::test]
    async fn token_with_newline_is_invalid_metadata() {
        let result = offline_api().as_user(7, 99, "abc\n");

        assert!(matches!(
            result,
            Err(LogicApiError::InvalidMetadata { key: TOKEN_KEY })
        ));
    }

    #[tokio::test]
    async fn debug_leaves_out_token() {
        let api = offline_api().as_user(7, 99, "secret-token").expect("valid");

        let text = format!("{api:?}");

        assert!(text.contains("7"), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
    }
}
