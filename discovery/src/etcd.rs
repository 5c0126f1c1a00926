//! How this crate talks to etcd: where registrations live and how clients connect.
//!
//! Every node registers one key, `/recsys/{cluster}/nodes/{role}/{node_id}`, whose value
//! is its [`NodeRecord`](crate::NodeRecord) as JSON, on a lease of its own. The
//! gateway lists and watches [`nodes_prefix`]; nodes write [`node_key`]. Both sides
//! connect with `connect` and bound every unary call with `request`, because the
//! client's own calls wait as long as a half-open connection lets them.

use std::future::Future;
use std::time::Duration;

use etcd_client::Client;

use crate::{DiscoveryError, EtcdAccess, Role};

/// Longest wait for one unary etcd call (get, put, grant, revoke, keepalive handshake).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for a TCP connection to an etcd endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 pings on open streams, so a watch over a dead connection fails instead of
/// waiting forever. etcd answers pings closer than 5 s apart (its
/// `--grpc-keepalive-min-time`) with GOAWAY `too_many_pings`, so stay above it.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The prefix under which every node of `cluster` registers: `/recsys/{cluster}/nodes/`.
pub fn nodes_prefix(cluster: &str) -> String {
    format!("/recsys/{cluster}/nodes/")
}

/// The key of one node: `/recsys/{cluster}/nodes/{role}/{node_id}`.
pub fn node_key(cluster: &str, role: Role, node_id: &str) -> String {
    format!("{}{role}/{node_id}", nodes_prefix(cluster))
}

/// A client of the etcd `access` names. Without credentials connecting is lazy:
/// this fails only on a malformed endpoint or unreadable TLS files, and an etcd
/// that is down shows up as errors of the later calls. With credentials it
/// authenticates at once, so a wrong password or an etcd that is down fails here.
pub async fn connect(access: &EtcdAccess) -> Result<Client, DiscoveryError> {
    let options = access
        .connect_options()
        .await?
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_keep_alive(HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT);
    request("connect", Client::connect(&access.endpoints, Some(options))).await
}

/// Runs one etcd call, failing it after [`REQUEST_TIMEOUT`].
pub async fn request<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(match (refusal(&source), space_exceeded(&source)) {
            (Some(message), _) => DiscoveryError::Denied { operation, message },
            (None, Some(message)) => DiscoveryError::SpaceExceeded { operation, message },
            (None, None) => DiscoveryError::Etcd { operation, source },
        }),
        Err(_) => Err(DiscoveryError::Timeout {
            operation,
            after: REQUEST_TIMEOUT,
        }),
    }
}

/// etcd's message when it refused a call for who the client is (auth on, and a
/// wrong password, no user, an expired token, or a role without the permission),
/// so that a misconfigured user reads as such rather than as an etcd outage.
fn refusal(error: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return None;
    };
    let message = status.message();
    let refused = matches!(
        status.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
    ) || message.contains("authentication failed")
        || message.contains("user name is empty")
        // An admin call by a client certificate's common name that is no user.
        || message.contains("user name not found");
    refused.then(|| message.to_string())
}

/// etcd's message when its database is over quota: the NOSPACE alarm is raised
/// and every write is refused until it is disarmed, which no retry changes.
/// (etcd's other `RESOURCE_EXHAUSTED`, "too many requests", is a passing
/// overload and stays an ordinary error.)
fn space_exceeded(error: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = error else {
        return None;
    };
    let message = status.message();
    message
        .contains("database space exceeded")
        .then(|| message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_prefix() {
        let key = node_key("prod", Role::Retrieval, "r-0");
        assert_eq!(key, "/recsys/prod/nodes/retrieval/r-0");
        assert!(key.starts_with(&nodes_prefix("prod")));
        assert_eq!(
            node_key("prod", Role::Ranking, "k-1"),
            "/recsys/prod/nodes/ranking/k-1"
        );
    }
}
