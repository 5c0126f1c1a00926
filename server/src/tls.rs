//! TLS for every recsys gRPC server and its plain clients: the PEM files a server
//! is given (`--tls-cert`, `--tls-key`, `--tls-ca`) and what they turn into
//! (tonic's rustls `ServerTlsConfig`).
//!
//! With `--tls-ca` the server asks every client for a certificate and rustls checks
//! any certificate offered against that CA during the handshake (a bad one never
//! gets a connection). A client that offers none still completes the handshake,
//! and [`crate::callers::ClientCertLayer`] answers each of its calls
//! `UNAUTHENTICATED`: a clear status instead of the transport error
//! (`UNAVAILABLE`, "connection reset") a refused handshake would give, so a client
//! can tell "no certificate" from "server down". The same layer checks the
//! certificate's identity against what the method admits (a node's data methods
//! admit only the gateway).
//!
//! Plaintext stays the default: `make demo` on loopback needs no certificates.
//! `recsys certs` writes a development CA and certificates for every role.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the server drops the connection, so a
/// client that opens connections and never finishes them holds nothing for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key of the kind expected.
    #[error("{}: no {what} in PEM format", path.display())]
    NoPem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
    },
    /// The flags name part of what TLS needs.
    #[error("{0}")]
    Flags(String),
    /// tonic refused the configuration (a key that does not parse, say).
    #[error("tls configuration: {0}")]
    Config(#[from] tonic::transport::Error),
}

/// A server's TLS material: its certificate chain and key, and optionally the CA
/// that client certificates must chain to (given: mutual TLS, a call without a
/// client certificate is refused with `UNAUTHENTICATED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificate(s) that clients' certificates must chain to.
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// Reads the files into tonic's configuration; errors name the file.
    pub fn load(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read_pem(&self.cert, "CERTIFICATE", "certificate")?;
        let key = read_pem(&self.key, "PRIVATE KEY", "private key")?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            let ca = read_pem(ca, "CERTIFICATE", "certificate")?;
            // Optional at the handshake so that a missing certificate becomes
            // UNAUTHENTICATED in `ClientCertLayer` rather than a reset connection; a
            // certificate that is offered is still verified against `ca` by rustls.
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        Ok(config)
    }
}

/// Who can reach what on one server: TLS (and client certificates), and whether
/// the reflection service is offered on the server's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAccess {
    /// TLS material; `None` serves plaintext.
    pub tls: Option<ServerTls>,
    /// Offer `grpc.reflection.v1` (the binaries turn it on by default only on a
    /// loopback listener, see [`Reflection`]).
    pub reflection: bool,
}

impl Default for ServerAccess {
    /// Plaintext with reflection: what tests and `recsys demo` on loopback use.
    fn default() -> Self {
        Self {
            tls: None,
            reflection: true,
        }
    }
}

/// Whether a server offers reflection (the schema of every service, which lets
/// `grpcurl` work without `.proto` files but also tells any caller what to send).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reflection {
    /// On when the server listens on a loopback address, off otherwise.
    #[default]
    Auto,
    /// Always on.
    On,
    /// Always off.
    Off,
}

impl Reflection {
    /// Whether reflection is on for a server listening on `listen`.
    pub fn enabled_for(self, listen: std::net::SocketAddr) -> bool {
        match self {
            Self::Auto => listen.ip().is_loopback(),
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// The server flags of every binary: TLS material and reflection.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsFlags {
    /// PEM certificate chain of this server; with --tls-key turns TLS on.
    #[arg(long, env = "RECSYS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "RECSYS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA that clients' certificates must chain to: mutual TLS, and a call
    /// without a client certificate is refused with UNAUTHENTICATED.
    #[arg(long, env = "RECSYS_TLS_CA", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,
    /// Offer gRPC reflection: `auto` on a loopback listener only.
    #[arg(long, env = "RECSYS_REFLECTION", value_enum, default_value_t = Reflection::Auto)]
    pub reflection: Reflection,
}

impl ServerTlsFlags {
    /// The access of a server listening on `listen`. Files are read when the
    /// server starts, not here, so `--check-config` works without them.
    pub fn access(&self, listen: std::net::SocketAddr) -> Result<ServerAccess, TlsError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(ServerTls {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_ca.clone(),
            }),
            (None, None) if self.tls_ca.is_some() => {
                return Err(TlsError::Flags(
                    "--tls-ca needs --tls-cert and --tls-key: client certificates are asked for only over TLS".into(),
                ));
            }
            (None, None) => None,
            _ => {
                return Err(TlsError::Flags(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        };
        Ok(ServerAccess {
            tls,
            reflection: self.reflection.enabled_for(listen),
        })
    }
}

/// A client's TLS material toward one server: the CA that the server's certificate
/// must chain to, optionally a client certificate, and the name to check the
/// server's certificate against (default: the host of the address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificate(s).
    pub ca: PathBuf,
    /// PEM client certificate chain and key, for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The DNS name the server's certificate must carry, when the address is
    /// not that name (an IP, a port-forward).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads the files into tonic's configuration.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let ca = read_pem(&self.ca, "CERTIFICATE", "certificate")?;
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert, key)) = &self.identity {
            let cert = read_pem(cert, "CERTIFICATE", "certificate")?;
            let key = read_pem(key, "PRIVATE KEY", "private key")?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }

    /// An endpoint for `addr` (`host:port`) over TLS.
    pub fn endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, TlsError> {
        Ok(
            tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(self.load()?)?,
        )
    }

    /// A channel to `addr` (`host:port`) over TLS, connected on first use.
    pub fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, TlsError> {
        Ok(self.endpoint(addr)?.connect_lazy())
    }
}

/// The client flags of the tools that call a server (`recsys query`, `recsys
/// health`, the benchmarks): TLS on with `--tls-ca`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsFlags {
    /// PEM CA that the server's certificate must chain to; turns TLS on.
    #[arg(long = "tls-ca", env = "RECSYS_CLIENT_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require one.
    #[arg(long = "tls-cert", env = "RECSYS_CLIENT_TLS_CERT", requires_all = ["ca", "key"])]
    pub cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long = "tls-key", env = "RECSYS_CLIENT_TLS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to check the server's certificate against, when the address is not
    /// that name.
    #[arg(
        long = "tls-server-name",
        env = "RECSYS_CLIENT_TLS_SERVER_NAME",
        requires = "ca"
    )]
    pub server_name: Option<String>,
}

impl ClientTlsFlags {
    /// `None` for plaintext.
    pub fn client_tls(&self) -> Option<ClientTls> {
        let ca = self.ca.clone()?;
        Some(ClientTls {
            ca,
            identity: self.cert.clone().zip(self.key.clone()),
            server_name: self.server_name.clone(),
        })
    }

    /// An endpoint for `addr` (`host:port`), over TLS when `--tls-ca` is given.
    pub fn endpoint(&self, addr: &str) -> Result<tonic::transport::Endpoint, TlsError> {
        match self.client_tls() {
            Some(tls) => tls.endpoint(addr),
            None => Ok(tonic::transport::Endpoint::from_shared(format!(
                "http://{addr}"
            ))?),
        }
    }
}

/// Reads a PEM file and checks it holds a block whose label ends in `label`
/// (`CERTIFICATE`, `PRIVATE KEY`); `what` names it in the error.
pub fn read_pem(path: &Path, label: &str, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|line| {
        line.starts_with("-----BEGIN ") && line.trim_end().ends_with(&format!("{label}-----"))
    });
    if !found {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pair_cert_and_key_and_reflection_follows_loopback() {
        let loopback: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:1".parse().unwrap();
        let plain = ServerTlsFlags::default();
        assert_eq!(plain.access(loopback).unwrap(), ServerAccess::default());
        assert!(!plain.access(any).unwrap().reflection);
        let only_ca = ServerTlsFlags {
            tls_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        assert!(only_ca.access(loopback).is_err());
        let full = ServerTlsFlags {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            tls_ca: Some("ca.pem".into()),
            reflection: Reflection::On,
        };
        let access = full.access(any).unwrap();
        assert!(access.reflection);
        assert_eq!(
            access.tls.unwrap().client_ca.as_deref(),
            Some(Path::new("ca.pem"))
        );
    }

    #[test]
    fn a_file_without_the_pem_block_is_named() {
        let dir = std::env::temp_dir().join(format!("recsys-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not.pem");
        std::fs::write(&path, "hello").unwrap();
        let error = read_pem(&path, "CERTIFICATE", "certificate").unwrap_err();
        assert!(error.to_string().contains("not.pem"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
