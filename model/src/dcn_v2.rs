//! DCN-V2: cross layers, a deep MLP, and a head, in candle.
//!
//! The cross layer is `tfrs.layers.dcn.Cross` (TFRS 0.7.7, `dcn.py` l.170-186):
//!
//! ```text
//! prod    = act(W x + b)              full rank: one Dense(dim)
//!         = act(V (U x) + b)          low rank: U is Dense(r) without bias, V is Dense(dim)
//! prod   += diag_scale * x            when diag_scale > 0, after the activation
//! x_next  = x0 ⊙ prod + x
//! ```
//!
//! `use_bias` applies to W (full rank) or V (low rank); U never has a bias. The
//! activation is TFRS's `preactivation`, applied to the Dense output.
//!
//! Weights are stored in candle's `Linear` layout, `(out, in)` (Keras stores
//! `(in, out)`; [`crate::keras`] converts). Tensor names:
//!
//! | tensor | shape |
//! |---|---|
//! | `cross.{i}.weight` (full rank) | `(dim, dim)` |
//! | `cross.{i}.u`, `cross.{i}.v` (low rank) | `(r, dim)`, `(dim, r)` |
//! | `cross.{i}.bias` (when `use_bias`) | `(dim)` |
//! | `deep.{j}.weight`, `deep.{j}.bias` | `(units_j, in_j)`, `(units_j)` |
//! | `head.weight`, `head.bias` | `(heads, in)`, `(heads)` |
//!
//! With `experts` set, every cross layer is a DCN-Mix layer ([`crate::dcn_mix`]).
//!
//! A multi-objective model (TFRS's multitask tutorial: one shared network, one
//! output per task) declares its outputs in `heads`; they share everything up
//! to the head, which is one `Linear` with a row per head, so the extra heads
//! cost a few dot products. Each head's score is its output (regression) or
//! the output's sigmoid (logit), and the *combined* score, by which candidates
//! are ordered, is the weighted sum `Σ weight_h · score_h`. Without `heads`
//! the model has the one output `head` describes, and its score is the
//! combined score.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::ModelError;
use crate::dcn_mix::{MixConfig, MixCrossLayer};

/// Element-wise activations the configs may name (Keras names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Identity (Keras `linear` or `None`).
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Linear => Ok(xs.clone()),
            Self::Relu => xs.relu(),
            Self::Tanh => xs.tanh(),
            Self::Sigmoid => candle_nn::ops::sigmoid(xs),
        }
    }
}

/// How the cross and deep parts are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Structure {
    /// Cross layers, then the deep MLP on their output, then the head.
    Stacked,
    /// Cross layers and the deep MLP both on x0; the head sees `[cross, deep]`.
    Parallel,
}

/// What the head's single output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// A raw value (a rating, MSE-trained).
    Regression,
    /// A logit; scores are its sigmoid.
    Logit,
}

/// One output of a multi-objective model ([`DcnConfig::heads`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// What callers call it (`rating`, `click`...): unique in the model, and the
    /// key of a per-request weight.
    pub name: String,
    /// What the output means.
    pub kind: Head,
    /// Its score's weight in the combined score (finite, at least 0).
    pub weight: f64,
}

/// Largest weight a head may have, in the config or in a request: combined
/// scores stay well within `f32` whatever the heads' scales. The API's limit
/// (`recsys_proto::limits::MAX_HEAD_WEIGHT`, checked equal by the ranking node).
pub const MAX_HEAD_WEIGHT: f64 = 1e6;

/// Most heads a model may declare (`recsys_proto::limits::MAX_HEADS`), and the
/// longest head name in bytes (a request feature name's limit).
pub const MAX_HEADS: usize = 16;
const MAX_HEAD_NAME_BYTES: usize = 128;

/// Shape of a DCN-V2 model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DcnConfig {
    /// Width of x0.
    pub input_dim: usize,
    /// Number of cross layers.
    pub cross_layers: usize,
    /// Rank of the low-rank cross weight; `None` for full rank.
    pub projection_dim: Option<usize>,
    /// Weight of the `x` term added inside the product (TFRS `diag_scale`, ≥ 0).
    #[serde(default)]
    pub diag_scale: f64,
    /// Whether cross layers have a bias.
    #[serde(default = "default_true")]
    pub use_bias: bool,
    /// TFRS `preactivation` of the cross layers.
    #[serde(default = "default_linear")]
    pub cross_activation: Activation,
    /// How cross and deep parts combine.
    pub structure: Structure,
    /// Units of each deep layer (may be empty).
    #[serde(default)]
    pub deep_units: Vec<usize>,
    /// Activation of the deep layers.
    #[serde(default = "default_relu")]
    pub deep_activation: Activation,
    /// What the output means.
    #[serde(default = "default_head")]
    pub head: Head,
    /// DCN-Mix: each cross layer a mixture of `projection_dim`-rank experts
    /// ([`crate::dcn_mix`]) instead of one `Cross`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<MixConfig>,
    /// The outputs of a multi-objective model, in `head.weight` row order; empty
    /// for the single output `head` describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heads: Vec<HeadSpec>,
}

fn default_true() -> bool {
    true
}
fn default_linear() -> Activation {
    Activation::Linear
}
fn default_relu() -> Activation {
    Activation::Relu
}
fn default_head() -> Head {
    Head::Regression
}

impl DcnConfig {
    /// Checks the numbers that candle cannot check from shapes alone.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.input_dim == 0 {
            return Err(ModelError::Config("input_dim must be positive".into()));
        }
        if self.projection_dim == Some(0) {
            return Err(ModelError::Config("projection_dim must be positive".into()));
        }
        if self.diag_scale.is_nan() || self.diag_scale < 0.0 {
            return Err(ModelError::Config(format!(
                "diag_scale is {}, must be >= 0 (as in TFRS)",
                self.diag_scale
            )));
        }
        if let Some(mix) = self.experts {
            if mix.experts == 0 {
                return Err(ModelError::Config("experts must be at least 1".into()));
            }
            if self.projection_dim.is_none() {
                return Err(ModelError::Config(
                    "DCN-Mix experts are low rank: set projection_dim".into(),
                ));
            }
            if self.diag_scale != 0.0 || self.cross_activation != Activation::Linear {
                return Err(ModelError::Config(
                    "DCN-Mix layers take neither diag_scale nor cross_activation (experts.activation is theirs)".into(),
                ));
            }
        }
        if self.deep_units.contains(&0) {
            return Err(ModelError::Config(
                "deep layers need at least one unit".into(),
            ));
        }
        if self.heads.len() > MAX_HEADS {
            return Err(ModelError::Config(format!(
                "{} heads, the limit is {MAX_HEADS}",
                self.heads.len()
            )));
        }
        for (i, head) in self.heads.iter().enumerate() {
            if head.name.is_empty() || head.name.len() > MAX_HEAD_NAME_BYTES {
                return Err(ModelError::Config(format!(
                    "heads[{i}]: a name is 1 to {MAX_HEAD_NAME_BYTES} bytes"
                )));
            }
            if self.heads[..i].iter().any(|h| h.name == head.name) {
                return Err(ModelError::Config(format!(
                    "heads: {:?} is named twice",
                    head.name
                )));
            }
            if !(0.0..=MAX_HEAD_WEIGHT).contains(&head.weight) {
                return Err(ModelError::Config(format!(
                    "heads: {:?} has weight {}, must be within [0, {MAX_HEAD_WEIGHT}]",
                    head.name, head.weight
                )));
            }
        }
        Ok(())
    }

    /// The model's outputs: `heads`, or the one output `head` describes, named
    /// `score` with weight 1.
    pub fn outputs(&self) -> Vec<HeadSpec> {
        if self.heads.is_empty() {
            vec![HeadSpec {
                name: "score".into(),
                kind: self.head,
                weight: 1.0,
            }]
        } else {
            self.heads.clone()
        }
    }

    /// True for a multi-objective model (one that declares `heads`).
    pub fn is_multi_head(&self) -> bool {
        !self.heads.is_empty()
    }
}

/// The product part of a cross layer.
#[derive(Debug, Clone)]
enum Projection {
    Full(Linear),
    LowRank { u: Linear, v: Linear },
}

/// One `tfrs.layers.dcn.Cross` layer.
#[derive(Debug, Clone)]
pub struct CrossLayer {
    projection: Projection,
    diag_scale: f64,
    activation: Activation,
}

impl CrossLayer {
    /// Loads a cross layer of `cfg` from `vb` (prefixed `cross.{i}`).
    pub fn new(cfg: &DcnConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        let dim = cfg.input_dim;
        let bias = if cfg.use_bias {
            Some(vb.get(dim, "bias")?)
        } else {
            None
        };
        let projection = match cfg.projection_dim {
            None => Projection::Full(Linear::new(vb.get((dim, dim), "weight")?, bias)),
            Some(rank) => Projection::LowRank {
                u: Linear::new(vb.get((rank, dim), "u")?, None),
                v: Linear::new(vb.get((dim, rank), "v")?, bias),
            },
        };
        Ok(Self {
            projection,
            diag_scale: cfg.diag_scale,
            activation: cfg.cross_activation,
        })
    }

    /// `x0 ⊙ (act(W x + b) + diag_scale·x) + x`.
    pub fn forward(&self, x0: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let first = match &self.projection {
            Projection::Full(w) => x.matmul(&w.weight().t()?)?,
            Projection::LowRank { u, .. } => u.forward(x)?,
        };
        self.forward_from(x0, x, &first)
    }

    /// The weight of the first product with `x`: `W` `(dim, dim)` at full rank, `U`
    /// `(r, dim)` at low rank. It is linear in `x`, so a caller may split it by
    /// columns and compute parts of it ahead of time.
    pub fn first_weight(&self) -> &Tensor {
        match &self.projection {
            Projection::Full(w) => w.weight(),
            Projection::LowRank { u, .. } => u.weight(),
        }
    }

    /// The whole product weight `(dim, dim)`: `W` at full rank, `V·U` at low rank.
    pub fn product_weight(&self) -> candle_core::Result<Tensor> {
        match &self.projection {
            Projection::Full(w) => Ok(w.weight().clone()),
            Projection::LowRank { u, v } => v.weight().matmul(u.weight()),
        }
    }

    /// The product's bias `(dim)`, when the layer has one.
    pub fn product_bias(&self) -> Option<&Tensor> {
        match &self.projection {
            Projection::Full(w) => w.bias(),
            Projection::LowRank { v, .. } => v.bias(),
        }
    }

    /// TFRS `diag_scale`.
    pub fn diag_scale(&self) -> f64 {
        self.diag_scale
    }

    /// True when the product has no activation, so the layer is a quadratic form
    /// of x0 that callers may expand.
    pub fn is_linear(&self) -> bool {
        self.activation == Activation::Linear
    }

    /// The layer given `first = x · first_weight()ᵀ`, computed by the caller.
    pub fn forward_from(
        &self,
        x0: &Tensor,
        x: &Tensor,
        first: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let projected = match &self.projection {
            Projection::Full(w) => match w.bias() {
                Some(bias) => first.broadcast_add(bias)?,
                None => first.clone(),
            },
            Projection::LowRank { v, .. } => v.forward(first)?,
        };
        let mut prod = self.activation.apply(&projected)?;
        if self.diag_scale != 0.0 {
            prod = (prod + (x * self.diag_scale)?)?;
        }
        x0.mul(&prod)? + x
    }
}

/// A cross layer of either kind.
#[derive(Debug, Clone)]
enum Cross {
    Single(CrossLayer),
    Mix(MixCrossLayer),
}

impl Cross {
    fn forward(&self, x0: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Single(layer) => layer.forward(x0, x),
            Self::Mix(layer) => layer.forward(x0, x),
        }
    }
}

/// A DCN-V2 model: cross layers, deep MLP, head.
#[derive(Debug, Clone)]
pub struct DcnV2 {
    cfg: DcnConfig,
    cross: Vec<Cross>,
    deep: Vec<Linear>,
    head: Linear,
    /// How the head's raw outputs become scores.
    activation: HeadActivation,
    /// `(heads, 1)`: the combined score's weights, for a multi-objective model.
    weights: Option<Tensor>,
}

/// The heads' activations: one for all, or a 0/1 mask `(1, heads)` of the
/// logit heads when they differ.
#[derive(Debug, Clone)]
enum HeadActivation {
    Identity,
    Sigmoid,
    Mixed(Tensor),
}

impl DcnV2 {
    /// Loads the model of `cfg` from `vb`; a weight whose shape does not match the
    /// config fails with candle's message naming the tensor and both shapes.
    pub fn new(cfg: &DcnConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        cfg.validate()?;
        let cross = (0..cfg.cross_layers)
            .map(|i| {
                let vb = vb.pp("cross").pp(i);
                Ok(match cfg.experts {
                    None => Cross::Single(CrossLayer::new(cfg, vb)?),
                    Some(mix) => Cross::Mix(MixCrossLayer::new(cfg, mix, vb)?),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let mut deep = Vec::with_capacity(cfg.deep_units.len());
        let mut width = cfg.input_dim;
        for (j, &units) in cfg.deep_units.iter().enumerate() {
            let vb = vb.pp("deep").pp(j);
            deep.push(Linear::new(
                vb.get((units, width), "weight")?,
                Some(vb.get(units, "bias")?),
            ));
            width = units;
        }
        let head_in = match cfg.structure {
            Structure::Stacked => width,
            Structure::Parallel => {
                cfg.input_dim + if cfg.deep_units.is_empty() { 0 } else { width }
            }
        };
        let vb_head = vb.pp("head");
        let outputs = cfg.outputs();
        let head = Linear::new(
            vb_head.get((outputs.len(), head_in), "weight")?,
            Some(vb_head.get(outputs.len(), "bias")?),
        );
        let device = head.weight().device();
        let activation = if outputs.iter().all(|h| h.kind == Head::Regression) {
            HeadActivation::Identity
        } else if outputs.iter().all(|h| h.kind == Head::Logit) {
            HeadActivation::Sigmoid
        } else {
            let mask: Vec<f32> = outputs
                .iter()
                .map(|h| if h.kind == Head::Logit { 1.0 } else { 0.0 })
                .collect();
            HeadActivation::Mixed(Tensor::from_vec(mask, (1, outputs.len()), device)?)
        };
        let weights = if cfg.is_multi_head() {
            let weights: Vec<f32> = outputs.iter().map(|h| h.weight as f32).collect();
            Some(Tensor::from_vec(weights, (outputs.len(), 1), device)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            cross,
            deep,
            head,
            activation,
            weights,
        })
    }

    /// Outputs per row: the heads of a multi-objective model, else 1.
    pub fn outputs(&self) -> usize {
        self.head.weight().dim(0).unwrap_or(1)
    }

    /// Every head's score `(batch, heads)` for x0 of shape `(batch, input_dim)`.
    pub fn head_scores(&self, x0: &Tensor) -> candle_core::Result<Tensor> {
        let raw = self.forward_raw(x0)?;
        self.activate(raw)
    }

    /// The combined scores `(batch,)` of head scores `(batch, heads)`, with the
    /// config's weights: the one head's score for a single-output model.
    pub fn combine(&self, scores: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weights {
            None => scores.squeeze(1),
            Some(weights) => scores.matmul(weights)?.squeeze(1),
        }
    }

    /// The config.
    pub fn config(&self) -> &DcnConfig {
        &self.cfg
    }

    /// Raw head outputs `(batch, heads)` for x0 of shape `(batch, input_dim)`:
    /// the rating, or the logit (what a training loss and the TFRS fixtures take).
    pub fn forward_raw(&self, x0: &Tensor) -> candle_core::Result<Tensor> {
        let (_batch, _dim) = x0.dims2()?;
        let cross = self.cross_forward(x0)?;
        self.head_forward(x0, cross)
    }

    /// The first cross layer when it is a plain `Cross`, as a view that can score
    /// given that layer's first product, computed by the caller (the ranker
    /// precomputes its item-side part). `None` for DCN-Mix layers or no cross layer,
    /// so a caller cannot take that path on a model of another shape.
    pub fn first_cross(&self) -> Option<FirstCross<'_>> {
        match self.cross.first() {
            Some(Cross::Single(layer)) => Some(FirstCross { model: self, layer }),
            _ => None,
        }
    }

    /// The one plain, linear cross layer and the first deep layer, when the model is
    /// stacked in just that order (the TFRS DCN tutorial's shape): the deep layer's
    /// input is then a quadratic form of x0 that [`crate::ranker`] expands so most
    /// of it is computed once per item or once per request.
    pub fn single_cross_then_deep(&self) -> Option<CrossThenDeep<'_>> {
        match (self.cfg.structure, self.cross.as_slice(), self.deep.first()) {
            (Structure::Stacked, [Cross::Single(cross)], Some(deep)) if cross.is_linear() => {
                Some(CrossThenDeep {
                    model: self,
                    cross,
                    deep,
                })
            }
            _ => None,
        }
    }

    fn cross_forward(&self, x0: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x0.clone();
        for layer in &self.cross {
            x = layer.forward(x0, &x)?;
        }
        Ok(x)
    }

    /// The cross stack with the first layer's product given; the caller holds a
    /// [`FirstCross`], so the first layer is plain.
    fn cross_forward_from(
        &self,
        first_layer: &CrossLayer,
        x0: &Tensor,
        first: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let mut x = first_layer.forward_from(x0, x0, first)?;
        for layer in &self.cross[1..] {
            x = layer.forward(x0, &x)?;
        }
        Ok(x)
    }

    fn deep_forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = xs.clone();
        for layer in &self.deep {
            x = self.cfg.deep_activation.apply(&layer.forward(&x)?)?;
        }
        Ok(x)
    }

    fn head_forward(&self, x0: &Tensor, cross: Tensor) -> candle_core::Result<Tensor> {
        let features = match self.cfg.structure {
            Structure::Stacked => self.deep_forward(&cross)?,
            Structure::Parallel if self.deep.is_empty() => cross,
            Structure::Parallel => Tensor::cat(&[&cross, &self.deep_forward(x0)?], 1)?,
        };
        self.head.forward(&features)
    }

    /// Head scores `(batch, heads)` of raw outputs: each head's own activation.
    fn activate(&self, raw: Tensor) -> candle_core::Result<Tensor> {
        match &self.activation {
            HeadActivation::Identity => Ok(raw),
            HeadActivation::Sigmoid => candle_nn::ops::sigmoid(&raw),
            // raw + mask ⊙ (sigmoid(raw) − raw): the sigmoid where the mask is 1.
            HeadActivation::Mixed(mask) => {
                let sigmoid = candle_nn::ops::sigmoid(&raw)?;
                raw.add(&(sigmoid - &raw)?.broadcast_mul(mask)?)
            }
        }
    }
}

/// Combined scores `(batch,)` for x0 of shape `(batch, input_dim)`: for one
/// output, the raw output (regression) or its sigmoid (logit).
impl Module for DcnV2 {
    fn forward(&self, x0: &Tensor) -> candle_core::Result<Tensor> {
        self.combine(&self.head_scores(x0)?)
    }
}

/// A model whose first cross layer is a plain `Cross` ([`DcnV2::first_cross`]).
#[derive(Debug, Clone, Copy)]
pub struct FirstCross<'a> {
    model: &'a DcnV2,
    layer: &'a CrossLayer,
}

impl<'a> FirstCross<'a> {
    /// The layer.
    pub fn layer(&self) -> &'a CrossLayer {
        self.layer
    }

    /// The model's head scores `(batch, heads)` given
    /// `first = x0 · layer().first_weight()ᵀ`.
    pub fn head_scores_from(&self, x0: &Tensor, first: &Tensor) -> candle_core::Result<Tensor> {
        let cross = self.model.cross_forward_from(self.layer, x0, first)?;
        self.model.activate(self.model.head_forward(x0, cross)?)
    }
}

/// A stacked model of one plain, linear cross layer then deep layers
/// ([`DcnV2::single_cross_then_deep`]): it can score from the first deep layer's
/// pre-activation, which the ranker's fold computes.
#[derive(Debug, Clone, Copy)]
pub struct CrossThenDeep<'a> {
    model: &'a DcnV2,
    cross: &'a CrossLayer,
    deep: &'a Linear,
}

impl<'a> CrossThenDeep<'a> {
    /// The cross layer.
    pub fn cross(&self) -> &'a CrossLayer {
        self.cross
    }

    /// The first deep layer.
    pub fn deep(&self) -> &'a Linear {
        self.deep
    }

    /// The first deep layer's output before its activation, given x0 and
    /// `first = x0 · cross().first_weight()ᵀ`.
    pub fn first_deep_from(&self, x0: &Tensor, first: &Tensor) -> candle_core::Result<Tensor> {
        self.deep
            .forward(&self.model.cross_forward_from(self.cross, x0, first)?)
    }

    /// Head scores `(batch, heads)` given the first deep layer's output before
    /// its activation (from [`CrossThenDeep::first_deep_from`] or an expansion of it).
    pub fn head_scores_from_first_deep(&self, pre: &Tensor) -> candle_core::Result<Tensor> {
        let model = self.model;
        let mut x = model.cfg.deep_activation.apply(pre)?;
        for layer in model.deep.iter().skip(1) {
            x = model.cfg.deep_activation.apply(&layer.forward(&x)?)?;
        }
        model.activate(model.head.forward(&x)?)
    }
}
