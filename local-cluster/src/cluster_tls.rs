//! A local cluster over TLS: every server with the certificate of its identity
//! from a `recsys certs` directory, mutual TLS between the gateway and the nodes
//! and on the gateway's public side, as a deployment with TLS on would run. The
//! benchmarks use it to measure what TLS costs against plaintext.

use std::path::PathBuf;

use recsys_gateway::{GatewaySecurity, NodeTlsFiles};
use recsys_server::tls::{ClientTls, ServerAccess, ServerTls};

/// A directory in `recsys certs`' layout (`ca.pem`, `NAME.pem` and `NAME.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The directory.
    pub dir: PathBuf,
}

impl ClusterTls {
    fn pem(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// A server presenting certificate `name`, requiring client certificates of the CA.
    pub fn server(&self, name: &str) -> ServerAccess {
        ServerAccess {
            tls: Some(ServerTls {
                cert: self.pem(name),
                key: self.key(name),
                client_ca: Some(self.pem("ca")),
            }),
            reflection: true,
        }
    }

    /// The gateway: `gateway` on its public side, `gateway-client` toward nodes.
    pub fn gateway(&self) -> GatewaySecurity {
        GatewaySecurity {
            access: self.server("gateway"),
            node_tls: Some(NodeTlsFiles {
                ca: self.pem("ca"),
                cert: self.pem("gateway-client"),
                key: self.key("gateway-client"),
            }),
            api_keys: None,
            session_keys: None,
        }
    }

    /// A client of any server of the cluster, presenting `name` (`client`,
    /// `gateway-client`).
    pub fn client(&self, name: &str) -> ClientTls {
        ClientTls {
            ca: self.pem("ca"),
            identity: Some((self.pem(name), self.key(name))),
            server_name: None,
        }
    }
}
