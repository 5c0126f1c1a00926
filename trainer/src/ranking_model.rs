//! The DCN-V2 ranking model the trainer fits to ratings, built from the very
//! network the ranking nodes serve.
//!
//! ```text
//! x0     = [embedding(feature) | pooled embeddings | standardized number]   in config order
//! rating = recsys_model::DcnV2(x0)                                         regression head
//! ```
//!
//! Every weight lives in one candle [`VarMap`]: the feature embeddings under
//! `embedding.{feature}` and the network's tensors under the names
//! `recsys_model::dcn_v2` loads (`cross.{i}.*`, `deep.{j}.*`, `head.*`), so the
//! trained variables are the served model and [`RankingModel::export`] writes
//! them as they are.
//!
//! Initialization follows Keras's defaults, which the TFRS tutorials use:
//! embeddings uniform in ±0.05, kernels Glorot-uniform, biases zero. Values are
//! drawn from a ChaCha8 stream of the seed in tensor-name order, so the same
//! seed gives the same model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsys_model::{DcnConfig, DcnV2, Structure};
use serde::{Deserialize, Serialize};

use crate::click::Objective;
use crate::dataset::{Dataset, Interaction};
use crate::error::{Result, TrainerError};
use crate::multi_objective::TrainedHead;
use crate::ranking_features::{ColumnValues, FeatureTables, RankingFeature};
use recsys_model::{FeatureKind, Side};

/// A feature and the width of its slice of x0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureWidth {
    /// The feature.
    pub feature: RankingFeature,
    /// Embedding width (numeric features are 1 wide whatever is given).
    pub dim: usize,
}

/// The model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingModelConfig {
    /// Features in x0 order.
    pub features: Vec<FeatureWidth>,
    /// Cross layers (0: a plain MLP, TFRS's basic ranking model).
    pub cross_layers: usize,
    /// Rank of the cross weights; `None` for full rank.
    pub projection_dim: Option<usize>,
    /// How cross and deep parts combine.
    pub structure: Structure,
    /// Units of each ReLU deep layer.
    pub deep_units: Vec<usize>,
    /// What it predicts: ratings (the default, and what configs written before
    /// there was a choice mean) or clicks.
    #[serde(default)]
    pub objective: Objective,
    /// A multi-objective ranker's heads ([`crate::multi_objective`]), one per
    /// objective; empty for the single output `objective` names (which is then
    /// ignored otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<TrainedHead>,
}

impl RankingModelConfig {
    /// Width of each feature's slice.
    fn width(f: &FeatureWidth) -> usize {
        match f.feature.kind() {
            FeatureKind::Numeric => 1,
            _ => f.dim,
        }
    }

    /// The served network's config.
    pub fn dcn(&self) -> DcnConfig {
        DcnConfig {
            input_dim: self.features.iter().map(Self::width).sum(),
            cross_layers: self.cross_layers,
            projection_dim: self.projection_dim,
            diag_scale: 0.0,
            use_bias: true,
            cross_activation: recsys_model::Activation::Linear,
            structure: self.structure,
            deep_units: self.deep_units.clone(),
            deep_activation: recsys_model::Activation::Relu,
            head: self.objective.head(),
            experts: None,
            heads: self.heads.iter().map(TrainedHead::spec).collect(),
        }
    }
}

/// Keras's `RandomUniform` default bound for `Embedding`.
const EMBEDDING_BOUND: f64 = 0.05;

/// A ranking model: feature tables, embeddings and the DCN-V2.
pub struct RankingModel {
    config: RankingModelConfig,
    tables: FeatureTables,
    varmap: VarMap,
    /// Per column: its embedding table (`None` for numeric features).
    embeddings: Vec<Option<Tensor>>,
    dcn: DcnV2,
    device: Device,
}

impl std::fmt::Debug for RankingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RankingModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Interactions as entity rows and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    /// User entity rows.
    pub users: Vec<u32>,
    /// Item entity rows.
    pub items: Vec<u32>,
    /// Labels: ratings, or 0/1 clicks (a multi-objective model's click labels).
    pub ratings: Vec<f32>,
    /// A multi-objective model's star ratings (0 where unrated); empty otherwise.
    pub stars: Vec<f32>,
    /// 1 where `stars` holds a rating, 0 elsewhere; empty when `stars` is.
    pub rated: Vec<f32>,
}

impl Encoded {
    /// Interactions.
    pub fn len(&self) -> usize {
        self.ratings.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.ratings.is_empty()
    }

    /// The interactions at `picked`.
    pub fn pick(&self, picked: &[usize]) -> Self {
        Self {
            users: picked.iter().map(|&i| self.users[i]).collect(),
            items: picked.iter().map(|&i| self.items[i]).collect(),
            ratings: picked.iter().map(|&i| self.ratings[i]).collect(),
            stars: pick_from(&self.stars, picked),
            rated: pick_from(&self.rated, picked),
        }
    }
}

/// `values` at `picked`, or nothing for no values.
fn pick_from(values: &[f32], picked: &[usize]) -> Vec<f32> {
    if values.is_empty() {
        return Vec::new();
    }
    picked.iter().map(|&i| values[i]).collect()
}

impl RankingModel {
    /// A fresh model over `data`'s users, items and features, initialized from `seed`.
    pub fn new(config: RankingModelConfig, data: &Dataset, seed: u64) -> Result<Self> {
        if config.features.is_empty() {
            return Err(TrainerError::InvalidConfig {
                field: "features",
                reason: "a ranker needs at least one feature".into(),
            });
        }
        crate::multi_objective::check_heads(&config.heads)?;
        if let Some(f) = config.features.iter().find(|f| f.dim == 0) {
            return Err(TrainerError::InvalidConfig {
                field: "features",
                reason: format!("{} has width 0", f.feature.name()),
            });
        }
        let features: Vec<RankingFeature> = config.features.iter().map(|f| f.feature).collect();
        let tables = FeatureTables::build(data, &features)?;
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let mut embeddings = Vec::with_capacity(tables.columns.len());
        for (column, width) in tables.columns.iter().zip(&config.features) {
            embeddings.push(match column.feature.kind() {
                FeatureKind::Numeric => None,
                _ => Some(vb.get(
                    (column.vocabulary.rows(), width.dim),
                    &format!("embedding.{}", column.feature.name()),
                )?),
            });
        }
        let dcn = DcnV2::new(&config.dcn(), vb).map_err(|e| TrainerError::InvalidConfig {
            field: "dcn",
            reason: e.to_string(),
        })?;
        let model = Self {
            config,
            tables,
            varmap,
            embeddings,
            dcn,
            device,
        };
        model.initialize(seed)?;
        Ok(model)
    }

    /// Keras's initializers, drawn in tensor-name order from stream 0 of `seed`.
    fn initialize(&self, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in self.named_vars() {
            let dims = var.dims().to_vec();
            let bound = match dims.as_slice() {
                _ if name.starts_with("embedding.") => EMBEDDING_BOUND,
                // Glorot-uniform: √(6 / (fan_in + fan_out)); candle stores (out, in).
                [out, inp] => (6.0 / (out + inp) as f64).sqrt(),
                // Biases start at zero, as VarMap made them.
                _ => continue,
            };
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            var.set(&Tensor::from_vec(values, dims, &self.device)?)?;
        }
        Ok(())
    }

    /// Every variable with its name, in name order.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = match self.varmap.data().lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Every trainable variable, in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.named_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// The model's shape.
    pub fn config(&self) -> &RankingModelConfig {
        &self.config
    }

    /// The feature tables.
    pub fn tables(&self) -> &FeatureTables {
        &self.tables
    }

    /// Entity rows and ratings of `interactions`; unknown ids are row 0. Every
    /// interaction needs a rating, except for a multi-objective model
    /// ([`crate::multi_objective`]): there a rated interaction is a click with
    /// its stars, an unrated one a non-click.
    pub fn encode(&self, interactions: &[Interaction]) -> Result<Encoded> {
        if !self.config.heads.is_empty() {
            return Ok(self.encode_multi(interactions));
        }
        let mut encoded = Encoded::default();
        for (index, i) in interactions.iter().enumerate() {
            let rating = i.rating.ok_or(TrainerError::MissingRating { index })?;
            encoded.users.push(self.tables.users.lookup(&i.user));
            encoded.items.push(self.tables.items.lookup(&i.item));
            encoded.ratings.push(rating);
        }
        Ok(encoded)
    }

    /// x0 `[n, input_dim]` of `n` (user row, item row) pairs.
    pub fn x0(&self, users: &[u32], items: &[u32]) -> Result<Tensor> {
        let n = users.len();
        let mut parts = Vec::with_capacity(self.tables.columns.len());
        for (column, embedding) in self.tables.columns.iter().zip(&self.embeddings) {
            let entities = match column.feature.side() {
                Side::User => users,
                Side::Item => items,
            };
            let part = match (&column.values, embedding) {
                (ColumnValues::Rows(rows), Some(table)) => {
                    let picked: Vec<u32> = entities.iter().map(|&e| rows[e as usize]).collect();
                    table.index_select(&Tensor::from_vec(picked, n, &self.device)?, 0)?
                }
                (ColumnValues::Lists(padded), Some(table)) => {
                    let (rows, weights) = padded.gather(entities);
                    let dim = table.dim(1)?;
                    let picked = Tensor::from_vec(rows, n * padded.width, &self.device)?;
                    let weights = Tensor::from_vec(weights, (n, padded.width, 1), &self.device)?;
                    table
                        .index_select(&picked, 0)?
                        .reshape((n, padded.width, dim))?
                        .broadcast_mul(&weights)?
                        .sum(1)?
                }
                (ColumnValues::Numbers { standardized, .. }, _) => {
                    let values: Vec<f32> =
                        entities.iter().map(|&e| standardized[e as usize]).collect();
                    Tensor::from_vec(values, (n, 1), &self.device)?
                }
                _ => {
                    return Err(TrainerError::InvalidConfig {
                        field: "features",
                        reason: format!("{} has no embedding table", column.feature.name()),
                    });
                }
            };
            parts.push(part);
        }
        Ok(Tensor::cat(&parts, D::Minus1)?)
    }

    /// Raw outputs `[n, heads]` (the rating, or the logit, per head) of
    /// (user row, item row) pairs, differentiable.
    pub fn forward_raw(&self, users: &[u32], items: &[u32]) -> Result<Tensor> {
        Ok(self.dcn.forward_raw(&self.x0(users, items)?)?)
    }

    /// Predicted ratings (or logits) `[n]` of (user row, item row) pairs,
    /// differentiable: the single output, or a multi-objective model's first head.
    pub fn forward(&self, users: &[u32], items: &[u32]) -> Result<Tensor> {
        Ok(self
            .forward_raw(users, items)?
            .narrow(1, 0, 1)?
            .squeeze(1)?)
    }

    /// The served scores of (user id, item id) pairs, in batches of 4096:
    /// predicted ratings, click probabilities for the click objective, the
    /// combined score of a multi-objective model.
    pub fn predict(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>> {
        use candle_core::Module;
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(4096) {
            let x0 = self.x0_of_ids(chunk)?;
            out.extend(self.dcn.forward(&x0)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Each head's served scores of (user id, item id) pairs, head by head (a
    /// single output is one head), in batches of 4096.
    pub fn predict_heads(&self, pairs: &[(&str, &str)]) -> Result<Vec<Vec<f32>>> {
        let heads = self.dcn.outputs();
        let mut out = vec![Vec::with_capacity(pairs.len()); heads];
        for chunk in pairs.chunks(4096) {
            let x0 = self.x0_of_ids(chunk)?;
            let scores = self.dcn.head_scores(&x0)?.to_vec2::<f32>()?;
            for row in scores {
                for (head, score) in out.iter_mut().zip(row) {
                    head.push(score);
                }
            }
        }
        Ok(out)
    }

    /// x0 of (user id, item id) pairs; unknown ids are row 0.
    fn x0_of_ids(&self, pairs: &[(&str, &str)]) -> Result<Tensor> {
        let users: Vec<u32> = pairs
            .iter()
            .map(|(u, _)| self.tables.users.lookup(u))
            .collect();
        let items: Vec<u32> = pairs
            .iter()
            .map(|(_, i)| self.tables.items.lookup(i))
            .collect();
        self.x0(&users, &items)
    }

    /// A copy of every variable's value, to [`RankingModel::restore`] later.
    pub fn snapshot(&self) -> Result<HashMap<String, Tensor>> {
        self.named_vars()
            .into_iter()
            .map(|(name, var)| Ok((name, var.as_tensor().copy()?)))
            .collect()
    }

    /// Sets every variable back to a [`RankingModel::snapshot`].
    pub fn restore(&self, snapshot: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in self.named_vars() {
            let value = snapshot
                .get(&name)
                .ok_or_else(|| TrainerError::InvalidConfig {
                    field: "snapshot",
                    reason: format!("no tensor {name}"),
                })?;
            var.set(value)?;
        }
        Ok(())
    }

    /// Writes the model in the ranker layout (see [`crate::ranking_export`]).
    pub fn export(&self, dir: &Path, version: &str) -> Result<()> {
        crate::ranking_export::export(self, dir, version)
    }

    pub(crate) fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}
