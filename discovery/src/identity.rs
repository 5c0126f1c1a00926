//! The names that certificates carry for each role of a cluster, so that a
//! registration (role and shard) can be checked against the certificate of the
//! node behind it.
//!
//! A node's identity is a DNS name of its role and shard (`retrieval-shard-3.recsys`,
//! `ranking.recsys`): the replicas of one shard share it, since any of them may
//! answer for the shard, and it says nothing about the address, which etcd or a
//! scheduler decides. `recsys certs` writes it into each node certificate's
//! subject alternative names; the gateway checks a node's certificate against the
//! identity its registration implies before it sends the node anything. The names
//! are DNS names because that is what rustls and webpki check a server against.

use crate::Role;

/// The domain every identity ends in.
pub const IDENTITY_DOMAIN: &str = "recsys";

/// The identity of the gateway, which its client certificate (toward the nodes)
/// carries.
pub const GATEWAY_IDENTITY: &str = "gateway.recsys";

/// The identity a node of `role` serving `shard` must prove: retrieval nodes name
/// their shard, ranking nodes only their role. A retrieval registration without a
/// shard has no identity (it cannot be routed anyway).
pub fn node_identity(role: Role, shard: Option<u32>) -> Option<String> {
    match (role, shard) {
        (Role::Retrieval, Some(shard)) => {
            Some(format!("retrieval-shard-{shard}.{IDENTITY_DOMAIN}"))
        }
        (Role::Retrieval, None) => None,
        (Role::Ranking, _) => Some(format!("ranking.{IDENTITY_DOMAIN}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_name_role_and_shard() {
        assert_eq!(
            node_identity(Role::Retrieval, Some(3)).as_deref(),
            Some("retrieval-shard-3.recsys")
        );
        assert_eq!(node_identity(Role::Retrieval, None), None);
        assert_eq!(
            node_identity(Role::Ranking, Some(0)).as_deref(),
            Some("ranking.recsys")
        );
    }
}
