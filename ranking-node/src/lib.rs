//! Ranking node: scores retrieval candidates for one user with the bundle's
//! DCN-V2 ranker.
//!
//! The gateway sends ids, not vectors: the node looks up item features in its
//! bundle and user features from the request, assembles x0 and scores all
//! candidates in one batched forward pass on its own scoring threads, which also
//! batch concurrent requests together ([`batcher`]). Health is
//! `NOT_SERVING` until the ranker is loaded; a ranker whose files disagree with
//! its config (a tensor of the wrong shape, say) keeps the node there, and
//! `Rank` says which tensor and which shapes.

mod batcher;
mod error;
mod item_overlay;
mod metrics;
mod server;
mod service;
pub mod versions;

pub use error::RankingError;
pub use server::{RankingConfig, run};
