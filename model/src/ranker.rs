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

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use recsys_bundle::Vocabulary;
use serde::{Deserialize, Serialize};

use crate::cross_fold::CrossFold;
use crate::features::{Feature, ItemTable};
use crate::stored_user_features::StoredUserFeatures;
use crate::{DcnConfig, DcnV2, ModelError};

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
    /// A request feature whose value does not fit the feature's kind.
    #[error("{0}")]
    BadFeature(String),
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
    /// The item side of the first cross product, per item, when precomputed.
    first: Option<FirstProduct>,
    /// The first cross layer folded into the first deep layer, when the model has
    /// that shape and the per-item table fits.
    fold: Option<CrossFold>,
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
        Ok(Self {
            config,
            model,
            features,
            items,
            users,
            first,
            fold,
            device,
        })
    }

    /// The same ranker computing the first cross product from x0 in every request,
    /// as without the per-item precomputation: for measuring what it saves.
    pub fn without_precomputation(mut self) -> Self {
        self.first = None;
        self.fold = None;
        self
    }

    /// The same ranker without the fold of the cross layer into the first deep
    /// layer (the precomputed first product stays): for measuring the fold, and
    /// for checking it against the plain forward pass.
    pub fn without_fold(mut self) -> Self {
        self.fold = None;
        self
    }

    /// Whether the item side of the first cross product is precomputed.
    pub fn precomputed(&self) -> bool {
        self.first.is_some()
    }

    /// Whether large requests take the folded path ([`crate::cross_fold`]).
    pub fn folded(&self) -> bool {
        self.fold.is_some()
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

    /// True when `item_id` has features.
    pub fn knows_item(&self, item_id: u64) -> bool {
        self.items.position(item_id).is_some()
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
        let mut batch = Batch::default();
        let user_oov = self.encode(user, items, allow_unknown_items, &mut batch)?;
        let scores = self.forward(batch)?;
        Ok(Scores {
            scores,
            user_out_of_vocabulary: user_oov,
        })
    }

    /// Scores several requests in one forward pass: concurrent small requests cost
    /// one pass's fixed overhead instead of one each. A request that cannot be
    /// scored (unknown items, a bad feature value) gets its own error and leaves
    /// the others alone.
    pub fn score_batch(
        &self,
        requests: &[(&UserContext, &[u64])],
        allow_unknown_items: bool,
    ) -> Vec<Result<Scores, RankError>> {
        let mut batch = Batch::default();
        let mut encoded = Vec::with_capacity(requests.len());
        for (user, items) in requests {
            let before = batch.rows;
            match self.encode(user, items, allow_unknown_items, &mut batch) {
                Ok(oov) => encoded.push(Ok((before, items.len(), oov))),
                Err(error) => encoded.push(Err(error)),
            }
        }
        let scores = match self.forward(batch) {
            Ok(scores) => scores,
            Err(error) => {
                let reason = error.to_string();
                return encoded
                    .into_iter()
                    .map(|e| {
                        e.and_then(|_| Err(RankError::Model(ModelError::Weights(reason.clone()))))
                    })
                    .collect();
            }
        };
        encoded
            .into_iter()
            .map(|e| {
                e.map(|(start, n, oov)| Scores {
                    scores: scores[start..start + n].to_vec(),
                    user_out_of_vocabulary: oov,
                })
            })
            .collect()
    }

    /// Appends the rows of `items` for `user` to `batch` (nothing on error);
    /// returns whether the user id was out of vocabulary.
    fn encode(
        &self,
        user: &UserContext,
        items: &[u64],
        allow_unknown_items: bool,
        batch: &mut Batch,
    ) -> Result<bool, RankError> {
        // One look-up per candidate, shared by the unknown-item check and x0.
        let candidates: Vec<Option<usize>> =
            items.iter().map(|&id| self.items.position(id)).collect();
        if !allow_unknown_items {
            let unknown: Vec<u64> = items
                .iter()
                .zip(&candidates)
                .filter(|(_, row)| row.is_none())
                .map(|(id, _)| *id)
                .collect();
            if !unknown.is_empty() {
                return Err(RankError::UnknownItems(unknown));
            }
        }
        // The user side is the same for every candidate: encode it once, and copy
        // it between the item-side slices.
        let mut user_oov = false;
        let mut user_side = Vec::new();
        for feature in self.features.iter().filter(|f| f.spec.side == Side::User) {
            let id;
            let name = feature.spec.name.as_str();
            // A value in the request wins over the stored one.
            let input = if name == "user_id" {
                id = FeatureInput::Value(user.user_id.clone());
                Some(&id)
            } else {
                user.features
                    .get(name)
                    .or_else(|| self.users.get(&user.user_id, name))
            };
            let oov = feature
                .encode_input(input, &mut user_side)
                .map_err(RankError::BadFeature)?;
            if feature.spec.name == "user_id" && oov {
                user_oov = true;
            }
        }
        if items.is_empty() {
            return Ok(user_oov);
        }
        // On error the batch is put back as it was, so the other requests in it
        // still score.
        let lengths = (batch.x0.len(), batch.first.len(), batch.pre.len());
        let result = match (&self.fold, &self.first) {
            (Some(fold), _) if fold.pays_for(items.len()) => {
                let mut rows = Vec::with_capacity(items.len() * self.items.width());
                for position in &candidates {
                    rows.extend_from_slice(self.item_side(*position));
                }
                fold.append(&user_side, rows, &candidates, &mut batch.pre)
            }
            (Some(_), _) => self.unfolded_first_deep(&user_side, &candidates, &mut batch.pre),
            (None, first) => {
                self.x0_rows(&user_side, &candidates, &mut batch.x0);
                first.as_ref().map_or(Ok(()), |first| {
                    first.append(&user_side, &candidates, &mut batch.first)
                })
            }
        };
        if let Err(error) = result {
            batch.x0.truncate(lengths.0);
            batch.first.truncate(lengths.1);
            batch.pre.truncate(lengths.2);
            return Err(error.into());
        }
        batch.rows += items.len();
        Ok(user_oov)
    }

    /// The item side of x0 at a table position (`None`: the unknown row).
    fn item_side(&self, position: Option<usize>) -> &[f32] {
        position.map_or(self.items.unknown(), |p| self.items.row(p))
    }

    /// Appends the x0 rows of `candidates` to `x0`: the user side and each
    /// candidate's item side, interleaved in feature order.
    fn x0_rows(&self, user_side: &[f32], candidates: &[Option<usize>], x0: &mut Vec<f32>) {
        x0.reserve(candidates.len() * self.config.dcn.input_dim);
        for position in candidates {
            let item_side = self.item_side(*position);
            let (mut user_at, mut item_at) = (0, 0);
            for feature in &self.features {
                let width = feature.spec.dim;
                match feature.spec.side {
                    Side::User => {
                        x0.extend_from_slice(&user_side[user_at..user_at + width]);
                        user_at += width;
                    }
                    Side::Item => {
                        x0.extend_from_slice(&item_side[item_at..item_at + width]);
                        item_at += width;
                    }
                }
            }
        }
    }

    /// The first deep layer's pre-activation for a request too small to fold, by
    /// the plain forward pass (with the precomputed first product when there is one).
    fn unfolded_first_deep(
        &self,
        user_side: &[f32],
        candidates: &[Option<usize>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let dim = self.config.dcn.input_dim;
        let mut x0 = Vec::new();
        self.x0_rows(user_side, candidates, &mut x0);
        let x0 = Tensor::from_vec(x0, (candidates.len(), dim), &self.device)?;
        let first = match (&self.first, self.model.first_cross()) {
            (Some(first), _) => {
                let mut product = Vec::new();
                first.append(user_side, candidates, &mut product)?;
                Tensor::from_vec(product, (candidates.len(), first.out), &self.device)?
            }
            (None, Some(layer)) => x0.matmul(&layer.first_weight().t()?)?,
            (None, None) => {
                return Err(ModelError::Config(
                    "a folded ranker has a plain first cross layer".into(),
                ));
            }
        };
        let pre = self.model.first_deep_from(&x0, &first)?;
        out.extend(pre.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// One forward pass over every row of `batch`.
    fn forward(&self, batch: Batch) -> Result<Vec<f32>, ModelError> {
        if batch.rows == 0 {
            return Ok(Vec::new());
        }
        if let Some(fold) = &self.fold {
            let pre = Tensor::from_vec(batch.pre, (batch.rows, fold.units()), &self.device)?;
            return Ok(self.model.score_from_first_deep(&pre)?.to_vec1::<f32>()?);
        }
        let dim = self.config.dcn.input_dim;
        let x0 = Tensor::from_vec(batch.x0, (batch.rows, dim), &self.device)?;
        let scores = match &self.first {
            Some(first) => {
                let product = Tensor::from_vec(batch.first, (batch.rows, first.out), &self.device)?;
                self.model.score_from(&x0, &product)?
            }
            None => self.model.score(&x0)?,
        };
        Ok(scores.to_vec1::<f32>()?)
    }
}

/// Rows of one forward pass: x0 and, when precomputed, the first cross product;
/// or, for a folded ranker, the first deep layer's pre-activation.
#[derive(Debug, Default)]
struct Batch {
    rows: usize,
    x0: Vec<f32>,
    first: Vec<f32>,
    pre: Vec<f32>,
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

/// Largest precomputed first product kept per ranker; a bigger catalogue scores
/// without it.
const FIRST_PRODUCT_BUDGET_BYTES: usize = 512 << 20;

/// The first cross layer's first product split by x0's columns. The product
/// (`W x0` at full rank, `U x0` at low rank) is linear, so
/// `W x0 = W_user x0_user + W_item x0_item`: the item term is computed once per
/// item at load and the user term once per request, which leaves the request a
/// gather and an add where it had an `(n, dim) × (dim, out)` matmul (the hint of
/// the ranking issue; one of the model's three largest matmuls in the TFRS
/// tutorial).
#[derive(Debug)]
struct FirstProduct {
    /// `[items, out]`, rows parallel to the item table's.
    items: Vec<f32>,
    /// The row of an item the table lacks.
    unknown: Vec<f32>,
    out: usize,
    /// The product's weight on the user-side columns, `(out, user width)`; `None`
    /// when every feature is the item's.
    user_weight: Option<Tensor>,
}

impl FirstProduct {
    fn new(
        model: &DcnV2,
        user_cols: &[u32],
        item_cols: &[u32],
        items: &ItemTable,
    ) -> Result<Option<Self>, ModelError> {
        let Some(layer) = model.first_cross() else {
            return Ok(None);
        };
        let weight = layer.first_weight();
        let (out, _dim) = weight.dims2()?;
        if (items.len() + 1).saturating_mul(out).saturating_mul(4) > FIRST_PRODUCT_BUDGET_BYTES {
            return Ok(None);
        }
        let device = weight.device();
        let columns = |cols: &[u32]| -> candle_core::Result<Option<Tensor>> {
            if cols.is_empty() {
                return Ok(None);
            }
            let n = cols.len();
            let picked = weight.index_select(&Tensor::from_slice(cols, n, device)?, 1)?;
            Ok(Some(picked))
        };
        let user_weight = columns(user_cols)?.map(|w| w.contiguous()).transpose()?;
        let item_weight_t = columns(item_cols)?
            .map(|w| w.t().and_then(|t| t.contiguous()))
            .transpose()?;
        let width = items.width();
        let project = |values: &[f32], rows: usize| -> candle_core::Result<Vec<f32>> {
            match &item_weight_t {
                Some(w) if rows > 0 => Tensor::from_slice(values, (rows, width), device)?
                    .matmul(w)?
                    .flatten_all()?
                    .to_vec1::<f32>(),
                _ => Ok(vec![0.0; rows * out]),
            }
        };
        Ok(Some(Self {
            items: project(items.values(), items.len())?,
            unknown: project(items.unknown(), 1)?,
            out,
            user_weight,
        }))
    }

    /// Appends `[candidates, out]` to `out`: each candidate's item term plus the
    /// request's user term.
    fn append(
        &self,
        user_side: &[f32],
        candidates: &[Option<usize>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let user_term = match &self.user_weight {
            None => vec![0.0; self.out],
            Some(weight) => {
                let user = Tensor::from_slice(user_side, (user_side.len(), 1), weight.device())?;
                weight.matmul(&user)?.flatten_all()?.to_vec1::<f32>()?
            }
        };
        out.reserve(candidates.len() * self.out);
        for position in candidates {
            let item_term = match position {
                Some(p) => &self.items[p * self.out..(p + 1) * self.out],
                None => &self.unknown[..],
            };
            out.extend(item_term.iter().zip(&user_term).map(|(i, u)| i + u));
        }
        Ok(())
    }
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
}
