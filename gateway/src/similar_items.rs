//! "Items like this one" (`RecommendRequest.similar_to_item_id`): the item's
//! own vector, fetched from a replica of its shard, is the query embedding, and
//! the item is excluded from its own answer.
//!
//! The vector comes from the shard, not the gateway's bundle files, because a
//! shard serves the item as the change log left it: an upserted item has its new
//! vector, a deleted one none. The fetch goes through the same replica policy as
//! a search (`call_replicas`: another replica after an error, the version and
//! `min_revision` of the request), within the retrieval budget, and the answer
//! is checked as a search's is (`answer_check::check_item_vector`).

use recsys_bundle::shard_of;
use recsys_discovery::ClusterView;
use recsys_proto::v1::{GetItemVectorRequest, retrieval_service_client::RetrievalServiceClient};
use tokio::time::Instant;

use crate::GatewayError;
use crate::answer_check::check_item_vector;
use crate::fanout::call_replicas;
use crate::node_channels::NodeChannels;

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
            recsys_server::trace_context::inject(grpc_request.metadata_mut());
            let mut client = RetrievalServiceClient::new(node.channel.clone());
            async move { client.get_item_vector(grpc_request).await }
        },
        |response| check_item_vector(response, query.item, query.version, query.dimensions),
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
