//! The certificate of the wss:// listener: loaded from PEM files at start, swapped on
//! reload. Each shard reads the current rustls configuration once per accepted connection;
//! an open connection keeps the configuration it was accepted with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or not PEM.
    #[error("cannot read TLS certificate file {path}: {source}")]
    Certificate {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file contains no CERTIFICATE section.
    #[error("TLS certificate file {path} contains no PEM certificate")]
    NoCertificate { path: PathBuf },
    /// The key file is missing, unreadable, not PEM or contains no private key.
    #[error("cannot read TLS key file {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// rustls rejected the pair, for example a key that does not match the certificate.
    #[error("TLS certificate {cert} with key {key} rejected: {source}")]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
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
    let rejected = |source| TlsError::Rejected {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        source,
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
