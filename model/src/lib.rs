//! Models served by recsys, built on candle.
//!
//! [`dcn_v2`] is the Deep & Cross Network V2 ranker (Wang et al. 2020,
//! arXiv:2008.13535) with a cross layer that matches `tfrs.layers.dcn.Cross`
//! exactly; `tests/tfrs_parity.rs` checks it against outputs produced by TFRS
//! itself. [`keras`] maps Keras weight names and layouts onto ours. [`ranker`]
//! assembles x0 from [`features`] (categorical, multi-hot, numeric) and scores
//! candidates, with the user-side values stored in `stored_user_features` as request
//! defaults; [`planted`] writes a hand-set ranker for synthetic bundles.

mod cross_fold;
pub mod dcn_mix;
pub mod dcn_v2;
pub mod error;
pub mod features;
pub mod keras;
pub mod planted;
pub mod ranker;
mod stored_user_features;

pub use dcn_mix::{MixConfig, MixCrossLayer};
pub use dcn_v2::{
    Activation, CrossLayer, CrossThenDeep, DcnConfig, DcnV2, FirstCross, Head, HeadSpec,
    MAX_HEAD_WEIGHT, MAX_HEADS, Structure,
};
pub use error::ModelError;
pub use features::{FeatureInput, FeatureKind, FeatureSpec, Normalization, Pooling, Side};
pub use ranker::{RankError, Ranker, RankerConfig, RankerFiles, Scores, UserContext};

/// Threads one matrix product of a forward pass runs on: candle's setting
/// (`CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else one per physical
/// core). Serving processes set one (`recsys_server::kernel_threads`).
pub fn threads_per_product() -> usize {
    candle_core::utils::get_num_threads()
}
