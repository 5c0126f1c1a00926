//! DCN-Mix: the cross layer as a mixture of low-rank experts (Wang et al. 2020,
//! arXiv:2008.13535, section 3.2, eq. 4–5), for models that want more capacity
//! per cross layer at low-rank cost.
//!
//! ```text
//! E_i(x)  = x0 ⊙ (U_i g(C_i g(V_i x)) + b)      expert i; b is shared by the experts
//! G_i(x)  = softmax_i(gate_i · x)               one linear score per expert, no bias
//! x_next  = Σ_i G_i(x) E_i(x) + x
//! ```
//!
//! TFRS has no DCN-Mix; the structure (shared bias, bias-free gates, `g` = tanh by
//! default) follows the paper and DeepCTR's Keras `CrossNetMix`, the usual
//! reference implementation. Tensor names, in candle's `(out, in)` layout, for
//! layer `l` and expert `e`:
//!
//! | tensor | shape |
//! |---|---|
//! | `cross.{l}.experts.{e}.down` (V) | `(r, dim)` |
//! | `cross.{l}.experts.{e}.mid` (C) | `(r, r)` |
//! | `cross.{l}.experts.{e}.up` (U) | `(dim, r)` |
//! | `cross.{l}.experts.{e}.gate` | `(1, dim)` |
//! | `cross.{l}.bias` (when `use_bias`) | `(dim)` |

use candle_core::{D, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::{Activation, DcnConfig, ModelError};

/// The mixture's shape; the experts' rank is the model's `projection_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MixConfig {
    /// Experts per cross layer.
    pub experts: usize,
    /// `g`, applied after V and after C.
    #[serde(default = "default_tanh")]
    pub activation: Activation,
}

fn default_tanh() -> Activation {
    Activation::Tanh
}

#[derive(Debug, Clone)]
struct Expert {
    down: Linear,
    mid: Linear,
    up: Linear,
    gate: Linear,
}

/// One cross layer of low-rank experts.
#[derive(Debug, Clone)]
pub struct MixCrossLayer {
    experts: Vec<Expert>,
    bias: Option<Tensor>,
    activation: Activation,
}

impl MixCrossLayer {
    /// Loads layer `vb` (prefixed `cross.{l}`) of `cfg`, whose `experts` and
    /// `projection_dim` are set (checked by `DcnConfig::validate`).
    pub fn new(cfg: &DcnConfig, mix: MixConfig, vb: VarBuilder) -> Result<Self, ModelError> {
        let dim = cfg.input_dim;
        let rank = cfg
            .projection_dim
            .ok_or_else(|| ModelError::Config("DCN-Mix needs projection_dim".into()))?;
        let experts = (0..mix.experts)
            .map(|e| {
                let vb = vb.pp("experts").pp(e);
                Ok(Expert {
                    down: Linear::new(vb.get((rank, dim), "down")?, None),
                    mid: Linear::new(vb.get((rank, rank), "mid")?, None),
                    up: Linear::new(vb.get((dim, rank), "up")?, None),
                    gate: Linear::new(vb.get((1, dim), "gate")?, None),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let bias = if cfg.use_bias {
            Some(vb.get(dim, "bias")?)
        } else {
            None
        };
        Ok(Self {
            experts,
            bias,
            activation: mix.activation,
        })
    }

    /// `Σ_i G_i(x) E_i(x) + x` for `x0`, `x` of shape `(batch, dim)`.
    pub fn forward(&self, x0: &Tensor, x: &Tensor) -> candle_core::Result<Tensor> {
        let g = self.activation;
        let mut outputs = Vec::with_capacity(self.experts.len());
        let mut scores = Vec::with_capacity(self.experts.len());
        for expert in &self.experts {
            let hidden = g.apply(&expert.mid.forward(&g.apply(&expert.down.forward(x)?)?)?)?;
            let mut lifted = expert.up.forward(&hidden)?;
            if let Some(bias) = &self.bias {
                lifted = lifted.broadcast_add(bias)?;
            }
            outputs.push(x0.mul(&lifted)?);
            scores.push(expert.gate.forward(x)?);
        }
        // (batch, experts) weights; (batch, dim, experts) outputs; their product
        // is the gated sum.
        let weights = candle_nn::ops::softmax(&Tensor::cat(&scores, 1)?, D::Minus1)?;
        let stacked = Tensor::stack(&outputs, 2)?;
        let mixed = stacked.matmul(&weights.unsqueeze(2)?)?.squeeze(2)?;
        mixed + x
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};

    use super::*;
    use crate::{CrossLayer, Structure};

    /// A small deterministic generator: the values only need to be varied.
    fn values(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn config(dim: usize, rank: usize, mix: Option<MixConfig>) -> DcnConfig {
        DcnConfig {
            input_dim: dim,
            cross_layers: 1,
            projection_dim: Some(rank),
            diag_scale: 0.0,
            use_bias: true,
            cross_activation: Activation::Linear,
            structure: Structure::Stacked,
            deep_units: Vec::new(),
            deep_activation: Activation::Relu,
            head: crate::dcn_v2::Head::Regression,
            experts: mix,
            heads: Vec::new(),
        }
    }

    /// The formula in f64 loops, independent of candle's ops.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x0: &[f32],
        x: &[f32],
        experts: &[[Vec<f32>; 4]],
        bias: &[f32],
        dim: usize,
        rank: usize,
    ) -> Vec<f64> {
        let matvec = |w: &[f32], v: &[f64], rows: usize, cols: usize| -> Vec<f64> {
            (0..rows)
                .map(|r| (0..cols).map(|c| f64::from(w[r * cols + c]) * v[c]).sum())
                .collect()
        };
        let batch = x.len() / dim;
        let mut out = Vec::new();
        for b in 0..batch {
            let xs: Vec<f64> = x[b * dim..(b + 1) * dim]
                .iter()
                .map(|&v| v.into())
                .collect();
            let x0s: Vec<f64> = x0[b * dim..(b + 1) * dim]
                .iter()
                .map(|&v| v.into())
                .collect();
            let mut gates = Vec::new();
            let mut expert_out = Vec::new();
            for [down, mid, up, gate] in experts {
                let h: Vec<f64> = matvec(down, &xs, rank, dim)
                    .iter()
                    .map(|v| v.tanh())
                    .collect();
                let h: Vec<f64> = matvec(mid, &h, rank, rank)
                    .iter()
                    .map(|v| v.tanh())
                    .collect();
                let u = matvec(up, &h, dim, rank);
                expert_out.push(
                    (0..dim)
                        .map(|d| x0s[d] * (u[d] + f64::from(bias[d])))
                        .collect::<Vec<_>>(),
                );
                gates.push(matvec(gate, &xs, 1, dim)[0]);
            }
            let top = gates.iter().copied().fold(f64::MIN, f64::max);
            let exp: Vec<f64> = gates.iter().map(|g| (g - top).exp()).collect();
            let total: f64 = exp.iter().sum();
            for d in 0..dim {
                let mixed: f64 = expert_out
                    .iter()
                    .zip(&exp)
                    .map(|(e, w)| e[d] * w / total)
                    .sum();
                out.push(mixed + xs[d]);
            }
        }
        out
    }

    #[test]
    fn matches_the_formula() {
        let (dim, rank, count, batch) = (6, 3, 3, 4);
        let mut seed = 7;
        let experts: Vec<[Vec<f32>; 4]> = (0..count)
            .map(|_| {
                [
                    values(&mut seed, rank * dim),
                    values(&mut seed, rank * rank),
                    values(&mut seed, dim * rank),
                    values(&mut seed, dim),
                ]
            })
            .collect();
        let bias = values(&mut seed, dim);
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        for (e, [down, mid, up, gate]) in experts.iter().enumerate() {
            let shapes = [(rank, dim), (rank, rank), (dim, rank), (1, dim)];
            for ((name, data), shape) in ["down", "mid", "up", "gate"]
                .iter()
                .zip([down, mid, up, gate])
                .zip(shapes)
            {
                tensors.insert(
                    format!("experts.{e}.{name}"),
                    Tensor::from_vec(data.clone(), shape, &device).unwrap(),
                );
            }
        }
        tensors.insert(
            "bias".into(),
            Tensor::from_vec(bias.clone(), dim, &device).unwrap(),
        );
        let mix = MixConfig {
            experts: count,
            activation: Activation::Tanh,
        };
        let cfg = config(dim, rank, Some(mix));
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let layer = MixCrossLayer::new(&cfg, mix, vb).unwrap();
        let x0 = values(&mut seed, batch * dim);
        let x = values(&mut seed, batch * dim);
        let got = layer
            .forward(
                &Tensor::from_vec(x0.clone(), (batch, dim), &device).unwrap(),
                &Tensor::from_vec(x.clone(), (batch, dim), &device).unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = reference(&x0, &x, &experts, &bias, dim, rank);
        for (g, w) in got.iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }
    }

    #[test]
    fn one_linear_expert_with_identity_mid_is_the_low_rank_cross() {
        let (dim, rank, batch) = (5, 2, 3);
        let mut seed = 11;
        let down = values(&mut seed, rank * dim);
        let up = values(&mut seed, dim * rank);
        let bias = values(&mut seed, dim);
        let identity: Vec<f32> = (0..rank * rank)
            .map(|i| if i % (rank + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        let device = Device::Cpu;
        let t = |data: &[f32], shape: (usize, usize)| {
            Tensor::from_vec(data.to_vec(), shape, &device).unwrap()
        };
        let mix_tensors: HashMap<String, Tensor> = [
            ("experts.0.down", t(&down, (rank, dim))),
            ("experts.0.mid", t(&identity, (rank, rank))),
            ("experts.0.up", t(&up, (dim, rank))),
            ("experts.0.gate", t(&values(&mut seed, dim), (1, dim))),
            (
                "bias",
                Tensor::from_vec(bias.clone(), dim, &device).unwrap(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cross_tensors: HashMap<String, Tensor> = [
            ("u", t(&down, (rank, dim))),
            ("v", t(&up, (dim, rank))),
            ("bias", Tensor::from_vec(bias, dim, &device).unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mix = MixConfig {
            experts: 1,
            activation: Activation::Linear,
        };
        let mixed = MixCrossLayer::new(
            &config(dim, rank, Some(mix)),
            mix,
            VarBuilder::from_tensors(mix_tensors, DType::F32, &device),
        )
        .unwrap();
        let cross = CrossLayer::new(
            &config(dim, rank, None),
            VarBuilder::from_tensors(cross_tensors, DType::F32, &device),
        )
        .unwrap();
        let x0 = t(&values(&mut seed, batch * dim), (batch, dim));
        let x = t(&values(&mut seed, batch * dim), (batch, dim));
        let a = mixed.forward(&x0, &x).unwrap().flatten_all().unwrap();
        let b = cross.forward(&x0, &x).unwrap().flatten_all().unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
