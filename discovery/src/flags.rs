//! The etcd flags every node binary takes, in one place (feature `flags`, for
//! binaries only: the libraries take [`AnnounceOptions`] and never see clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{AnnounceOptions, DiscoveryError, EtcdAccess, EtcdCredentials, EtcdTls};

/// How to reach etcd: `--etcd URL` and TLS and auth toward it. Every binary that
/// talks to etcd flattens this one struct.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdAccessFlags {
    /// etcd client URLs (comma-separated): `https://` with --etcd-ca.
    #[arg(long, env = "RECSYS_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// PEM CA that etcd's server certificate chains to: TLS toward etcd.
    #[arg(long, env = "RECSYS_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for an etcd with --client-cert-auth.
    #[arg(long, env = "RECSYS_ETCD_CERT", requires_all = ["etcd_ca", "etcd_key"])]
    pub etcd_cert: Option<PathBuf>,
    /// PEM key of --etcd-cert.
    #[arg(long, env = "RECSYS_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user to authenticate as (etcd with auth on; see `recsys etcd-auth`).
    #[arg(long, env = "RECSYS_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File whose first line is --etcd-user's password (a file, so that the
    /// password never shows in `ps`).
    #[arg(long, env = "RECSYS_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAccessFlags {
    /// The access the flags describe, or `None` without `--etcd`.
    pub fn access(&self) -> Result<Option<EtcdAccess>, DiscoveryError> {
        if self.etcd.is_empty() {
            return Ok(None);
        }
        let access = EtcdAccess {
            endpoints: self.etcd.clone(),
            tls: self.etcd_ca.as_ref().map(|ca| EtcdTls {
                ca: ca.clone(),
                identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            }),
            credentials: self
                .etcd_user
                .clone()
                .zip(self.etcd_password_file.clone())
                .map(|(user, password_file)| EtcdCredentials {
                    user,
                    password_file,
                }),
        };
        access.check()?;
        Ok(Some(access))
    }
}

/// `--etcd URL --cluster NAME` and the registration tunables.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdFlags {
    /// etcd client URLs and TLS and auth toward it; registers the node there when given.
    #[command(flatten)]
    pub access: EtcdAccessFlags,
    /// Cluster name: nodes register under /recsys/{cluster}/nodes/.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Unique node id in the cluster [default: {role}@{advertise-addr}].
    #[arg(long, env = "RECSYS_NODE_ID")]
    pub node_id: Option<String>,
    /// Address other nodes reach this one at [default: the listen address, which
    /// then must not be 0.0.0.0 or [::]].
    #[arg(long, env = "RECSYS_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Lease TTL in seconds: how long a crashed node stays registered.
    #[arg(long, env = "RECSYS_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: u64,
    /// Milliseconds between announcing `draining` and refusing new calls.
    #[arg(long, env = "RECSYS_DRAIN_GRACE_MS", default_value_t = 500)]
    pub drain_grace_ms: u64,
    /// Longest wait (seconds) for in-flight calls when stopping.
    #[arg(long, env = "RECSYS_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,
}

/// The longest lease TTL a node may ask for: a day. A crashed node stays
/// registered for its TTL, so anything longer is a mistake, and etcd itself
/// caps leases (`MaxLeaseTTL`, 9e9 s) far below what a u64 of seconds holds.
pub const MAX_LEASE_TTL_SECS: u64 = 24 * 3600;

impl EtcdFlags {
    /// The announce options of a `role` node listening on `listen`, or `None`
    /// without `--etcd`.
    pub fn announce(
        &self,
        role: &str,
        listen: SocketAddr,
    ) -> Result<Option<AnnounceOptions>, DiscoveryError> {
        let Some(access) = self.access.access()? else {
            return Ok(None);
        };
        if self.lease_ttl == 0 || self.lease_ttl > MAX_LEASE_TTL_SECS {
            return Err(DiscoveryError::Invalid(format!(
                "--lease-ttl is {}, must be between 1 and {MAX_LEASE_TTL_SECS} seconds",
                self.lease_ttl
            )));
        }
        let advertise = match &self.advertise_addr {
            // Checked here, not at the first dial of some gateway: a node that
            // registers an address nobody can parse is lost to the cluster.
            Some(addr) if !is_host_port(addr) => {
                return Err(DiscoveryError::Invalid(format!(
                    "--advertise-addr {addr:?} is not host:port"
                )));
            }
            Some(addr) => addr.clone(),
            None if listen.ip().is_unspecified() => {
                return Err(DiscoveryError::Invalid(format!(
                    "listening on {listen}: give --advertise-addr host:port so that other nodes can reach this one"
                )));
            }
            None => listen.to_string(),
        };
        let node_id = self
            .node_id
            .clone()
            .unwrap_or_else(|| format!("{role}@{advertise}"));
        let mut options = AnnounceOptions::new(access, self.cluster.clone(), node_id, advertise);
        options.lease_ttl = Duration::from_secs(self.lease_ttl);
        options.drain_grace = Duration::from_millis(self.drain_grace_ms);
        options.drain_timeout = Duration::from_secs(self.drain_timeout);
        Ok(Some(options))
    }
}

/// How a server moves between bundle versions (`recsys rollout`, or a bundle
/// root's `CURRENT` changing).
#[derive(Debug, Clone, clap::Args)]
pub struct VersionFlags {
    /// side-by-side: load a new version beside the served one, then switch (two
    /// versions in memory for a while); replace: drop the served one first (one
    /// in memory, the node out of service while it loads: only for shards with
    /// another replica).
    #[arg(long = "switch", env = "RECSYS_SWITCH", value_enum, default_value_t = crate::SwitchMode::SideBySide)]
    pub switch: crate::SwitchMode,
    /// Milliseconds an old version must go unasked before it is dropped.
    #[arg(long, env = "RECSYS_RETIRE_AFTER_MS", default_value_t = 5000)]
    pub retire_after_ms: u64,
    /// Milliseconds between two reads of the bundle root's CURRENT.
    #[arg(long, env = "RECSYS_CURRENT_POLL_MS", default_value_t = 1000)]
    pub current_poll_ms: u64,
}

impl VersionFlags {
    /// The options the flags set.
    pub fn options(&self) -> crate::VersionOptions {
        crate::VersionOptions {
            switch: self.switch,
            retire_after: Duration::from_millis(self.retire_after_ms),
            poll: Duration::from_millis(self.current_poll_ms.max(10)),
        }
    }
}

/// Whether `addr` is `host:port` with a non-empty host and a numeric port
/// (`[v6]:port` included).
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(advertise: Option<&str>) -> EtcdFlags {
        EtcdFlags {
            access: EtcdAccessFlags {
                etcd: vec!["http://etcd:2379".into()],
                ..EtcdAccessFlags::default()
            },
            cluster: "c".into(),
            node_id: None,
            advertise_addr: advertise.map(String::from),
            lease_ttl: 10,
            drain_grace_ms: 500,
            drain_timeout: 10,
        }
    }

    #[test]
    fn advertise_addresses_must_be_host_and_port() {
        let listen: SocketAddr = "0.0.0.0:7000".parse().unwrap_or_else(|e| panic!("{e}"));
        for good in ["retrieval-0a:7000", "10.0.0.7:7000", "[::1]:7000"] {
            assert!(flags(Some(good)).announce("r", listen).is_ok(), "{good}");
        }
        for bad in ["retrieval-0a", ":7000", "host:port", "host:70000", "a b:1"] {
            assert!(flags(Some(bad)).announce("r", listen).is_err(), "{bad}");
        }
        // Listening on every interface needs an address to advertise.
        assert!(flags(None).announce("r", listen).is_err());
    }
}
