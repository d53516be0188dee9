//! A throwaway certificate authority and server certificate for the sandbox's TLS mode, so the
//! subscriber's TLS path (rustls, a trusted CA, server name checks) runs exactly as against
//! Salesforce, without a public CA.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::SandboxError;

/// PEMs of a fresh CA and of a server certificate it signed for `localhost` and `127.0.0.1`.
#[derive(Clone)]
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// Generates a CA and a server certificate.
pub fn generate() -> Result<TestPki, SandboxError> {
    let tls = |err: rcgen::Error| SandboxError::Tls(Box::new(err));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fulfilld sandbox test CA");
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls)?).map_err(tls)?;
    let server_key = KeyPair::generate().map_err(tls)?;
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(tls)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "fulfilld sandbox");
    let server = server_params.signed_by(&server_key, &ca).map_err(tls)?;
    Ok(TestPki {
        ca_pem: ca.pem(),
        server_cert_pem: server.pem(),
        server_key_pem: server_key.serialize_pem(),
    })
}
