//! One optimizer step whichever optimizer a run chose: both trainers (retrieval
//! and ranking) hold one of these.

use candle_nn::{AdamW, Optimizer};

use crate::adagrad::Adagrad;

/// The optimizer of a run.
pub(crate) enum Stepper {
    /// Keras's Adagrad ([`crate::adagrad`]).
    Adagrad(Adagrad),
    /// candle's AdamW (Adam when its decay is 0).
    Adam(AdamW),
}

impl Stepper {
    /// Back-propagates `loss` and updates every variable once.
    pub(crate) fn backward_step(&mut self, loss: &candle_core::Tensor) -> candle_core::Result<()> {
        match self {
            Self::Adagrad(o) => o.backward_step(loss),
            Self::Adam(o) => o.backward_step(loss),
        }
    }
}
