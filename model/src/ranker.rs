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
//! ```
//!
//! Unknown values map to row 0, as Keras `StringLookup(num_oov_indices=1)` does, so
//! a user the ranker has never seen is still scored, and the answer says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::{DcnConfig, DcnV2, ModelError};

/// Which side of the request a feature comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// From the request (`user_id`, `user_features`).
    User,
    /// From the bundle's item feature table.
    Item,
}

/// One categorical feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Name: `user_id` and `item_id` are the ids themselves; others are looked up.
    pub name: String,
    /// Where its value comes from.
    pub side: Side,
    /// Vocabulary file, relative to the bundle.
    pub vocabulary: String,
    /// Embedding width.
    pub dim: usize,
}

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

/// Where a ranker's files are.
#[derive(Debug, Clone)]
pub struct RankerFiles {
    /// The bundle directory (vocabulary paths are relative to it).
    pub bundle_dir: PathBuf,
    /// `config.json`.
    pub config: PathBuf,
    /// `weights.safetensors`.
    pub weights: PathBuf,
    /// `item_features.tsv`.
    pub item_features: PathBuf,
}

/// The request side of a ranking call.
#[derive(Debug, Clone, Default)]
pub struct UserContext {
    /// The user id, matched against the `user_id` feature.
    pub user_id: String,
    /// Other user-side features by name.
    pub features: HashMap<String, String>,
}

/// Scores for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One per candidate, in request order.
    pub scores: Vec<f32>,
    /// True when the user id was not in the vocabulary.
    pub user_out_of_vocabulary: bool,
}

/// Why candidates could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// Candidates the bundle has no features for.
    #[error("item_ids: {} unknown item(s): {}", .0.len(), preview(.0))]
    UnknownItems(Vec<u64>),
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

struct Feature {
    spec: FeatureSpec,
    rows: HashMap<String, u32>,
    table: Vec<f32>,
}

/// A loaded ranker.
pub struct Ranker {
    config: RankerConfig,
    model: DcnV2,
    features: Vec<Feature>,
    /// Row of each item feature for every item, in feature order of the item side.
    item_rows: HashMap<u64, Vec<u32>>,
    device: Device,
}

impl std::fmt::Debug for Ranker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ranker")
            .field("version", &self.config.version)
            .field("items", &self.item_rows.len())
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
            let vocabulary = read(&files.bundle_dir.join(&spec.vocabulary))?;
            let rows: HashMap<String, u32> = vocabulary
                .lines()
                .enumerate()
                .map(|(i, value)| (value.to_string(), i as u32 + 1))
                .collect();
            let name = format!("embedding.{}", spec.name);
            let table = tensors.get(&name).ok_or_else(|| {
                ModelError::Weights(format!("{}: no tensor {name}", files.weights.display()))
            })?;
            let expected = (rows.len() + 1, spec.dim);
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
                rows,
                table,
            });
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = DcnV2::new(&config.dcn, vb)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", files.weights.display())))?;
        let item_rows = load_item_features(&files.item_features, &features)?;
        Ok(Self {
            config,
            model,
            features,
            item_rows,
            device,
        })
    }

    /// The model version.
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// Items with features.
    pub fn items(&self) -> usize {
        self.item_rows.len()
    }

    /// True when `item_id` has features.
    pub fn knows_item(&self, item_id: u64) -> bool {
        self.item_rows.contains_key(&item_id)
    }

    /// Scores `items` for `user` in one batched forward pass. Blocking CPU work.
    /// Items without features are refused, or scored with out-of-vocabulary
    /// features when `allow_unknown_items`.
    pub fn score(
        &self,
        user: &UserContext,
        items: &[u64],
        allow_unknown_items: bool,
    ) -> Result<Scores, RankError> {
        // One look-up per candidate, shared by the unknown-item check and x0.
        let candidate_rows: Vec<Option<&Vec<u32>>> =
            items.iter().map(|id| self.item_rows.get(id)).collect();
        if !allow_unknown_items {
            let unknown: Vec<u64> = items
                .iter()
                .zip(&candidate_rows)
                .filter(|(_, rows)| rows.is_none())
                .map(|(id, _)| *id)
                .collect();
            if !unknown.is_empty() {
                return Err(RankError::UnknownItems(unknown));
            }
        }
        let unknown_item: Vec<u32> = Vec::new();
        if items.is_empty() {
            return Ok(Scores {
                scores: Vec::new(),
                user_out_of_vocabulary: false,
            });
        }
        // User-side rows are the same for every candidate: resolve them once.
        let mut user_oov = false;
        let user_rows: Vec<u32> = self
            .features
            .iter()
            .map(|feature| {
                if feature.spec.side == Side::Item {
                    return 0;
                }
                let value = if feature.spec.name == "user_id" {
                    Some(user.user_id.as_str())
                } else {
                    user.features.get(&feature.spec.name).map(String::as_str)
                };
                let row = value
                    .and_then(|v| feature.rows.get(v))
                    .copied()
                    .unwrap_or(0);
                if feature.spec.name == "user_id" && row == 0 {
                    user_oov = true;
                }
                row
            })
            .collect();
        let dim = self.config.dcn.input_dim;
        let mut x0 = Vec::with_capacity(items.len() * dim);
        for rows in &candidate_rows {
            let mut item_rows = rows.unwrap_or(&unknown_item).iter();
            for (feature, user_row) in self.features.iter().zip(&user_rows) {
                let row = match feature.spec.side {
                    Side::User => *user_row,
                    Side::Item => item_rows.next().copied().unwrap_or(0),
                };
                let start = row as usize * feature.spec.dim;
                x0.extend_from_slice(&feature.table[start..start + feature.spec.dim]);
            }
        }
        let x0 =
            Tensor::from_vec(x0, (items.len(), dim), &self.device).map_err(ModelError::from)?;
        let scores = self
            .model
            .score(&x0)
            .and_then(|s| s.to_vec1::<f32>())
            .map_err(ModelError::from)?;
        Ok(Scores {
            scores,
            user_out_of_vocabulary: user_oov,
        })
    }
}

/// Reads `item_id<TAB>value...` rows into embedding rows of the item features.
fn load_item_features(
    path: &Path,
    features: &[Feature],
) -> Result<HashMap<u64, Vec<u32>>, ModelError> {
    let text = read(path)?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let item_features: Vec<&Feature> = features
        .iter()
        .filter(|f| f.spec.side == Side::Item)
        .collect();
    let expected: Vec<&str> = std::iter::once("item_id")
        .chain(item_features.iter().map(|f| f.spec.name.as_str()))
        .collect();
    if header != expected {
        return Err(ModelError::Weights(format!(
            "{}: header is {header:?}, the config needs {expected:?}",
            path.display()
        )));
    }
    let mut rows = HashMap::new();
    for (number, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split('\t').collect();
        let bad = |why: &str| {
            ModelError::Weights(format!("{}: line {}: {why}", path.display(), number + 2))
        };
        if fields.len() != expected.len() {
            return Err(bad(&format!(
                "{} fields, expected {}",
                fields.len(),
                expected.len()
            )));
        }
        let id: u64 = fields[0]
            .parse()
            .map_err(|_| bad("item_id is not an unsigned integer"))?;
        let feature_rows = item_features
            .iter()
            .zip(&fields[1..])
            .map(|(feature, value)| feature.rows.get(*value).copied().unwrap_or(0))
            .collect();
        rows.insert(id, feature_rows);
    }
    Ok(rows)
}
