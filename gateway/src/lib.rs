//! Gateway: the public entry point of a recsys cluster.
//!
//! A `Recommend` request is validated, its query encoded (the bundle's query model
//! for a `user_id`, or the given embedding), and sent to every shard at once; each
//! shard's top-k' is folded into a bounded top-k heap the moment it arrives
//! ([`merge`]). Slow or failed shards turn into coverage, not errors: when the
//! deadline's retrieval budget is spent the gateway answers with what it has.

mod answer_check;
pub mod api_keys;
mod apply_lag;
mod attribute_filter;
pub mod bundle_filter;
pub mod bundle_state;
pub mod catalog_overlay;
mod catalog_service;
mod coverage;
mod deadline;
mod diversity;
mod error;
mod fanout;
mod health_check;
pub mod hex;
pub mod impression_log;
pub mod merge;
mod metrics;
mod mmr;
pub mod node_channels;
mod node_failure;
pub mod node_identity;
pub mod ranker_shares;
mod recommend;
mod response_items;
mod server;
pub mod service;
pub mod session;
pub mod shard_k;
mod similar_items;
mod validate;
mod version_probe;
pub mod versions;
mod watched_file;

pub use catalog_service::{DEFAULT_MAX_APPLY_LAG, ItemLogOptions};
pub use error::GatewayError;
pub use node_identity::NodeTlsFiles;
pub use server::{GatewayConfig, GatewaySecurity, run};
pub use service::RequestPolicy;
pub use validate::RecommendLimits;
