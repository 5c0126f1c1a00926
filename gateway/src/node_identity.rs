//! Mutual TLS toward the nodes, and the check that a node's certificate names the
//! identity its registration claims.
//!
//! Anyone who can write to etcd can register an address for shard 3; what makes the
//! gateway send shard 3's queries there is a certificate, issued by the cluster CA,
//! that names `retrieval-shard-3.recsys` ([`recsys_discovery::node_identity`]). Each
//! node's channel gets its own rustls verifier ([`NodeVerifier`]): webpki's chain
//! and name checks against the cluster CA, with the name taken from the
//! registration rather than from the address (an address proves nothing). A
//! handshake it refuses is counted by reason and marks the node rejected:
//! [`NodeChannels::replica_order`](crate::node_channels::NodeChannels::replica_order)
//! then leaves it out altogether, even when every other replica is down, and since
//! the handshake comes before any request, a refused node never sees one. The
//! health checks keep trying the handshake, so a node whose certificate is replaced
//! with a right one comes back by itself. The gateway presents its own client
//! certificate ([`recsys_discovery::GATEWAY_IDENTITY`]) so nodes can require one.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use recsys_server::tls::{TlsError, read_pem};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};

/// The gateway's TLS material toward the nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTlsFiles {
    /// PEM cluster CA that node certificates must chain to.
    pub ca: PathBuf,
    /// PEM client certificate the gateway presents to nodes.
    pub cert: PathBuf,
    /// PEM key of `cert`.
    pub key: PathBuf,
}

/// [`NodeTlsFiles`], read and checked once at start.
#[derive(Debug)]
pub struct NodeTls {
    webpki: Arc<WebPkiServerVerifier>,
    client: Identity,
}

impl NodeTls {
    /// Reads the CA and the client certificate; errors name the file.
    pub fn load(files: &NodeTlsFiles) -> Result<Self, TlsError> {
        let ca_pem = read_pem(&files.ca, "CERTIFICATE", "certificate")?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|_| no_pem(&files.ca, "certificate"))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::Flags(format!("{}: {e}", files.ca.display())))?;
        }
        // Only the provider's signature algorithms matter to a verifier. ring is
        // what tonic's `tls-ring` uses; rustls deprecates it for lacking
        // post-quantum key exchange, which needs aws-lc-rs and its cmake build.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError::Flags(format!("{}: {e}", files.ca.display())))?;
        let cert = read_pem(&files.cert, "CERTIFICATE", "certificate")?;
        let key = read_pem(&files.key, "PRIVATE KEY", "private key")?;
        Ok(Self {
            webpki,
            client: Identity::from_pem(cert, key),
        })
    }

    /// `endpoint` (an `https://` address) over mutual TLS, accepting only a
    /// certificate that names `check`'s identity.
    pub(crate) fn secure(
        &self,
        endpoint: Endpoint,
        check: Arc<IdentityCheck>,
    ) -> Result<Endpoint, String> {
        let expected = ServerName::try_from(check.expected.clone())
            .map_err(|e| format!("identity {:?} is not a dns name: {e}", check.expected))?;
        let verifier = Arc::new(NodeVerifier {
            webpki: self.webpki.clone(),
            expected,
            check: check.clone(),
        });
        let config = ClientTlsConfig::new()
            .identity(self.client.clone())
            // SNI names the identity wanted, so a node serving several can pick.
            .domain_name(check.expected.clone())
            .timeout(recsys_server::tls::HANDSHAKE_TIMEOUT);
        endpoint
            .tls_config_with_verifier(config, verifier)
            .map_err(|e| format!("tls configuration for {}: {e}", check.node))
    }
}

fn no_pem(path: &std::path::Path, what: &'static str) -> TlsError {
    TlsError::NoPem {
        path: path.to_path_buf(),
        what,
    }
}

/// What the gateway expects of one node's certificate, and whether the last
/// handshake with it failed that expectation.
#[derive(Debug)]
pub struct IdentityCheck {
    /// The node's address, for logs.
    pub node: String,
    /// The identity its registration implies.
    pub expected: String,
    rejected: AtomicBool,
}

impl IdentityCheck {
    /// A node at `node` that must prove `expected`; not rejected until a handshake says so.
    pub fn new(node: &str, expected: String) -> Self {
        Self {
            node: node.to_string(),
            expected,
            rejected: AtomicBool::new(false),
        }
    }

    /// Whether the node's last handshake presented a certificate the gateway refused.
    pub fn is_rejected(&self) -> bool {
        self.rejected.load(Ordering::Relaxed)
    }

    fn accepted(&self) {
        if self.rejected.swap(false, Ordering::Relaxed) {
            tracing::info!(node = %self.node, identity = %self.expected, "node certificate accepted, routing to it");
        }
    }

    fn refused(&self, error: &rustls::Error) {
        let reason = reason(error);
        crate::metrics::node_identity_rejected(reason);
        if !self.rejected.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                node = %self.node,
                identity = %self.expected,
                reason,
                %error,
                "node certificate refused, no traffic to it"
            );
        }
    }
}

/// The metric label of a refused certificate.
fn reason(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong_identity"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "untrusted",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            _ => "other",
        },
        _ => "other",
    }
}

/// webpki's verification against the cluster CA, with the name to check taken from
/// the registration; records each verdict in the node's [`IdentityCheck`].
#[derive(Debug)]
struct NodeVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
    check: Arc<IdentityCheck>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            &self.expected,
            ocsp_response,
            now,
        );
        match &verdict {
            Ok(_) => self.check.accepted(),
            Err(error) => self.check.refused(error),
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
