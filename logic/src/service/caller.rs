//! Authentication of `LogicExtService` callers. A user call carries "im-user-id",
//! "im-device-id" and "im-token" in its metadata, checked like SIGN_IN. ServerSend and
//! KickDevice carry the server secret in "im-server-secret" instead.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use super::{auth, Logic};
use crate::error::LogicError;
use crate::ids::{DeviceId, UserId};
use crate::metrics::Method;

/// Metadata keys of a user call.
pub const USER_ID_KEY: &str = "im-user-id";
/// See [`USER_ID_KEY`].
pub const DEVICE_ID_KEY: &str = "im-device-id";
/// See [`USER_ID_KEY`].
pub const TOKEN_KEY: &str = "im-token";
/// Metadata key of the server secret that ServerSend and KickDevice carry.
pub const SERVER_SECRET_KEY: &str = "im-server-secret";

/// An authenticated user and the device whose token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The calling user.
    pub user: UserId,
    /// The device whose token the call carried.
    pub device: DeviceId,
}

/// The credentials a call's metadata carries, before they are checked.
#[derive(Clone, Default)]
pub struct Credentials {
    user_id: Option<u64>,
    device_id: Option<u64>,
    token: Option<String>,
    server_secret: Option<String>,
}

impl Credentials {
    /// Reads the credential keys of `metadata`. A value that is not ASCII or not a number is
    /// treated as missing.
    pub fn from_metadata(metadata: &MetadataMap) -> Credentials {
        let text = |key: &str| {
            metadata
                .get(key)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let number = |key: &str| text(key).and_then(|value| value.parse::<u64>().ok());
        Credentials {
            user_id: number(USER_ID_KEY),
            device_id: number(DEVICE_ID_KEY),
            token: text(TOKEN_KEY),
            server_secret: text(SERVER_SECRET_KEY),
        }
    }

    /// Returns the user id claimed by the metadata, checked or not, or 0; for logs.
    pub fn claimed_user_id(&self) -> u64 {
        self.user_id.unwrap_or(0)
    }

    /// Returns the device id claimed by the metadata, or 0; for logs.
    pub fn claimed_device_id(&self) -> u64 {
        self.device_id.unwrap_or(0)
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("server_secret", &self.server_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The configured server secret, kept as its SHA-256 so that comparing it takes the same time
/// whatever the presented secret's length and content.
#[derive(Clone)]
pub struct ServerSecret {
    digest: Option<[u8; 32]>,
}

impl ServerSecret {
    /// Wraps the configured secret; an empty one disables ServerSend and KickDevice.
    pub fn new(secret: &str) -> ServerSecret {
        let digest = (!secret.is_empty()).then(|| Sha256::digest(secret.as_bytes()).into());
        ServerSecret { digest }
    }

    /// Checks a presented secret in constant time.
    fn matches(&self, presented: &str) -> bool {
        let Some(expected) = &self.digest else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(expected).into()
    }
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.digest.is_some() {
            "set"
        } else {
            "empty"
        };
        f.debug_tuple("ServerSecret").field(&state).finish()
    }
}

/// Checks the user credentials with the SIGN_IN token check and returns the caller.
///
/// # Errors
///
/// [`LogicError::MissingCredentials`] when a key is missing or malformed, and the SIGN_IN
/// errors: [`LogicError::DeviceUnknown`], [`LogicError::TokenInvalid`],
/// [`LogicError::TokenExpired`]; store errors.
pub async fn authenticate(logic: &Logic, credentials: &Credentials) -> Result<Caller, LogicError> {
    let user = credentials
        .user_id
        .filter(|&id| id != 0)
        .ok_or(LogicError::MissingCredentials(USER_ID_KEY))?;
    let device = credentials
        .device_id
        .filter(|&id| id != 0)
        .ok_or(LogicError::MissingCredentials(DEVICE_ID_KEY))?;
    let token = credentials
        .token
        .as_deref()
        .ok_or(LogicError::MissingCredentials(TOKEN_KEY))?;
    let (user, device) = (UserId(user), DeviceId(device));
    auth::check_token(logic, user, device, token).await?;
    Ok(Caller { user, device })
}

/// Checks the server secret of a call to `method` (ServerSend or KickDevice).
///
/// # Errors
///
/// [`LogicError::ServerSecretUnset`], naming `method`, when none is configured, and
/// [`LogicError::PermissionDenied`] when the secret is missing or wrong.
pub fn check_server_secret(
    logic: &Logic,
    method: Method,
    credentials: &Credentials,
) -> Result<(), LogicError> {
    if logic.server_secret.digest.is_none() {
        return Err(LogicError::ServerSecretUnset(method.name()));
    }
    let presented = credentials.server_secret.as_deref().unwrap_or_default();
    if logic.server_secret.matches(presented) {
        Ok(())
    } else {
        Err(LogicError::PermissionDenied(
            "the im-server-secret metadata does not match the server_secret setting",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_server_secret_matches_nothing() {
        let secret = ServerSecret::new("");
        assert!(!secret.matches(""));
        assert!(!secret.matches("anything"));
    }

    #[test]
    fn server_secret_matches_only_itself() {
        let secret = ServerSecret::new("0123456789abcdef");
        assert!(secret.matches("0123456789abcdef"));
        assert!(!secret.matches("0123456789abcdeF"));
        assert!(!secret.matches(""));
    }

    #[test]
    fn credentials_parse_and_debug_hides_secrets() {
        let mut metadata = MetadataMap::new();
        metadata.insert(USER_ID_KEY, "12".parse().expect("ascii"));
        metadata.insert(DEVICE_ID_KEY, "x".parse().expect("ascii"));
        metadata.insert(TOKEN_KEY, "tok3n-value".parse().expect("ascii"));
        let credentials = Credentials::from_metadata(&metadata);

        assert_eq!(credentials.claimed_user_id(), 12);
        assert_eq!(credentials.claimed_device_id(), 0, "not a number");
        let debug = format!("{credentials:?}");
        assert!(!debug.contains("tok3n"), "{debug}");
    }
}
