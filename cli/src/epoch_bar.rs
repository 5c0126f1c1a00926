//! The progress bar both `recsys train` models show: one bar per epoch with the
//! batches done, the running mean of the batch losses and the elapsed time.

use indicatif::{ProgressBar, ProgressStyle};

/// One bar per epoch.
pub struct EpochBar {
    epochs: usize,
    bar: Option<ProgressBar>,
    sum: f64,
    steps: usize,
}

impl EpochBar {
    /// Bars for a run of `epochs` epochs.
    pub fn new(epochs: usize) -> Self {
        Self {
            epochs,
            bar: None,
            sum: 0.0,
            steps: 0,
        }
    }

    /// Epochs of the run.
    pub fn epochs(&self) -> usize {
        self.epochs
    }

    /// A new bar for 0-based `epoch` of `steps` batches.
    pub fn start(&mut self, epoch: usize, steps: usize) {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed_precise})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
        self.bar = Some(bar);
        (self.sum, self.steps) = (0.0, 0);
    }

    /// One batch done with `loss`; `message` says the running mean its way.
    pub fn step(&mut self, loss: f32, message: impl FnOnce(f64) -> String) {
        self.sum += f64::from(loss);
        self.steps += 1;
        if let Some(bar) = &self.bar {
            bar.set_message(message(self.sum / self.steps as f64));
            bar.inc(1);
        }
    }

    /// The epoch is over: the bar goes, so the caller's summary line stays.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
