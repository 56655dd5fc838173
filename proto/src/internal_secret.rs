//! The shared secret of the internal gRPC services. Engine nodes attach it to every call to
//! the logic tier's DeviceIntService, and the logic tier attaches it to every call to an
//! engine's ConnectIntService. Each side rejects calls that do not carry it. LogicExtService
//! does not check it, and an empty secret attaches and checks nothing.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

/// Metadata key that carries the secret.
pub const INTERNAL_SECRET_METADATA_KEY: &str = "im-internal-secret";

/// Client interceptor that adds the secret to each call's metadata.
#[derive(Clone)]
pub struct AttachSecret {
    value: Option<MetadataValue<Ascii>>,
}

impl AttachSecret {
    /// Attaches `secret`, or nothing when it is empty. Config validation admits only visible
    /// ASCII, so every valid secret is a metadata value.
    pub fn new(secret: &str) -> Self {
        let value = (!secret.is_empty())
            .then(|| MetadataValue::try_from(secret).ok())
            .flatten();
        Self { value }
    }
}

impl Interceptor for AttachSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert(INTERNAL_SECRET_METADATA_KEY, value.clone());
        }
        Ok(request)
    }
}

/// Server interceptor that rejects calls without the secret with UNAUTHENTICATED. It keeps
/// the secret's SHA-256 and compares digests in constant time, so the time taken does not
/// depend on how much of a guess is right, nor on its length.
#[derive(Clone)]
pub struct CheckSecret {
    digest: Option<[u8; 32]>,
}

impl CheckSecret {
    /// Checks for `secret`; an empty one lets every call through.
    pub fn new(secret: &str) -> Self {
        let digest = (!secret.is_empty()).then(|| Sha256::digest(secret.as_bytes()).into());
        Self { digest }
    }
}

impl Interceptor for CheckSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.digest else {
            return Ok(request);
        };
        let presented = request.metadata().get(INTERNAL_SECRET_METADATA_KEY);
        let digest: [u8; 32] =
            Sha256::digest(presented.map_or(&[][..], |value| value.as_bytes())).into();
        if bool::from(digest.ct_eq(expected)) {
            return Ok(request);
        }
        warn!(
            peer = ?request.remote_addr(),
            secret_present = presented.is_some(),
            "internal call rejected: missing or wrong internal secret"
        );
        Err(Status::unauthenticated(
            "missing or wrong im-internal-secret metadata: give engine and logic the same internal_secret",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(secret: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert(INTERNAL_SECRET_METADATA_KEY, secret.parse().unwrap());
        }
        request
    }

    #[test]
    fn right_secret_passes() {
        let mut check = CheckSecret::new("0123456789abcdef");
        assert!(check.call(request_with(Some("0123456789abcdef"))).is_ok());
    }

    #[test]
    fn missing_or_wrong_secret_is_unauthenticated() {
        let mut check = CheckSecret::new("0123456789abcdef");
        for presented in [None, Some("0123456789abcdeX"), Some("")] {
            let status = check.call(request_with(presented)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{presented:?}");
            assert!(!status.message().contains("0123456789abcdef"));
        }
    }

    #[test]
    fn empty_secret_checks_nothing() {
        let mut check = CheckSecret::new("");
        assert!(check.call(request_with(None)).is_ok());
    }

    #[test]
    fn attached_secret_is_checked() {
        let mut attach = AttachSecret::new("0123456789abcdef");
        let request = attach.call(Request::new(())).unwrap();
        assert!(CheckSecret::new("0123456789abcdef").call(request).is_ok());
    }
}
