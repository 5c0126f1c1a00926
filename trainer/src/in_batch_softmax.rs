//! The retrieval loss of `tfrs.tasks.Retrieval` (`tasks/retrieval.py`, `call`):
//! every query's positive is the candidate in its own row, and the batch's
//! other candidates are its negatives.
//!
//! ```text
//! logits  = Q Cᵀ                       [batch, batch]
//! logits /= temperature                when set
//! logits -= log p(candidate j)         log-Q correction (layers/loss.py SamplingProbabilityCorrection)
//! logits_ij dropped where candidate j has row i's positive id, j ≠ i
//!                                      (layers/loss.py RemoveAccidentalHits adds
//!                                      MIN_FLOAT = f32::MIN / 100: its exp is 0 too)
//! loss    = Σ_i  logsumexp_j logits_ij − logits_ii
//! ```
//!
//! The last line is `CategoricalCrossentropy(from_logits=True,
//! reduction=SUM)` against the identity labels, TFRS's default loss: a sum over
//! the batch, not a mean. The sum sets the gradients' scale, which SGD feels
//! fully, Adagrad partly (its accumulator starts at 0.1) and Adam hardly.

use std::sync::Mutex;

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// What to do to the logits before the cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOptions {
    /// Divide logits by this (`temperature` of `tfrs.tasks.Retrieval`).
    pub temperature: Option<f32>,
    /// Mask negatives that share the positive's id.
    pub remove_accidental_hits: bool,
}

/// A batch's loss and a tensor whose gradient is the loss's.
#[derive(Debug)]
pub struct BatchLoss {
    /// The summed cross-entropy.
    pub loss: f32,
    /// `Σ q ⊙ ∂L/∂q + Σ c ⊙ ∂L/∂c` with both gradients detached: its backward
    /// pass hands the towers exactly the loss's gradients. Its value means nothing.
    pub surrogate: Tensor,
}

/// The summed in-batch softmax cross-entropy of queries `q` and their positive
/// candidates `c` (both `[batch, dim]`). `candidate_ids` are the candidates'
/// ids (for accidental hits); `sampling_probability`, when given, is each
/// candidate's probability of appearing in a batch (for the log-Q correction).
///
/// The gradient is computed here rather than by candle's autograd: at TFRS's
/// batch of 8192 the logits are 268 MB, and autograd through composed ops
/// allocated and walked a fresh copy per op, per gradient and per gradient
/// accumulation, single-threaded. Instead the logits are turned in place into
/// `∂L/∂logits = scale · (softmax − I)` by one kernel (rayon over rows), then
/// `∂L/∂Q = G C` and `∂L/∂C = Gᵀ Q`; autograd takes over from `q` and `c`
/// through [`BatchLoss::surrogate`]. One batch × batch buffer per step.
pub fn in_batch_softmax(
    q: &Tensor,
    c: &Tensor,
    candidate_ids: &[u32],
    sampling_probability: Option<&[f32]>,
    options: &LossOptions,
) -> Result<BatchLoss> {
    let (q0, c0) = (q.detach(), c.detach());
    let grad = q0.matmul(&c0.t()?)?;
    let kernel = SoftmaxCrossEntropy {
        scale: options.temperature.map_or(1.0, |t| 1.0 / t),
        log_q: sampling_probability
            .map(|p| p.iter().map(|&p| p.max(f32::MIN_POSITIVE).ln()).collect()),
        ids: options
            .remove_accidental_hits
            .then(|| candidate_ids.to_vec()),
        loss: Mutex::new(f64::NAN),
    };
    grad.inplace_op1(&kernel)?;
    let loss = *kernel
        .loss
        .lock()
        .map_err(|_| candle_core::Error::Msg("loss poisoned".into()))?;
    let grad_q = grad.matmul(&c0)?;
    let grad_c = grad.t()?.matmul(&q0)?;
    let surrogate = ((q * grad_q)?.sum_all()? + (c * grad_c)?.sum_all()?)?;
    Ok(BatchLoss {
        loss: loss as f32,
        surrogate,
    })
}

/// Turns logits `x` into `∂L/∂x` in place and records
/// `L = Σ_i logsumexp_j a_ij − a_ii`, with `a_ij = scale · x_ij − log_q_j` and
/// `a_ij = −∞` where candidate j has row i's positive id (j ≠ i).
struct SoftmaxCrossEntropy {
    scale: f32,
    log_q: Option<Vec<f32>>,
    ids: Option<Vec<u32>>,
    loss: Mutex<f64>,
}

impl SoftmaxCrossEntropy {
    /// One row, in place; returns its loss.
    fn row(&self, i: usize, a: &mut [f32]) -> f64 {
        match &self.log_q {
            Some(log_q) => a
                .iter_mut()
                .zip(log_q)
                .for_each(|(v, l)| *v = self.scale * *v - l),
            None => a.iter_mut().for_each(|v| *v *= self.scale),
        }
        if let Some(ids) = &self.ids {
            for (j, v) in a.iter_mut().enumerate() {
                if j != i && ids[j] == ids[i] {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
        let positive = a[i];
        let max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for v in a.iter_mut() {
            *v = (*v - max).exp();
            sum += f64::from(*v);
        }
        let norm = self.scale / sum as f32;
        a.iter_mut().for_each(|v| *v *= norm);
        a[i] -= self.scale;
        f64::from(max) + sum.ln() - f64::from(positive)
    }
}

impl InplaceOp1 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "in-batch-softmax-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (rows, cols) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} needs contiguous logits", self.name());
        };
        if rows != cols {
            candle_core::bail!("{} needs square logits, got {rows}x{cols}", self.name());
        }
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{} needs f32 logits", self.name());
        };
        let losses: Vec<f64> = data[start..end]
            .par_chunks_mut(cols)
            .enumerate()
            .map(|(i, row)| self.row(i, row))
            .collect();
        // Summed in row order, so the result does not depend on the thread count.
        *self
            .loss
            .lock()
            .map_err(|_| candle_core::Error::Msg("loss poisoned".into()))? = losses.iter().sum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn reference(q: &[[f32; 2]], c: &[[f32; 2]], adjust: impl Fn(usize, usize, f32) -> f32) -> f64 {
        let mut total = 0.0f64;
        for i in 0..q.len() {
            let logits: Vec<f64> = (0..c.len())
                .map(|j| f64::from(adjust(i, j, q[i][0] * c[j][0] + q[i][1] * c[j][1])))
                .collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            total += lse - logits[i];
        }
        total
    }

    fn run(q: &[[f32; 2]], c: &[[f32; 2]], ids: &[u32], p: Option<&[f32]>, o: LossOptions) -> f64 {
        let dev = Device::Cpu;
        let qt = Tensor::from_vec(q.concat(), (q.len(), 2), &dev).unwrap();
        let ct = Tensor::from_vec(c.concat(), (c.len(), 2), &dev).unwrap();
        f64::from(in_batch_softmax(&qt, &ct, ids, p, &o).unwrap().loss)
    }

    const Q: [[f32; 2]; 3] = [[1.0, 0.5], [-0.3, 2.0], [0.7, -1.1]];
    const C: [[f32; 2]; 3] = [[0.2, 0.1], [1.5, -0.4], [0.3, 0.9]];

    #[test]
    fn plain_softmax_cross_entropy() {
        let got = run(&Q, &C, &[1, 2, 3], None, LossOptions::default());
        assert!((got - reference(&Q, &C, |_, _, l| l)).abs() < 1e-5);
    }

    #[test]
    fn temperature_and_log_q() {
        let p = [0.5f32, 0.25, 0.125];
        let o = LossOptions {
            temperature: Some(0.2),
            remove_accidental_hits: false,
        };
        let got = run(&Q, &C, &[1, 2, 3], Some(&p), o);
        let want = reference(&Q, &C, |_, j, l| l / 0.2 - p[j].ln());
        assert!((got - want).abs() < 1e-4, "{got} {want}");
    }

    /// The same loss from plain candle ops, for autograd to differentiate.
    fn composed(q: &Tensor, c: &Tensor, scale: f64, log_q: &Tensor, mask: &Tensor) -> Tensor {
        let n = q.dim(0).unwrap();
        let a = ((q.matmul(&c.t().unwrap()).unwrap() * scale)
            .unwrap()
            .broadcast_sub(log_q)
            .unwrap()
            + mask)
            .unwrap();
        let max = a.max_keepdim(1).unwrap().detach();
        let lse = (a
            .broadcast_sub(&max)
            .unwrap()
            .exp()
            .unwrap()
            .sum_keepdim(1)
            .unwrap()
            .log()
            .unwrap()
            + max)
            .unwrap();
        let diag = Tensor::arange(0u32, n as u32, q.device())
            .unwrap()
            .reshape((n, 1))
            .unwrap();
        (lse - a.gather(&diag, 1).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
    }

    #[test]
    fn gradients_match_autograd_of_the_composed_ops() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let q = Var::from_vec(
            (0..12).map(|i| (i as f32 * 0.37).sin()).collect(),
            (4, 3),
            &dev,
        )
        .unwrap();
        let c = Var::from_vec(
            (0..12).map(|i| (i as f32 * 0.91).cos()).collect(),
            (4, 3),
            &dev,
        )
        .unwrap();
        let ids = [5u32, 6, 5, 7];
        let p = [0.1f32, 0.2, 0.1, 0.4];
        let options = LossOptions {
            temperature: Some(0.5),
            remove_accidental_hits: true,
        };
        let fused = in_batch_softmax(&q, &c, &ids, Some(&p), &options).unwrap();
        let fused_grads = fused.surrogate.backward().unwrap();

        let log_q =
            Tensor::from_vec(p.iter().map(|p| p.ln()).collect::<Vec<_>>(), (1, 4), &dev).unwrap();
        let mut mask = vec![0f32; 16];
        for i in 0..4 {
            for j in 0..4 {
                if i != j && ids[i] == ids[j] {
                    mask[i * 4 + j] = f32::MIN / 100.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (4, 4), &dev).unwrap();
        let plain = composed(&q, &c, 2.0, &log_q, &mask);
        let plain_grads = plain.backward().unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            // Same length first: `zip` alone would call a missing gradient close.
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4)
        };
        assert!(
            (f64::from(fused.loss) - f64::from(plain.to_scalar::<f32>().unwrap())).abs() < 1e-4
        );
        for v in [&q, &c] {
            assert!(close(
                fused_grads.get(v).unwrap(),
                plain_grads.get(v).unwrap()
            ));
        }
    }

    #[test]
    fn accidental_hits_are_masked_but_not_the_positive() {
        let o = LossOptions {
            temperature: None,
            remove_accidental_hits: true,
        };
        let got = run(&Q, &C, &[7, 8, 7], None, o);
        let want = reference(&Q, &C, |i, j, l| {
            if i != j && (i == 0 || i == 2) && (j == 0 || j == 2) {
                -1e30
            } else {
                l
            }
        });
        assert!((got - want).abs() < 1e-5, "{got} {want}");
    }
}
