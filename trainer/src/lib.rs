//! Trains recsys's models from interaction data, the way TensorFlow Recommenders'
//! tutorials do, on candle.
//!
//! Data comes from [`movielens`] (100K, 1M) or [`interactions_csv`] into a
//! [`Dataset`]; [`split`] divides it; [`features`] builds the [`Vocabulary`]s
//! (row 0 out of vocabulary) and feature tables; [`two_tower`] is the retrieval
//! model, trained by [`train`] with the in-batch softmax of [`in_batch_softmax`]
//! (`tfrs.tasks.Retrieval`) and [`adagrad`] or Adam, and measured by
//! [`evaluate`] (`tfrs.metrics.FactorizedTopK`, exact). [`synthetic`] plants
//! preferences for tests.
//!
//! [`export`] writes a trained retrieval model as a bundle the cluster serves.
//!
//! The ranker: [`ranking_features`] turns the data set into the ranker's feature
//! columns, [`ranking_model`] is `recsys_model::DcnV2` over trainable
//! embeddings, fitted to ratings by [`ranking_train`] (MSE, RMSE reported), or
//! to clicks with sampled negatives ([`click`]: cross-entropy; AUC, log loss and
//! calibration reported), from
//! a [`ranking_preset`], and written in the served ranker layout by
//! [`ranking_export`]. [`synthetic_ratings`] plants a rating function for tests.

pub mod adagrad;
pub mod click;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod features;
pub mod impressions;
pub mod in_batch_softmax;
pub mod interactions_csv;
pub mod movielens;
pub mod multi_objective;
mod optimizer;
pub mod ranking_export;
pub mod ranking_features;
pub mod ranking_model;
pub mod ranking_preset;
pub mod ranking_train;
pub mod split;
pub mod synthetic;
pub mod synthetic_ratings;
mod text_file;
pub mod train;
pub mod two_tower;
pub mod vocabulary;

pub use dataset::{Dataset, Interaction, Item, User};
pub use error::{Result, TrainerError};
pub use evaluate::{
    TopKAccuracy, factorized_top_k, factorized_top_k_unseen, popularity_top_k,
    popularity_top_k_unseen,
};
pub use export::{
    CatalogIds, ExportOptions, catalog_ids, export_bundle, item_attributes, user_history,
};
pub use features::FeatureChoice;
pub use interactions_csv::load_interactions_csv;
pub use movielens::{load_movielens_1m, load_movielens_100k};
pub use multi_objective::TrainedHead;
pub use ranking_features::RankingFeature;
pub use ranking_model::{FeatureWidth, RankingModel, RankingModelConfig};
pub use ranking_preset::RankingPreset;
pub use ranking_train::{
    RankingEpoch, RankingEvent, RankingOptimizer, RankingReport, RankingTrainConfig,
    predict_interactions, ranking_metric, train_ranking,
};
pub use split::{Split, last_n_per_user, random_split, time_cutoff};
pub use text_file::Encoding;
pub use train::{EpochReport, OptimizerChoice, TrainConfig, TrainEvent, train};
pub use two_tower::{TwoTower, TwoTowerConfig};
pub use vocabulary::Vocabulary;
