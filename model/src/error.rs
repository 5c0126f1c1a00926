//! Errors of building and running models.

/// What can go wrong with a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// candle failed; its message names the tensor and the shapes when a weight
    /// does not match the config.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// The config is inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A weight file or fixture is malformed.
    #[error("{0}")]
    Weights(String),
}
