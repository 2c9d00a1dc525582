//! The listeners' TLS identity, as TorchServe configures it: a PKCS12 keystore (`keystore`,
//! `keystore_pass`, `keystore_type`) or PEM files (`certificate_file`, `private_key_file`),
//! loaded once and shared by every `https://` listener and, with `enable_grpc_ssl`, the gRPC
//! listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Smallest RSA key rustls (with ring) signs with.
const MIN_RSA_BITS: u32 = 2048;

/// Where the certificate and its private key come from. TorchServe prefers the keystore when
/// both are configured.
#[derive(Debug, Clone, PartialEq)]
pub enum CertificateSource {
    /// A PKCS12 keystore and its password (TorchServe's default `changeit`).
    Keystore { path: PathBuf, password: String },
    /// A PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    Pem { cert: PathBuf, key: PathBuf },
}

/// A certificate chain and its private key, checked to work with rustls.
pub struct Identity {
    server: Arc<rustls::ServerConfig>,
}

impl Identity {
    /// Loads and checks the certificate and key of `source`.
    pub fn load(source: &CertificateSource) -> Result<Self> {
        let (chain, key) = match source {
            CertificateSource::Pem { cert, key } => read_pem(cert, key)
                .with_context(|| format!("cannot load {} and {}", cert.display(), key.display())),
            CertificateSource::Keystore { path, password } => read_keystore(path, password)
                .with_context(|| format!("cannot load keystore {}", path.display())),
        }?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| unusable(&chain, e))?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            server: Arc::new(server),
        })
    }

    /// The acceptor of the HTTPS listeners; speaks HTTP/1.1 only.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// The acceptor of the gRPC listeners; speaks HTTP/2 only.
    pub fn grpc_acceptor(&self) -> TlsAcceptor {
        let mut server = (*self.server).clone();
        server.alpn_protocols = vec![b"h2".to_vec()];
        TlsAcceptor::from(Arc::new(server))
    }
}

fn read_pem(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("no PEM certificate in {}", cert.display()))?;
    if chain.is_empty() {
        bail!("no PEM certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("no PEM private key in {}", key.display()))?;
    Ok((chain, key))
}

/// The first private key entry of a PKCS12 keystore and its certificate chain, as
/// TorchServe takes them.
fn read_keystore(
    path: &Path,
    password: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let data = std::fs::read(path)?;
    let store = p12_keystore::KeyStore::from_pkcs12(
        &data,
        password,
        p12_keystore::Pkcs12ImportPolicy::Strict,
    )
    .map_err(|e| anyhow!("not a PKCS12 keystore, or a wrong keystore_pass: {e}"))?;
    let (_, entry) = store
        .private_key_chain()
        .ok_or_else(|| anyhow!("no key entry found in keystore"))?;
    let chain = entry
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivatePkcs8KeyDer::from(entry.key().as_der().to_vec()).into();
    Ok((chain, key))
}

/// Why rustls refused a certificate and key, naming the key size when the key is an RSA key
/// outside what rustls signs with (TorchServe's own test key is a 1024-bit one).
fn unusable(chain: &[CertificateDer], error: rustls::Error) -> anyhow::Error {
    match rsa_bits(&chain[0]) {
        Some(bits) if bits < MIN_RSA_BITS => anyhow!(
            "the certificate's key is a {bits}-bit RSA key: torchyard needs at least \
             {MIN_RSA_BITS} bits (RSA below 2048 bits is broken security); make a new key, \
             for example openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem"
        ),
        _ => anyhow!("the certificate and private key are not usable for TLS: {error}"),
    }
}

/// The modulus size of the certificate's public key when it is an RSA key.
fn rsa_bits(cert: &CertificateDer) -> Option<u32> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    match cert.public_key().parsed().ok()? {
        PublicKey::RSA(rsa) => Some(rsa.key_size() as u32),
        _ => None,
    }
}
