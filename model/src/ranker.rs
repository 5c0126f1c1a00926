//! A ranker: feature vocabularies and embedding tables that assemble x0, and the
//! DCN-V2 that scores it.
//!
//! Files (paths relative to the bundle, named by the bundle manifest):
//!
//! ```text
//! ranker/config.json          RankerConfig: version, DcnConfig, features in x0 order
//! ranker/weights.safetensors  embedding.{feature} [vocabulary + 1, dim] (row 0: out of vocabulary),
//!                             and the DCN-V2 tensors (see dcn_v2)
//! ranker/vocab/{feature}.txt  line i is the value of row i + 1
//! ranker/item_features.tsv    header "item_id<TAB>feature...", one item per line
//!                             (multi-hot cells list values separated by "|")
//! ranker/user_features.tsv    optional: header "user_id<TAB>feature...", the stored
//!                             user-side values a request may leave out (crate::stored_user_features)
//! ```
//!
//! Features are categorical, multi-hot or numeric ([`crate::features`]). Unknown
//! values map to row 0, as Keras `StringLookup(num_oov_indices=1)` does, so a
//! user the ranker has never seen is still scored, and the answer says so. The
//! item side of x0 is assembled once per item at load; a request only adds its
//! user side.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use recsys_bundle::Vocabulary;
use serde::{Deserialize, Serialize};

mod heads;
mod scoring;

use crate::cross_fold::CrossFold;
use crate::features::{Feature, ItemTable};
use crate::stored_user_features::StoredUserFeatures;
use crate::{DcnConfig, DcnV2, ModelError};
use scoring::{FIRST_PRODUCT_BUDGET_BYTES, FirstProduct, ScoringPlan};

pub use crate::features::{FeatureInput, FeatureKind, FeatureSpec, Normalization, Pooling, Side};

/// `ranker/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankerConfig {
    /// Model version, reported with every score.
    pub version: String,
    /// The network; its `input_dim` is the sum of the feature widths.
    pub dcn: DcnConfig,
    /// Features in x0 order.
    pub features: Vec<FeatureSpec>,
}

/// Where a ranker's files are (the layout is the bundle format's).
pub use recsys_bundle::RankerFiles;

/// The request side of a ranking call.
#[derive(Debug, Clone, Default)]
pub struct UserContext {
    /// The user id, matched against the `user_id` feature.
    pub user_id: String,
    /// Other user-side features by name.
    pub features: HashMap<String, FeatureInput>,
}

/// Scores for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One per candidate, in request order: the combined score of a
    /// multi-objective ranker ([`Ranker::heads`]).
    pub scores: Vec<f32>,
    /// A multi-objective ranker's head scores, candidate by candidate, each
    /// candidate's in [`Ranker::heads`] order; empty for a single output.
    pub head_scores: Vec<f32>,
    /// True when the user id was not in the vocabulary.
    pub user_out_of_vocabulary: bool,
}

/// Why candidates could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// Candidates the bundle has no features for.
    #[error("item_ids: {} unknown item(s): {}", .0.len(), preview(.0))]
    UnknownItems(Vec<u64>),
    /// A request feature whose value does not fit the feature's kind.
    #[error("{0}")]
    BadFeature(String),
    /// Per-request head weights the ranker cannot take.
    #[error("{0}")]
    HeadWeights(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn preview(ids: &[u64]) -> String {
    let shown: Vec<String> = ids.iter().take(20).map(u64::to_string).collect();
    if ids.len() > 20 {
        format!("{} …", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A loaded ranker.
pub struct Ranker {
    config: RankerConfig,
    model: DcnV2,
    features: Vec<Feature>,
    /// The item side of x0, per item.
    items: ItemTable,
    /// Stored user-side values, the defaults of request features.
    users: StoredUserFeatures,
    /// How requests go through the network, chosen once at load.
    plan: ScoringPlan,
    device: Device,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("version", &self.config.version)
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, ModelError> {
    std::fs::read_to_string(path)
        .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))
}

impl Ranker {
    /// Loads and cross-checks config, weights, vocabularies and item features.
    pub fn load(files: &RankerFiles) -> Result<Self, ModelError> {
        let config: RankerConfig = serde_json::from_str(&read(&files.config)?)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", files.config.display())))?;
        let width: usize = config.features.iter().map(|f| f.dim).sum();
        if width != config.dcn.input_dim {
            return Err(ModelError::Config(format!(
                "{}: features are {width} wide, dcn.input_dim is {}",
                files.config.display(),
                config.dcn.input_dim
            )));
        }
        let device = Device::Cpu;
        let tensors = candle_core::safetensors::load(&files.weights, &device)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", files.weights.display())))?;
        let mut features = Vec::with_capacity(config.features.len());
        for spec in &config.features {
            spec.validate()
                .map_err(|why| ModelError::Config(format!("{}: {why}", files.config.display())))?;
            if spec.kind == FeatureKind::Numeric {
                features.push(Feature {
                    spec: spec.clone(),
                    vocabulary: Vocabulary::default(),
                    table: Vec::new(),
                });
                continue;
            }
            let vocabulary = Vocabulary::read(&files.bundle_dir.join(&spec.vocabulary))
                .map_err(|e| ModelError::Weights(e.to_string()))?;
            let name = format!("embedding.{}", spec.name);
            let table = tensors.get(&name).ok_or_else(|| {
                ModelError::Weights(format!("{}: no tensor {name}", files.weights.display()))
            })?;
            let expected = (vocabulary.rows(), spec.dim);
            if table.dims() != [expected.0, expected.1] {
                return Err(ModelError::Weights(format!(
                    "{}: tensor {name} is {:?}, the vocabulary and config need [{}, {}]",
                    files.weights.display(),
                    table.dims(),
                    expected.0,
                    expected.1
                )));
            }
            let table = table
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            features.push(Feature {
                spec: spec.clone(),
                vocabulary,
                table,
            });
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = DcnV2::new(&config.dcn, vb)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", files.weights.display())))?;
        let items = ItemTable::load(&files.item_features, &features)?;
        let users = match &files.user_features {
            Some(path) => StoredUserFeatures::load(path, &config.features)?,
            None => StoredUserFeatures::default(),
        };
        let (user_cols, item_cols) = columns_by_side(&features);
        let first = FirstProduct::new(&model, &user_cols, &item_cols, &items)?;
        let first_bytes = first.as_ref().map_or(0, |f| f.items.len() * 4);
        let fold = match CrossFold::table_bytes(&model, items.len()) {
            Some(bytes) if first_bytes + bytes <= FIRST_PRODUCT_BUDGET_BYTES => CrossFold::new(
                &model,
                &user_cols,
                &item_cols,
                items.values(),
                items.unknown(),
            )?,
            _ => None,
        };
        let plan = match (fold, first) {
            (Some(fold), first) => ScoringPlan::Folded { fold, first },
            (None, Some(first)) => ScoringPlan::Precomputed(first),
            (None, None) => ScoringPlan::Plain,
        };
        Ok(Self {
            config,
            model,
            features,
            items,
            users,
            plan,
            device,
        })
    }

    /// The same ranker computing the first cross product from x0 in every request,
    /// as without the per-item precomputation: for measuring what it saves.
    pub fn without_precomputation(mut self) -> Self {
        self.plan = ScoringPlan::Plain;
        self
    }

    /// The same ranker without the fold of the cross layer into the first deep
    /// layer (the precomputed first product stays): for measuring the fold, and
    /// for checking it against the plain forward pass.
    pub fn without_fold(mut self) -> Self {
        self.plan = match self.plan {
            ScoringPlan::Folded {
                first: Some(first), ..
            } => ScoringPlan::Precomputed(first),
            ScoringPlan::Folded { first: None, .. } => ScoringPlan::Plain,
            plan => plan,
        };
        self
    }

    /// Whether the item side of the first cross product is precomputed.
    pub fn precomputed(&self) -> bool {
        matches!(
            self.plan,
            ScoringPlan::Precomputed(_) | ScoringPlan::Folded { first: Some(_), .. }
        )
    }

    /// Whether large requests take the folded path ([`crate::cross_fold`]).
    pub fn folded(&self) -> bool {
        matches!(self.plan, ScoringPlan::Folded { .. })
    }

    /// The model version.
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// Items with features.
    pub fn items(&self) -> usize {
        self.items.len()
    }

    /// Users with stored user-side values.
    pub fn stored_users(&self) -> usize {
        self.users.len()
    }

    /// The item side of x0 for an item that is not in the bundle's table (or
    /// replaces its row): an item upserted while the cluster serves, with its
    /// item features by name. A feature left out is missing (row 0, or the
    /// mean); an item-side `item_id` feature defaults to the id itself.
    pub fn item_row(
        &self,
        item_id: u64,
        features: &HashMap<String, FeatureInput>,
    ) -> Result<Vec<f32>, RankError> {
        let mut row = Vec::with_capacity(self.items.width());
        let own_id = FeatureInput::Value(item_id.to_string());
        for feature in self.features.iter().filter(|f| f.spec.side == Side::Item) {
            let name = feature.spec.name.as_str();
            let input = features
                .get(name)
                .or((name == "item_id").then_some(&own_id));
            feature.encode_input(input, &mut row).map_err(|why| {
                RankError::BadFeature(format!(
                    "item {item_id}: {}",
                    why.replace("user_features[", "features[")
                ))
            })?;
        }
        Ok(row)
    }

    /// Names of the item-side features, in x0 order.
    pub fn item_feature_names(&self) -> impl Iterator<Item = &str> {
        self.features
            .iter()
            .filter(|f| f.spec.side == Side::Item)
            .map(|f| f.spec.name.as_str())
    }

    /// True when `item_id` has features.
    pub fn knows_item(&self, item_id: u64) -> bool {
        self.items.position(item_id).is_some()
    }
}

/// x0's column indices of the user-side and of the item-side features.
fn columns_by_side(features: &[Feature]) -> (Vec<u32>, Vec<u32>) {
    let (mut user_cols, mut item_cols) = (Vec::new(), Vec::new());
    let mut column = 0u32;
    for feature in features {
        let cols = column..column + feature.spec.dim as u32;
        match feature.spec.side {
            Side::User => user_cols.extend(cols),
            Side::Item => item_cols.extend(cols),
        }
        column += feature.spec.dim as u32;
    }
    (user_cols, item_cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planted::{self, PlantedInputs};

    fn planted_ranker(dir: &Path) -> Ranker {
        let inputs = PlantedInputs {
            dim: 2,
            user_ids: &["u1".into(), "u2".into()],
            user_vectors: &[1.0, 0.0, 0.0, 1.0],
            item_ids: &[10, 20, 30],
            item_vectors: &[1.0, 0.0, 0.0, 1.0, 0.6, 0.8],
            item_quality: &[9, 0, 3],
            quality_weight: 0.3,
        };
        planted::write(dir, &inputs, "batch-test").unwrap();
        Ranker::load(&recsys_bundle::RankerSpec::attached(false).files(dir)).unwrap()
    }

    #[test]
    fn a_batch_scores_as_its_requests_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = planted_ranker(dir.path());
        let user = |id: &str| UserContext {
            user_id: id.into(),
            ..Default::default()
        };
        let (u1, u2, stranger) = (user("u1"), user("u2"), user("nobody"));
        let requests: Vec<(&UserContext, &[u64])> = vec![
            (&u1, &[10, 20, 30]),
            (&u2, &[30, 99]),
            (&stranger, &[20]),
            (&u2, &[]),
            (&u1, &[30, 10]),
        ];
        let batch = ranker.score_batch(&requests, false);
        assert_eq!(batch.len(), requests.len());
        for ((user, items), batched) in requests.iter().zip(&batch) {
            match (ranker.score(user, items, false), batched) {
                (Ok(alone), Ok(batched)) => {
                    // Rows of a bigger matmul may round differently, nothing more.
                    assert_eq!(alone.scores.len(), batched.scores.len());
                    for (a, b) in alone.scores.iter().zip(&batched.scores) {
                        assert!((a - b).abs() < 1e-5, "{alone:?} vs {batched:?}");
                    }
                    assert_eq!(alone.user_out_of_vocabulary, batched.user_out_of_vocabulary);
                }
                (Err(alone), Err(batched)) => assert_eq!(alone.to_string(), batched.to_string()),
                (alone, batched) => panic!("{alone:?} vs {batched:?}"),
            }
        }
        assert!(matches!(&batch[1], Err(RankError::UnknownItems(ids)) if ids == &[99]));
        assert!(batch[2].as_ref().unwrap().user_out_of_vocabulary);
    }

    /// An item added while serving scores as a bundle item with the same
    /// features would, through whichever plan; requests without one keep theirs.
    #[test]
    fn overlay_items_score_like_bundle_items_with_their_features() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = planted_ranker(dir.path());
        let features = |item: &str, quality: &str| -> HashMap<String, FeatureInput> {
            [
                ("item_id".to_string(), FeatureInput::from(item)),
                ("quality".to_string(), FeatureInput::from(quality)),
            ]
            .into_iter()
            .collect()
        };
        // 99 is new, with 10's features; 20 is replaced by 30's features.
        let overlay: HashMap<u64, Vec<f32>> = [
            (99, ranker.item_row(99, &features("10", "9")).unwrap()),
            (20, ranker.item_row(20, &features("30", "3")).unwrap()),
        ]
        .into_iter()
        .collect();
        let user = UserContext {
            user_id: "u1".into(),
            ..Default::default()
        };
        let requests: Vec<(&UserContext, &[u64])> = vec![
            (&user, &[99, 20, 10, 30]),
            (&user, &[10, 30]),
            (&user, &[7]),
        ];
        let scored = ranker.score_batch_with(&requests, false, &overlay);
        let with = scored[0].as_ref().unwrap();
        let without = ranker.score(&user, &[10, 30], false).unwrap();
        let close = |a: f32, b: f32| (a - b).abs() < 1e-5;
        assert!(close(with.scores[0], without.scores[0]), "{with:?}");
        assert!(close(with.scores[1], without.scores[1]), "{with:?}");
        assert!(close(with.scores[2], without.scores[0]));
        assert!(close(with.scores[3], without.scores[1]));
        assert_eq!(scored[1].as_ref().unwrap().scores.len(), 2);
        assert!(matches!(&scored[2], Err(RankError::UnknownItems(ids)) if ids == &[7]));
        // A value of the wrong shape is refused, naming the item and feature.
        let bad: HashMap<String, FeatureInput> = [(
            "quality".to_string(),
            FeatureInput::Values(vec!["1".into()]),
        )]
        .into_iter()
        .collect();
        let error = ranker.item_row(5, &bad).unwrap_err().to_string();
        assert!(
            error.contains("item 5") && error.contains("features[quality]"),
            "{error}"
        );
    }
}
