//! Who may call what on a server that asks for client certificates: the tower
//! layer that refuses a call without a certificate (`UNAUTHENTICATED`) and a call
//! whose certificate names an identity its method does not admit
//! (`PERMISSION_DENIED`).
//!
//! rustls has already verified any certificate offered against the server's client
//! CA during the handshake, so what is left per call is presence and identity. A
//! cluster CA signs the gateway's certificate toward the nodes and the public
//! client certificate alike; without the identity check, a holder of the public
//! one could search a shard or rank candidates directly, past the gateway's API
//! keys, limits and checks. A node therefore admits its data methods only from
//! the gateway's identity ([`CallerPolicy::only`]) and leaves health, reflection
//! and the methods it names (`Info`) open to any certificate of the CA, which
//! probes, `recsys health` and operators use.
//!
//! The identity is a DNS name among the certificate's subject alternative names
//! (`recsys certs` writes it first, and as the common name), compared exactly: a
//! wildcard name (`*.recsys`) is no identity, as in SPIFFE or Linkerd, where an
//! identity is one name and never a pattern.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::CertificateDer;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Services every certificate of the CA may call, whatever the policy: health
/// (probes, `recsys health`) and reflection (when the server offers it).
const ALWAYS_OPEN: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

/// Most names of a refused certificate that the refusal quotes.
const QUOTED_NAMES: usize = 3;

/// Which methods of a server admit which client identities, beyond holding a
/// certificate of its client CA. Applies only to a server that asks for client
/// certificates (a `--tls-ca`): without one there is no identity to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerPolicy {
    /// `None`: any certificate of the CA calls anything. Some: only these identities
    /// call methods that are not open.
    identities: Option<Vec<String>>,
    /// Full paths (`/package.Service/Method`) any certificate may call, besides
    /// [`ALWAYS_OPEN`].
    open_methods: Vec<String>,
}

impl CallerPolicy {
    /// Any certificate of the CA may call every method (the gateway's public side).
    pub fn any_certificate() -> Self {
        Self::default()
    }

    /// Only certificates naming one of `identities` may call, except health,
    /// reflection and `open_methods` (`/package.Service/Method`), which any
    /// certificate of the CA may call. A method not named is closed, so a method
    /// or service added later is closed until someone opens it.
    pub fn only(identities: &[&str], open_methods: impl IntoIterator<Item = String>) -> Self {
        Self {
            identities: Some(identities.iter().map(|s| (*s).to_string()).collect()),
            open_methods: open_methods.into_iter().collect(),
        }
    }

    /// Whether any certificate may call the method at `path`.
    fn is_open(&self, path: &str) -> bool {
        let service = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .map(|(service, _)| service);
        service.is_some_and(|service| ALWAYS_OPEN.contains(&service))
            || self.open_methods.iter().any(|open| open == path)
    }

    /// Checks the leaf certificate `cert` (DER) against the method at `path`.
    pub fn check(&self, path: &str, cert: &CertificateDer<'_>) -> Result<(), Refusal> {
        let Some(identities) = &self.identities else {
            return Ok(());
        };
        if self.is_open(path) {
            return Ok(());
        }
        let presented = dns_names(cert);
        if presented
            .iter()
            .any(|name| identities.iter().any(|allowed| allowed == name))
        {
            return Ok(());
        }
        Err(Refusal {
            required: identities.clone(),
            presented,
        })
    }
}

/// A certificate whose identity the method does not admit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Refusal {
    /// The identities the method admits.
    pub required: Vec<String>,
    /// The DNS names the certificate carries.
    pub presented: Vec<String>,
}

impl Refusal {
    fn message(&self) -> String {
        let presented = if self.presented.is_empty() {
            "one that names no dns identity".to_string()
        } else {
            let mut quoted = self.presented[..self.presented.len().min(QUOTED_NAMES)].join(", ");
            if self.presented.len() > QUOTED_NAMES {
                quoted.push_str(&format!(
                    " and {} more",
                    self.presented.len() - QUOTED_NAMES
                ));
            }
            quoted
        };
        format!(
            "this method admits only the client identity {}; the client certificate presented is {presented}",
            self.required.join(" or "),
        )
    }
}

/// The DNS names among the subject alternative names of the certificate `der`,
/// in order; none when it does not parse (rustls parsed and verified it at the
/// handshake, so that is not expected).
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(der) {
        Ok(cert) => cert.valid_dns_names().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// Tower layer that checks each call's client certificate when the server
/// requires one (a `--tls-ca`): none is `UNAUTHENTICATED` (a clear status instead
/// of the reset a refused handshake would give), one whose identity the
/// [`CallerPolicy`] does not admit for the method is `PERMISSION_DENIED` (the
/// caller is authenticated, but not allowed). Off, it passes everything through;
/// it is always in the router so that the router's type does not depend on
/// configuration. Refusals are counted in `recsys_unauthenticated_total{reason}`.
#[derive(Debug, Clone, Default)]
pub struct ClientCertLayer {
    required: bool,
    policy: Arc<CallerPolicy>,
}

impl ClientCertLayer {
    /// Requires a client certificate on every call when `required`, and checks
    /// its identity against `policy`.
    pub fn new(required: bool, policy: CallerPolicy) -> Self {
        Self {
            required,
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower_layer::Layer<S> for ClientCertLayer {
    type Service = ClientCert<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientCert {
            inner,
            required: self.required,
            policy: self.policy.clone(),
        }
    }
}

/// The service [`ClientCertLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct ClientCert<S> {
    inner: S,
    required: bool,
    policy: Arc<CallerPolicy>,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for ClientCert<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if self.required {
            let certs = peer_certs(&request);
            let refused = match certs.as_ref().and_then(|certs| certs.first()) {
                None => {
                    crate::metrics::count_refused_caller("no_client_certificate");
                    Some(tonic::Status::unauthenticated(
                        "this server requires a client certificate signed by its cluster CA",
                    ))
                }
                Some(leaf) => match self.policy.check(request.uri().path(), leaf) {
                    Ok(()) => None,
                    Err(refusal) => {
                        crate::metrics::count_refused_caller("identity_not_allowed");
                        Some(tonic::Status::permission_denied(refusal.to_string()))
                    }
                },
            };
            if let Some(status) = refused {
                return Box::pin(std::future::ready(Ok(status.into_http())));
            }
        }
        Box::pin(self.inner.call(request))
    }
}

/// The certificates the call's connection presented, leaf first, if any (rustls
/// verified them against the client CA during the handshake).
fn peer_certs<B>(request: &http::Request<B>) -> Option<Arc<Vec<CertificateDer<'static>>>> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate (DER) whose subject alternative names are `names`.
    fn cert(names: &[&str]) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn node_policy() -> CallerPolicy {
        CallerPolicy::only(
            &["gateway.recsys"],
            ["/recsys.v1.RetrievalService/Info".to_string()],
        )
    }

    #[test]
    fn a_node_admits_its_data_methods_only_from_the_gateway() {
        let policy = node_policy();
        let gateway = cert(&["gateway.recsys"]);
        let client = cert(&["client.recsys", "localhost"]);
        let search = "/recsys.v1.RetrievalService/Search";
        assert_eq!(policy.check(search, &gateway), Ok(()));
        let refusal = policy.check(search, &client).unwrap_err();
        assert_eq!(refusal.presented, ["client.recsys", "localhost"]);
        let message = refusal.to_string();
        assert!(message.contains("gateway.recsys"), "{message}");
        assert!(message.contains("client.recsys"), "{message}");
        // An unknown method or service is closed too; health, reflection and Info are not.
        assert!(
            policy
                .check("/recsys.v1.RetrievalService/Nope", &client)
                .is_err()
        );
        assert!(policy.check("/other.Service/Search", &client).is_err());
        assert!(policy.check("no-slash", &client).is_err());
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/recsys.v1.RetrievalService/Info",
        ] {
            assert_eq!(policy.check(open, &client), Ok(()), "{open}");
        }
        // Any certificate calls anything under the open policy.
        assert_eq!(
            CallerPolicy::any_certificate().check(search, &client),
            Ok(())
        );
    }

    #[test]
    fn identities_match_exactly_and_a_certificate_without_names_is_refused_by_name() {
        let policy = node_policy();
        let search = "/recsys.v1.RetrievalService/Search";
        for names in [
            &["*.recsys"][..],
            &["gateway.recsys.example"],
            &["xgateway.recsys"],
            &["127.0.0.1"],
        ] {
            assert!(policy.check(search, &cert(names)).is_err(), "{names:?}");
        }
        let refusal = policy.check(search, &cert(&[])).unwrap_err();
        assert!(
            refusal.to_string().contains("names no dns identity"),
            "{refusal}"
        );
        let many = cert(&["a.recsys", "b.recsys", "c.recsys", "d.recsys", "e.recsys"]);
        let message = policy.check(search, &many).unwrap_err().to_string();
        assert!(message.contains("c.recsys and 2 more"), "{message}");
        assert!(!message.contains("d.recsys"), "{message}");
        // Garbage is no identity, not a panic.
        let garbage = CertificateDer::from(&b"not a certificate"[..]);
        assert!(policy.check(search, &garbage).is_err());
    }
}
