//! The certificate of the wss:// listener: loaded from PEM files at start, swapped on
//! reload. Each shard reads the current rustls configuration once per accepted connection;
//! an open connection keeps the configuration it was accepted with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot be used. Each error names the file and the setting that
/// points to it, `tls_cert_file` or `tls_key_file`.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or not PEM.
    #[error(
        "cannot read the TLS certificate file {} (tls_cert_file): {}; set tls_cert_file to a \
         PEM file with the certificate chain, leaf first",
        .path.display(),
        pem_reason(.source)
    )]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file contains no CERTIFICATE section.
    #[error(
        "the TLS certificate file {} (tls_cert_file) contains no PEM certificate: set \
         tls_cert_file to a PEM file with \"-----BEGIN CERTIFICATE-----\" sections, leaf \
         first (convert a DER certificate with `openssl x509 -inform der -in FILE`)",
        .path.display()
    )]
    NoCertificate { path: PathBuf },
    /// The key file is missing, unreadable, not PEM or contains no private key.
    #[error(
        "cannot read the TLS key file {} (tls_key_file): {}; set tls_key_file to a PEM file \
         with the certificate's private key (PKCS#8, PKCS#1 or SEC1)",
        .path.display(),
        key_reason(.source)
    )]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The private key does not match the public key of the certificate.
    #[error(
        "the TLS key file {} (tls_key_file) does not belong to the certificate in {} \
         (tls_cert_file): set tls_key_file to the private key the certificate was issued for, \
         or tls_cert_file to the certificate of this key",
        .key.display(),
        .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls rejected the pair for another reason, for example a key type it does not
    /// support.
    #[error(
        "the TLS certificate {} (tls_cert_file) with the key {} (tls_key_file) was rejected: \
         {source}; use an RSA, ECDSA or Ed25519 key and its certificate",
        .cert.display(),
        .key.display()
    )]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Describes why a PEM file could not be read, in words for the operator: a missing file as
/// "no such file" rather than the I/O error's text.
fn pem_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "no such file".to_owned()
        }
        rustls_pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("invalid PEM: {other}"),
    }
}

/// Describes why a key file could not be used, as [`pem_reason`] does, and names a file without
/// a private key section as such.
fn key_reason(error: &rustls_pki_types::pem::Error) -> String {
    match error {
        rustls_pki_types::pem::Error::NoItemsFound => {
            let reason = "it contains no PEM private key (\"-----BEGIN PRIVATE KEY-----\" or \
                          its RSA or EC form)";
            reason.to_owned()
        }
        other => pem_reason(other),
    }
}

/// The certificate and key files and the rustls configuration built from them.
#[derive(Debug)]
pub(crate) struct TlsCertificate {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: ArcSwap<ServerConfig>,
}

impl TlsCertificate {
    /// Loads the certificate chain and key.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, or a key that does not fit the certificate.
    pub(crate) fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let config = server_config(cert_file, key_file)?;
        Ok(Self {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Reads the files again and, when they are valid, makes new connections use them.
    /// On an error the previous certificate stays in use.
    ///
    /// # Errors
    /// As [`TlsCertificate::load`].
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert_file, &self.key_file)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Returns the configuration for a connection accepted now.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Returns the certificate file, for logs.
    pub(crate) fn cert_file(&self) -> &Path {
        &self.cert_file
    }
}

fn server_config(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
    let chain = read_chain(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|source| TlsError::Key {
        path: key_file.to_owned(),
        source,
    })?;
    let rejected = |source| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            }
        }
        source => TlsError::Rejected {
            cert: cert_file.to_owned(),
            key: key_file.to_owned(),
            source,
        },
    };
    // An explicit provider, so the process needs no default provider installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(rejected)
}

fn read_chain(cert_file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |source| TlsError::Certificate {
        path: cert_file.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    Ok(chain)
}
