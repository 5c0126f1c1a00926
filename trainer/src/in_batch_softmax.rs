//! The retrieval loss of `tfrs.tasks.Retrieval` (`tasks/retrieval.py`, `call`):
//! every query's positive is the candidate in its own row, and the batch's
//! other candidates are its negatives.
//!
//! ```text
//! logits  = Q Cᵀ                       [batch, batch]
//! logits /= temperature                when set
//! logits -= log p(candidate j)         log-Q correction (layers/loss.py SamplingProbabilityCorrection)
//! logits += MIN_FLOAT where cand j has the row's positive id, j ≠ i
//!                                      (layers/loss.py RemoveAccidentalHits)
//! loss    = Σ_i  logsumexp_j logits_ij − logits_ii
//! ```
//!
//! The last line is `CategoricalCrossentropy(from_logits=True,
//! reduction=SUM)` against the identity labels, TFRS's default loss: a sum over
//! the batch, not a mean, which matters for the step size of every optimizer
//! but Adagrad's and Adam's first steps.

use candle_core::{D, DType, Tensor};

use crate::error::Result;

/// TFRS's `MIN_FLOAT`: `finfo(float32).min / 100`, low enough that `exp` is 0
/// and far enough from `-inf` that sums stay finite.
pub const MIN_FLOAT: f32 = f32::MIN / 100.0;

/// What to do to the logits before the cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossOptions {
    /// Divide logits by this (`temperature` of `tfrs.tasks.Retrieval`).
    pub temperature: Option<f32>,
    /// Mask negatives that share the positive's id.
    pub remove_accidental_hits: bool,
}

/// The summed in-batch softmax cross-entropy of queries `q` and their positive
/// candidates `c` (both `[batch, dim]`). `candidate_ids` are the candidates'
/// ids (for accidental hits); `sampling_probability`, when given, is each
/// candidate's probability of appearing in a batch (for the log-Q correction).
pub fn in_batch_softmax_loss(
    q: &Tensor,
    c: &Tensor,
    candidate_ids: &[u32],
    sampling_probability: Option<&[f32]>,
    options: &LossOptions,
) -> Result<Tensor> {
    let (batch, _dim) = q.dims2()?;
    let mut logits = q.matmul(&c.t()?)?;
    if let Some(t) = options.temperature {
        logits = (logits / f64::from(t))?;
    }
    if let Some(p) = sampling_probability {
        let log_p: Vec<f32> = p.iter().map(|&p| p.max(f32::MIN_POSITIVE).ln()).collect();
        let log_p = Tensor::from_vec(log_p, (1, batch), q.device())?;
        logits = logits.broadcast_sub(&log_p)?;
    }
    if options.remove_accidental_hits
        && let Some(mask) = accidental_hits(candidate_ids)
    {
        let mask = Tensor::from_vec(mask, (batch, batch), q.device())?;
        logits = (logits + mask)?;
    }
    // Numerically stable logsumexp; the shift carries no gradient of its own.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + max)?;
    let diagonal = Tensor::arange(0u32, batch as u32, q.device())?.reshape((batch, 1))?;
    let positive = logits.gather(&diagonal, D::Minus1)?;
    Ok((lse - positive)?.sum_all()?.to_dtype(DType::F32)?)
}

/// The additive mask for accidental hits, or `None` when the batch has none.
/// Only repeated ids cost work, so batches of distinct items stay cheap.
fn accidental_hits(ids: &[u32]) -> Option<Vec<f32>> {
    let mut positions: std::collections::HashMap<u32, Vec<usize>> = Default::default();
    for (i, &id) in ids.iter().enumerate() {
        positions.entry(id).or_default().push(i);
    }
    let batch = ids.len();
    let mut mask: Option<Vec<f32>> = None;
    for rows in positions.values().filter(|r| r.len() > 1) {
        let mask = mask.get_or_insert_with(|| vec![0.0; batch * batch]);
        for &i in rows {
            for &j in rows {
                if i != j {
                    mask[i * batch + j] = MIN_FLOAT;
                }
            }
        }
    }
    mask
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
        let loss = in_batch_softmax_loss(&qt, &ct, ids, p, &o).unwrap();
        f64::from(loss.to_scalar::<f32>().unwrap())
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
