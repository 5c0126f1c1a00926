//! Scoring: a request's rows encoded for the plan chosen at load, and one
//! forward pass over a batch of them.
//!
//! The plan is one value ([`ScoringPlan`]) decided once from the model's shape
//! and the catalog's size, so every request of a ranker takes the same path and
//! the paths cannot be mixed: the plain forward pass; the first cross product
//! from a per-item table (`FirstProduct`); or, for the TFRS tutorial's shape,
//! the cross layer folded into the first deep layer ([`crate::cross_fold`]).

use std::collections::HashMap;

use candle_core::Tensor;

use super::{FeatureInput, RankError, Ranker, Scores, Side, UserContext};
use crate::cross_fold::CrossFold;
use crate::features::ItemTable;
use crate::{CrossThenDeep, DcnV2, ModelError};

/// How a ranker's requests go through the network.
#[derive(Debug)]
pub(super) enum ScoringPlan {
    /// x0 through the whole network: DCN-Mix first layers, or catalogs too large
    /// for the per-item tables.
    Plain,
    /// The first cross layer's product from a per-item table plus a per-request
    /// user term, then the network from there.
    Precomputed(FirstProduct),
    /// One linear cross layer then deep layers: the cross layer folded into the
    /// first deep layer for requests large enough to pay for it; smaller ones
    /// take the first deep layer unfolded (from the per-item product when it fit).
    Folded {
        /// The fold's per-item and per-request tables.
        fold: CrossFold,
        /// The per-item first product for small requests.
        first: Option<FirstProduct>,
    },
}

impl Ranker {
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
        let (scores, head_scores) = self.split_heads(self.forward(batch)?);
        Ok(Scores {
            scores,
            head_scores,
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
        let heads = self.model.outputs();
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
                e.map(|(start, n, oov)| {
                    let (scores, head_scores) =
                        self.split_heads(scores[start * heads..(start + n) * heads].to_vec());
                    Scores {
                        scores,
                        head_scores,
                        user_out_of_vocabulary: oov,
                    }
                })
            })
            .collect()
    }

    /// [`Self::score_batch`] with the items upserted since the bundle was built:
    /// `overlay` maps an id to its item-side row ([`Ranker::item_row`]) and
    /// wins over the bundle's table. The per-item tables of the precomputed and
    /// folded plans hold the bundle's items only, so a request with an overlay
    /// item takes the plain forward pass (the reference the other plans are
    /// checked against, equal up to rounding); the others keep their plan.
    pub fn score_batch_with(
        &self,
        requests: &[(&UserContext, &[u64])],
        allow_unknown_items: bool,
        overlay: &HashMap<u64, Vec<f32>>,
    ) -> Vec<Result<Scores, RankError>> {
        if overlay.is_empty() {
            return self.score_batch(requests, allow_unknown_items);
        }
        let plain: Vec<bool> = requests
            .iter()
            .map(|(_, items)| items.iter().any(|id| overlay.contains_key(id)))
            .collect();
        if !plain.contains(&true) {
            return self.score_batch(requests, allow_unknown_items);
        }
        let batched: Vec<(&UserContext, &[u64])> = requests
            .iter()
            .zip(&plain)
            .filter(|(_, plain)| !**plain)
            .map(|(request, _)| *request)
            .collect();
        let mut batched = self.score_batch(&batched, allow_unknown_items).into_iter();
        (0..requests.len())
            .map(|i| {
                if plain[i] {
                    let (user, items) = requests[i];
                    self.score_plain(user, items, allow_unknown_items, overlay)
                } else {
                    batched.next().unwrap_or_else(|| {
                        Err(RankError::Model(ModelError::Config(
                            "a batched request lost its scores".into(),
                        )))
                    })
                }
            })
            .collect()
    }

    /// One request through the plain forward pass, items looked up in
    /// `overlay` first.
    fn score_plain(
        &self,
        user: &UserContext,
        items: &[u64],
        allow_unknown_items: bool,
        overlay: &HashMap<u64, Vec<f32>>,
    ) -> Result<Scores, RankError> {
        let sides: Vec<Option<&[f32]>> = items
            .iter()
            .map(|id| {
                overlay
                    .get(id)
                    .map(Vec::as_slice)
                    .or_else(|| self.items.position(*id).map(|p| self.items.row(p)))
            })
            .collect();
        if !allow_unknown_items {
            let unknown: Vec<u64> = items
                .iter()
                .zip(&sides)
                .filter(|(_, side)| side.is_none())
                .map(|(id, _)| *id)
                .collect();
            if !unknown.is_empty() {
                return Err(RankError::UnknownItems(unknown));
            }
        }
        let (user_side, user_oov) = self.user_side(user)?;
        if items.is_empty() {
            return Ok(Scores {
                scores: Vec::new(),
                head_scores: Vec::new(),
                user_out_of_vocabulary: user_oov,
            });
        }
        let mut x0 = Vec::new();
        self.x0_rows_from(
            &user_side,
            sides
                .iter()
                .map(|side| side.unwrap_or(self.items.unknown())),
            &mut x0,
        );
        let dim = self.config.dcn.input_dim;
        let x0 =
            Tensor::from_vec(x0, (items.len(), dim), &self.device).map_err(ModelError::from)?;
        let flat = self
            .model
            .head_scores(&x0)
            .and_then(|scores| scores.flatten_all()?.to_vec1::<f32>())
            .map_err(ModelError::from)?;
        let (scores, head_scores) = self.split_heads(flat);
        Ok(Scores {
            scores,
            head_scores,
            user_out_of_vocabulary: user_oov,
        })
    }

    /// The user side of x0 for `user`, and whether the user id was out of
    /// vocabulary.
    fn user_side(&self, user: &UserContext) -> Result<(Vec<f32>, bool), RankError> {
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
        Ok((user_side, user_oov))
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
        let (user_side, user_oov) = self.user_side(user)?;
        if items.is_empty() {
            return Ok(user_oov);
        }
        // On error the batch is put back as it was, so the other requests in it
        // still score.
        let lengths = (batch.x0.len(), batch.first.len(), batch.pre.len());
        let result = match &self.plan {
            ScoringPlan::Folded { fold, .. } if fold.pays_for(items.len()) => {
                let mut rows = Vec::with_capacity(items.len() * self.items.width());
                for position in &candidates {
                    rows.extend_from_slice(self.item_side(*position));
                }
                fold.append(&user_side, rows, &candidates, &mut batch.pre)
            }
            ScoringPlan::Folded { first, .. } => {
                self.unfolded_first_deep(first.as_ref(), &user_side, &candidates, &mut batch.pre)
            }
            ScoringPlan::Precomputed(first) => {
                self.x0_rows(&user_side, &candidates, &mut batch.x0);
                first.append(&user_side, &candidates, &mut batch.first)
            }
            ScoringPlan::Plain => {
                self.x0_rows(&user_side, &candidates, &mut batch.x0);
                Ok(())
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
        self.x0_rows_from(
            user_side,
            candidates.iter().map(|position| self.item_side(*position)),
            x0,
        );
    }

    /// [`Self::x0_rows`] from the item-side rows themselves.
    fn x0_rows_from<'a>(
        &self,
        user_side: &[f32],
        item_sides: impl Iterator<Item = &'a [f32]>,
        x0: &mut Vec<f32>,
    ) {
        for item_side in item_sides {
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
        first: Option<&FirstProduct>,
        user_side: &[f32],
        candidates: &[Option<usize>],
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let tail = self.cross_then_deep()?;
        let dim = self.config.dcn.input_dim;
        let mut x0 = Vec::new();
        self.x0_rows(user_side, candidates, &mut x0);
        let x0 = Tensor::from_vec(x0, (candidates.len(), dim), &self.device)?;
        let product = match first {
            Some(first) => {
                let mut product = Vec::new();
                first.append(user_side, candidates, &mut product)?;
                Tensor::from_vec(product, (candidates.len(), first.out), &self.device)?
            }
            None => x0.matmul(&tail.cross().first_weight().t()?)?,
        };
        let pre = tail.first_deep_from(&x0, &product)?;
        out.extend(pre.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }

    /// The model's view for the folded plan, which [`Ranker::load`] chooses only
    /// for a model of that shape.
    fn cross_then_deep(&self) -> Result<CrossThenDeep<'_>, ModelError> {
        self.model.single_cross_then_deep().ok_or_else(|| {
            ModelError::Config(
                "the folded plan needs one linear cross layer then deep layers".into(),
            )
        })
    }

    /// One forward pass over every row of `batch`, as the plan encoded them:
    /// `(rows, heads)` head scores, row-major.
    fn forward(&self, batch: Batch) -> Result<Vec<f32>, ModelError> {
        if batch.rows == 0 {
            return Ok(Vec::new());
        }
        let dim = self.config.dcn.input_dim;
        let scores = match &self.plan {
            ScoringPlan::Folded { fold, .. } => {
                let pre = Tensor::from_vec(batch.pre, (batch.rows, fold.units()), &self.device)?;
                self.cross_then_deep()?.head_scores_from_first_deep(&pre)?
            }
            ScoringPlan::Precomputed(first) => {
                let view = self.model.first_cross().ok_or_else(|| {
                    ModelError::Config(
                        "the precomputed plan needs a plain first cross layer".into(),
                    )
                })?;
                let x0 = Tensor::from_vec(batch.x0, (batch.rows, dim), &self.device)?;
                let product = Tensor::from_vec(batch.first, (batch.rows, first.out), &self.device)?;
                view.head_scores_from(&x0, &product)?
            }
            ScoringPlan::Plain => {
                let x0 = Tensor::from_vec(batch.x0, (batch.rows, dim), &self.device)?;
                self.model.head_scores(&x0)?
            }
        };
        Ok(scores.flatten_all()?.to_vec1::<f32>()?)
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

/// Largest precomputed first product kept per ranker; a bigger catalogue scores
/// without it.
pub(super) const FIRST_PRODUCT_BUDGET_BYTES: usize = 512 << 20;

/// The first cross layer's first product split by x0's columns. The product
/// (`W x0` at full rank, `U x0` at low rank) is linear, so
/// `W x0 = W_user x0_user + W_item x0_item`: the item term is computed once per
/// item at load and the user term once per request, which leaves the request a
/// gather and an add where it had an `(n, dim) × (dim, out)` matmul (the hint of
/// the ranking issue; one of the model's three largest matmuls in the TFRS
/// tutorial).
#[derive(Debug)]
pub(super) struct FirstProduct {
    /// `[items, out]`, rows parallel to the item table's.
    pub(super) items: Vec<f32>,
    /// The row of an item the table lacks.
    unknown: Vec<f32>,
    out: usize,
    /// The product's weight on the user-side columns, `(out, user width)`; `None`
    /// when every feature is the item's.
    user_weight: Option<Tensor>,
}

impl FirstProduct {
    pub(super) fn new(
        model: &DcnV2,
        user_cols: &[u32],
        item_cols: &[u32],
        items: &ItemTable,
    ) -> Result<Option<Self>, ModelError> {
        let Some(view) = model.first_cross() else {
            return Ok(None);
        };
        let weight = view.layer().first_weight();
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
