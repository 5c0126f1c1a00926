//! A ranker with hand-set weights for synthetic bundles, so the demo and the tests
//! have a ranking stage whose scores follow the planted preferences before a
//! trained one exists (the trainer replaces it).
//!
//! x0 = `[u | i | q]`: the user's embedding, the item's embedding and the item's
//! planted quality `q ∈ [0, 1]`. One full-rank cross layer with `W` swapping the
//! user and item halves and no bias gives `x1 = [u⊙i + u | i⊙u + i | q]`; the
//! parallel structure without a deep part sends `x1` to a head with weights
//! `[1…1 | 0…0 | α]`, so
//!
//! ```text
//! score = u·i + Σu + α·q
//! ```
//!
//! `Σu` is the same for all of one user's candidates, so the order is by
//! `u·i + α·q`: the retrieval preference, reordered by quality.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use recsys_bundle::RankerSpec;
use recsys_bundle::layout::{RANKER_DIR, vocabulary_file};

use crate::dcn_v2::Head;
use crate::ranker::{FeatureSpec, RankerConfig, Side};
use crate::{Activation, DcnConfig, ModelError, Structure};

/// Quality buckets: `q = bucket / (QUALITY_BUCKETS - 1)`.
pub const QUALITY_BUCKETS: u8 = 10;

/// What the planted ranker is built from.
#[derive(Debug, Clone, Copy)]
pub struct PlantedInputs<'a> {
    /// Embedding width of users and items.
    pub dim: usize,
    /// User ids, row order of `user_vectors`.
    pub user_ids: &'a [String],
    /// Row-major user embeddings.
    pub user_vectors: &'a [f32],
    /// Item ids, row order of `item_vectors`.
    pub item_ids: &'a [u64],
    /// Row-major item embeddings.
    pub item_vectors: &'a [f32],
    /// Quality bucket of each item, `0..QUALITY_BUCKETS`.
    pub item_quality: &'a [u8],
    /// Weight of quality against affinity (α).
    pub quality_weight: f32,
}

fn io(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Weights(format!("{}: {e}", path.display()))
}

fn write_text(path: &Path, text: &str) -> Result<(), ModelError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| io(path, e))
}

/// Writes the planted ranker into `bundle_dir/ranker/`.
pub fn write(
    bundle_dir: &Path,
    inputs: &PlantedInputs<'_>,
    version: &str,
) -> Result<(), ModelError> {
    let d = inputs.dim;
    let (users, items) = (inputs.user_ids.len(), inputs.item_ids.len());
    if inputs.user_vectors.len() != users * d
        || inputs.item_vectors.len() != items * d
        || inputs.item_quality.len() != items
    {
        return Err(ModelError::Config(
            "planted ranker inputs have inconsistent lengths".into(),
        ));
    }
    let width = 2 * d + 1;
    let device = Device::Cpu;
    let table = |rows: usize, dim: usize, values: &[f32]| -> candle_core::Result<Tensor> {
        // Row 0 is the out-of-vocabulary embedding: zeros.
        let mut data = vec![0.0f32; dim];
        data.extend_from_slice(values);
        Tensor::from_vec(data, (rows + 1, dim), &device)
    };
    let quality: Vec<f32> = (0..QUALITY_BUCKETS)
        .map(|b| f32::from(b) / f32::from(QUALITY_BUCKETS - 1))
        .collect();
    let mut swap = vec![0.0f32; width * width];
    for r in 0..d {
        swap[r * width + d + r] = 1.0;
        swap[(d + r) * width + r] = 1.0;
    }
    let mut head = vec![0.0f32; width];
    head[..d].fill(1.0);
    head[2 * d] = inputs.quality_weight;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert(
        "embedding.user_id".into(),
        table(users, d, inputs.user_vectors)?,
    );
    tensors.insert(
        "embedding.item_id".into(),
        table(items, d, inputs.item_vectors)?,
    );
    tensors.insert(
        "embedding.quality".into(),
        table(usize::from(QUALITY_BUCKETS), 1, &quality)?,
    );
    tensors.insert(
        "cross.0.weight".into(),
        Tensor::from_vec(swap, (width, width), &device)?,
    );
    tensors.insert(
        "cross.0.bias".into(),
        Tensor::zeros(width, candle_core::DType::F32, &device)?,
    );
    tensors.insert(
        "head.weight".into(),
        Tensor::from_vec(head, (1, width), &device)?,
    );
    tensors.insert(
        "head.bias".into(),
        Tensor::zeros(1, candle_core::DType::F32, &device)?,
    );
    let files = RankerSpec::attached(false).files(bundle_dir);
    let vocabulary = |name: &str| format!("{RANKER_DIR}/{}", vocabulary_file(name));
    let weights = files.weights;
    if let Some(parent) = weights.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    candle_core::safetensors::save(&tensors, &weights)?;

    let feature =
        |name: &str, side, dim| FeatureSpec::categorical(name, side, &vocabulary(name), dim);
    let config = RankerConfig {
        version: version.to_string(),
        dcn: DcnConfig {
            input_dim: width,
            cross_layers: 1,
            projection_dim: None,
            diag_scale: 0.0,
            use_bias: true,
            cross_activation: Activation::Linear,
            structure: Structure::Parallel,
            deep_units: Vec::new(),
            deep_activation: Activation::Relu,
            head: Head::Regression,
            experts: None,
            heads: Vec::new(),
        },
        features: vec![
            feature("user_id", Side::User, d),
            feature("item_id", Side::Item, d),
            feature("quality", Side::Item, 1),
        ],
    };
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| ModelError::Config(format!("cannot encode the ranker config: {e}")))?;
    write_text(&files.config, &(config_text + "\n"))?;
    write_text(
        &bundle_dir.join(vocabulary("user_id")),
        &(inputs.user_ids.join("\n") + "\n"),
    )?;
    let item_vocab: Vec<String> = inputs.item_ids.iter().map(u64::to_string).collect();
    write_text(
        &bundle_dir.join(vocabulary("item_id")),
        &(item_vocab.join("\n") + "\n"),
    )?;
    let buckets: Vec<String> = (0..QUALITY_BUCKETS).map(|b| b.to_string()).collect();
    write_text(
        &bundle_dir.join(vocabulary("quality")),
        &(buckets.join("\n") + "\n"),
    )?;
    let mut table = String::from("item_id\titem_id\tquality\n");
    for (id, q) in inputs.item_ids.iter().zip(inputs.item_quality) {
        table.push_str(&format!("{id}\t{id}\t{q}\n"));
    }
    write_text(&files.item_features, &table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ranker, UserContext};

    #[test]
    fn scores_are_affinity_plus_quality() {
        let dir = tempfile::tempdir().unwrap();
        let user_ids = vec!["u1".to_string(), "u2".to_string()];
        let user_vectors = vec![1.0, 0.0, 0.5, 0.5];
        let item_ids = vec![10, 20, 30];
        let item_vectors = vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.6];
        let item_quality = vec![0, 9, 3];
        let inputs = PlantedInputs {
            dim: 2,
            user_ids: &user_ids,
            user_vectors: &user_vectors,
            item_ids: &item_ids,
            item_vectors: &item_vectors,
            item_quality: &item_quality,
            quality_weight: 0.3,
        };
        write(dir.path(), &inputs, "planted-test").unwrap();
        let ranker = Ranker::load(&RankerSpec::attached(false).files(dir.path())).unwrap();
        let user = UserContext {
            user_id: "u1".into(),
            ..Default::default()
        };
        let scored = ranker.score(&user, &[10, 20, 30], false).unwrap();
        // u1 = (1, 0): u·i = 1, 0, 0.6; Σu = 1; q = 0, 1, 1/3.
        let expected = [1.0 + 1.0, 0.0 + 1.0 + 0.3, 0.6 + 1.0 + 0.1];
        assert_eq!(scored.scores.len(), expected.len());
        for (got, want) in scored.scores.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert!(!scored.user_out_of_vocabulary);

        // An unknown user gets the zero (out-of-vocabulary) embedding: quality only.
        let stranger = UserContext {
            user_id: "nobody".into(),
            ..Default::default()
        };
        let scored = ranker.score(&stranger, &[20], false).unwrap();
        assert!(scored.user_out_of_vocabulary);
        assert!((scored.scores[0] - 0.3).abs() < 1e-6);

        let err = ranker
            .score(&user, &[10, 99, 98], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("2 unknown item(s): 99, 98"), "{err}");
        // Allowed: unknown items get out-of-vocabulary (zero) features.
        let lenient = ranker.score(&user, &[99], true).unwrap();
        assert!(
            (lenient.scores[0] - 1.0).abs() < 1e-6,
            "only Σu remains: {}",
            lenient.scores[0]
        );
    }
}
