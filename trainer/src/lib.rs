//! Trains recsys's models from interaction data, the way TensorFlow Recommenders'
//! tutorials do, on candle.
//!
//! Data comes from [`movielens`] (100K, 1M) or [`interactions_csv`] into a
//! [`Dataset`]; [`split`] divides it; [`features`] builds the [`Vocabulary`]s
//! (row 0 out of vocabulary) and feature tables the model will read.
//!
//! Not here yet: the DCN-V2 ranker's training and the export to a bundle.

pub mod dataset;
pub mod error;
pub mod features;
pub mod interactions_csv;
pub mod movielens;
pub mod split;
mod text_file;
pub mod vocabulary;

pub use dataset::{Dataset, Interaction, Item, User};
pub use error::{Result, TrainerError};
pub use features::FeatureChoice;
pub use interactions_csv::load_interactions_csv;
pub use movielens::{load_movielens_1m, load_movielens_100k};
pub use split::{Split, last_n_per_user, random_split, time_cutoff};
pub use text_file::Encoding;
pub use vocabulary::Vocabulary;
