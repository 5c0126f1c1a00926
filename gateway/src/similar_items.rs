//! "Items like this one" (`RecommendRequest.similar_to_item_id`): the item's
//! own vector, fetched from a replica of its shard, is the query embedding, and
//! the item is excluded from its own answer.
//!
//! The vector comes from the shard, not the gateway's bundle files, because a
//! shard serves the item as the change log left it: an upserted item has its new
//! vector, a deleted one none. The fetch goes through the same replica policy as
//! a search (`call_replicas`: another replica after an error, the version and
//! `min_revision` of the request), within the retrieval budget.

use recsys_bundle::shard_of;
use recsys_discovery::ClusterView;
use recsys_proto::v1::{
    GetItemVectorRequest, GetItemVectorResponse, retrieval_service_client::RetrievalServiceClient,
};
use tokio::time::Instant;

use crate::GatewayError;
use crate::fanout::call_replicas;
use crate::node_channels::NodeChannels;
use crate::node_failure::NodeFailure;

/// Where and how to look the item up.
pub struct SimilarTo<'a> {
    /// The item.
    pub item: u64,
    /// The bundle version the request is answered from.
    pub version: &'a str,
    /// Its shard count and dimensions.
    pub shard_count: u32,
    /// The vector length the version's shards hold.
    pub dimensions: usize,
    /// Read your writes: the change-log revision the replica must have applied.
    pub min_revision: u64,
    /// When the retrieval stage's budget ends.
    pub deadline: Instant,
}

/// The item's vector and its shard, or `NOT_FOUND` when its shard does not hold
/// it (never did, or a change deleted it); `UNAVAILABLE` when no replica of the
/// shard answered.
pub async fn item_vector(
    clients: &NodeChannels,
    view: &ClusterView,
    query: &SimilarTo<'_>,
) -> Result<(u32, Vec<f32>), GatewayError> {
    let shard = shard_of(query.item, query.shard_count);
    let replicas = view
        .shards
        .get(shard as usize)
        .map_or(&[][..], Vec::as_slice);
    let request = GetItemVectorRequest {
        item_id: query.item,
        bundle_version: query.version.to_string(),
        min_log_revision: query.min_revision,
    };
    let answer = call_replicas(
        clients,
        replicas,
        query.deadline,
        None,
        |node, remaining| {
            let mut grpc_request = tonic::Request::new(request.clone());
            grpc_request.set_timeout(remaining);
            let mut client = RetrievalServiceClient::new(node.channel.clone());
            async move { client.get_item_vector(grpc_request).await }
        },
        |response| check(response, query),
    )
    .await
    .map_err(|failure| {
        GatewayError::NoShardAnswered(format!(
            "shard {shard}, which holds similar_to_item_id {}: {failure}",
            query.item
        ))
    })?;
    if !answer.found {
        return Err(GatewayError::UnknownItem {
            item: query.item,
            version: query.version.to_string(),
        });
    }
    Ok((shard, answer.vector))
}

/// A replica's answer must be of the version asked for, and a found vector as
/// long as the version's and finite (it becomes every shard's query).
fn check(response: &GetItemVectorResponse, query: &SimilarTo<'_>) -> Result<(), NodeFailure> {
    if response.bundle_version != query.version {
        return Err(NodeFailure::WrongVersion {
            answered: response.bundle_version.chars().take(64).collect(),
            serving: query.version.to_string(),
        });
    }
    if response.found
        && (response.vector.len() != query.dimensions
            || response.vector.iter().any(|value| !value.is_finite()))
    {
        return Err(NodeFailure::Malformed(format!(
            "item {}'s vector has {} values (expected {}) or a non-finite one",
            query.item,
            response.vector.len(),
            query.dimensions
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(version: &str) -> SimilarTo<'_> {
        SimilarTo {
            item: 7,
            version,
            shard_count: 2,
            dimensions: 3,
            min_revision: 0,
            deadline: Instant::now(),
        }
    }

    /// An answer of another version, or a vector that could not be a query, is
    /// refused (and so asked of another replica).
    #[test]
    fn answers_of_another_version_or_with_a_bad_vector_are_refused() {
        let answer = |version: &str, found: bool, vector: Vec<f32>| GetItemVectorResponse {
            found,
            vector,
            bundle_version: version.into(),
            log_revision: 0,
        };
        let q = query("v2");
        assert!(check(&answer("v2", true, vec![0.1, 0.2, 0.3]), &q).is_ok());
        assert!(check(&answer("v2", false, vec![]), &q).is_ok());
        assert!(matches!(
            check(&answer("v1", true, vec![0.1, 0.2, 0.3]), &q),
            Err(NodeFailure::WrongVersion { .. })
        ));
        assert!(matches!(
            check(&answer("v2", true, vec![0.1, 0.2]), &q),
            Err(NodeFailure::Malformed(_))
        ));
        assert!(matches!(
            check(&answer("v2", true, vec![0.1, f32::NAN, 0.3]), &q),
            Err(NodeFailure::Malformed(_))
        ));
    }
}
