//! Adagrad (Duchi et al. 2011), as `tf.keras.optimizers.Adagrad`: the optimizer
//! of TFRS's retrieval tutorials (learning rate 0.1).
//!
//! candle-nn 0.11 ships SGD and AdamW only, so this is a small
//! [`candle_nn::Optimizer`] of our own. Per variable, with TF 2's
//! `ApplyAdagradV2` update and Keras's defaults (accumulator starts at 0.1,
//! ε = 1e-7):
//!
//! ```text
//! acc += g²
//! var -= lr · g / (√acc + ε)
//! ```
//!
//! Keras applies embedding gradients sparsely (only the rows a batch touched);
//! a dense step is the same here because an untouched row has g = 0, which
//! changes neither its accumulator nor its value.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::Optimizer;

/// Adagrad's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdagradConfig {
    /// Step size (TFRS tutorials: 0.1; Keras default 0.001).
    pub learning_rate: f64,
    /// Starting value of every accumulator (Keras: 0.1).
    pub initial_accumulator: f64,
    /// Added to the root of the accumulator (Keras: 1e-7).
    pub epsilon: f64,
}

impl Default for AdagradConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.1,
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        }
    }
}

/// Adagrad over a set of variables.
#[derive(Debug)]
pub struct Adagrad {
    vars: Vec<(Var, Tensor)>,
    config: AdagradConfig,
}

impl Optimizer for Adagrad {
    type Config = AdagradConfig;

    fn new(vars: Vec<Var>, config: AdagradConfig) -> candle_core::Result<Self> {
        let vars = vars
            .into_iter()
            .filter(|v| v.dtype().is_float())
            .map(|v| {
                let acc = (v.zeros_like()? + config.initial_accumulator)?;
                Ok((v, acc))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { vars, config })
    }

    fn step(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        for (var, acc) in &mut self.vars {
            let Some(grad) = grads.get(var) else {
                continue;
            };
            *acc = (&*acc + grad.sqr()?)?;
            let step = (grad / (acc.sqrt()? + self.config.epsilon)?)?;
            var.set(&(var.as_tensor() - (step * self.config.learning_rate)?)?)?;
        }
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.learning_rate
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.learning_rate = lr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_formula() {
        // One step on f(x) = Σ x², g = 2x, from x = [1, -2].
        let x = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = Adagrad::new(vec![x.clone()], AdagradConfig::default()).unwrap();
        let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
        opt.backward_step(&loss).unwrap();
        let got = x.as_tensor().to_vec1::<f32>().unwrap();
        for (x0, g) in [(1.0f64, 2.0f64), (-2.0, -4.0)] {
            let acc = 0.1 + g * g;
            let want = x0 - 0.1 * g / (acc.sqrt() + 1e-7);
            let i = usize::from(x0 < 0.0);
            assert!((f64::from(got[i]) - want).abs() < 1e-6, "{got:?}");
        }
    }
}
