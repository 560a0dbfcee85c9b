//! Test certificates, made in the test: a CA, and a server certificate for
//! `localhost` and 127.0.0.1 signed by it.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_rustls::rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};

/// A CA and one server certificate it signed, as PEM.
pub struct Certs {
    pub ca_pem: String,
    pub server_pem: String,
    pub server_key_pem: String,
}

impl Certs {
    pub fn new() -> Certs {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer looks self-signed.
        ca.distinguished_name
            .push(DnType::CommonName, "mulligan test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        Certs {
            ca_pem: ca_cert.pem(),
            server_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// A TLS acceptor for pods, with the server certificate (HTTP/1.1).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.server_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes()).expect("key");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}
