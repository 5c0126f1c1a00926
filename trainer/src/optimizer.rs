//! One optimizer step whichever optimizer a run chose: both trainers (retrieval
//! and ranking) hold one of these, built with Keras's defaults in one place.

use candle_core::Var;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::adagrad::{Adagrad, AdagradConfig};

/// The optimizer of a run.
pub(crate) enum Stepper {
    /// Keras's Adagrad ([`crate::adagrad`]).
    Adagrad(Adagrad),
    /// candle's AdamW (Adam when its decay is 0).
    Adam(AdamW),
}

impl Stepper {
    /// Adagrad with Keras's defaults but the step size.
    pub(crate) fn adagrad(vars: Vec<Var>, learning_rate: f64) -> candle_core::Result<Self> {
        Ok(Self::Adagrad(Adagrad::new(
            vars,
            AdagradConfig {
                learning_rate,
                ..AdagradConfig::default()
            },
        )?))
    }

    /// Adam with Keras's β₁ 0.9, β₂ 0.999, ε 1e-7 and AdamW's decoupled
    /// `weight_decay` (0 for plain Adam).
    pub(crate) fn adam(
        vars: Vec<Var>,
        learning_rate: f64,
        weight_decay: f64,
    ) -> candle_core::Result<Self> {
        Ok(Self::Adam(AdamW::new(
            vars,
            ParamsAdamW {
                lr: learning_rate,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-7,
                weight_decay,
            },
        )?))
    }

    /// Back-propagates `loss` and updates every variable once.
    pub(crate) fn backward_step(&mut self, loss: &candle_core::Tensor) -> candle_core::Result<()> {
        match self {
            Self::Adagrad(o) => o.backward_step(loss),
            Self::Adam(o) => o.backward_step(loss),
        }
    }
}
