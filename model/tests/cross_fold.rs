//! The folded first layers (`cross_fold`) must score as the plain forward pass:
//! rankers of the foldable shape with random weights, full and low rank, with and
//! without biases and `diag_scale`, user and item features interleaved in x0,
//! scored folded and unfolded, alone and in batches.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use recsys_model::{
    Activation, DcnConfig, FeatureInput, FeatureKind, FeatureSpec, Ranker, RankerConfig,
    RankerFiles, Side, Structure, UserContext,
};

const ITEMS: u64 = 120;
const USERS: usize = 40;

/// Deterministic values in [-scale, scale) (a 64-bit LCG), so a failure reproduces.
struct Values(u64);

impl Values {
    fn next(&mut self, scale: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| self.next(scale)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

struct Shape {
    projection_dim: Option<usize>,
    use_bias: bool,
    diag_scale: f64,
    deep_units: Vec<usize>,
}

/// Features in x0 order: item, user, item, user (numeric), so both sides are split.
fn features() -> Vec<(FeatureSpec, usize)> {
    let numeric = FeatureSpec {
        name: "age".into(),
        side: Side::User,
        kind: FeatureKind::Numeric,
        vocabulary: String::new(),
        dim: 1,
        pooling: None,
        normalization: None,
    };
    vec![
        (
            FeatureSpec::categorical("movie_id", Side::Item, "vocab/movie_id.txt", 6),
            ITEMS as usize,
        ),
        (
            FeatureSpec::categorical("user_id", Side::User, "vocab/user_id.txt", 5),
            USERS,
        ),
        (
            FeatureSpec::categorical("genre", Side::Item, "vocab/genre.txt", 3),
            4,
        ),
        (numeric, 0),
    ]
}

fn write_ranker(dir: &Path, shape: &Shape, seed: u64) -> Ranker {
    let mut values = Values(seed);
    std::fs::create_dir_all(dir.join("vocab")).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut specs = Vec::new();
    for (spec, size) in features() {
        if spec.kind == FeatureKind::Categorical {
            let words: Vec<String> = (1..=size).map(|i| format!("{}-{i}", spec.name)).collect();
            std::fs::write(dir.join(&spec.vocabulary), words.join("\n") + "\n").unwrap();
            tensors.insert(
                format!("embedding.{}", spec.name),
                values.tensor(&[size + 1, spec.dim], 0.5),
            );
        }
        specs.push(spec);
    }
    let dim: usize = specs.iter().map(|s| s.dim).sum();
    match shape.projection_dim {
        None => {
            tensors.insert("cross.0.weight".into(), values.tensor(&[dim, dim], 0.3));
        }
        Some(rank) => {
            tensors.insert("cross.0.u".into(), values.tensor(&[rank, dim], 0.3));
            tensors.insert("cross.0.v".into(), values.tensor(&[dim, rank], 0.3));
        }
    }
    if shape.use_bias {
        tensors.insert("cross.0.bias".into(), values.tensor(&[dim], 0.2));
    }
    let mut width = dim;
    for (j, &units) in shape.deep_units.iter().enumerate() {
        tensors.insert(
            format!("deep.{j}.weight"),
            values.tensor(&[units, width], 0.4),
        );
        tensors.insert(format!("deep.{j}.bias"), values.tensor(&[units], 0.1));
        width = units;
    }
    tensors.insert("head.weight".into(), values.tensor(&[1, width], 0.4));
    tensors.insert("head.bias".into(), values.tensor(&[1], 0.1));
    candle_core::safetensors::save(&tensors, dir.join("weights.safetensors")).unwrap();
    let config = RankerConfig {
        version: "fold-test".into(),
        dcn: DcnConfig {
            input_dim: dim,
            cross_layers: 1,
            projection_dim: shape.projection_dim,
            diag_scale: shape.diag_scale,
            use_bias: shape.use_bias,
            cross_activation: Activation::Linear,
            structure: Structure::Stacked,
            deep_units: shape.deep_units.clone(),
            deep_activation: Activation::Relu,
            head: recsys_model::dcn_v2::Head::Regression,
            experts: None,
            heads: Vec::new(),
        },
        features: specs,
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let mut table = String::from("item_id\tmovie_id\tgenre\n");
    for item in 1..=ITEMS {
        table.push_str(&format!(
            "{item}\tmovie_id-{item}\tgenre-{}\n",
            item % 4 + 1
        ));
    }
    std::fs::write(dir.join("item_features.tsv"), table).unwrap();
    Ranker::load(&RankerFiles::in_dir(dir)).unwrap()
}

fn user(id: &str, age: f64) -> UserContext {
    UserContext {
        user_id: id.into(),
        features: HashMap::from([("age".to_string(), FeatureInput::Number(age))]),
    }
}

fn assert_close(folded: &[f32], plain: &[f32], what: &str) {
    assert_eq!(folded.len(), plain.len(), "{what}");
    for (i, (a, b)) in folded.iter().zip(plain).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}, candidate {i}: folded {a}, plain {b}"
        );
    }
}

#[test]
fn folded_rankers_score_as_the_plain_forward_pass() {
    let shapes = [
        Shape {
            projection_dim: None,
            use_bias: true,
            diag_scale: 0.0,
            deep_units: vec![12, 7],
        },
        Shape {
            projection_dim: Some(4),
            use_bias: true,
            diag_scale: 0.5,
            deep_units: vec![9],
        },
        Shape {
            projection_dim: None,
            use_bias: false,
            diag_scale: 1.5,
            deep_units: vec![16, 8, 4],
        },
    ];
    // Sizes below and above the item width (9), unknown items (allowed) included.
    let candidates: Vec<u64> = (1..=ITEMS).chain([500, 501]).collect();
    for (n, shape) in shapes.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let folded = write_ranker(dir.path(), shape, 17 + n as u64);
        assert!(folded.folded(), "shape {n} should fold");
        let plain = write_ranker(dir.path(), shape, 17 + n as u64).without_fold();
        assert!(!plain.folded() && plain.precomputed());
        let users = [user("user_id-3", 0.7), user("stranger", -1.2)];
        for size in [1, 8, 9, 10, 64, candidates.len()] {
            for who in &users {
                let items = &candidates[candidates.len() - size..];
                let a = folded.score(who, items, true).unwrap();
                let b = plain.score(who, items, true).unwrap();
                assert_eq!(a.user_out_of_vocabulary, b.user_out_of_vocabulary);
                assert_close(&a.scores, &b.scores, &format!("shape {n}, {size} items"));
            }
        }
        // A batch mixing folded and unfolded requests scores as each alone.
        let (small, large): (&[u64], &[u64]) = (&[4, 5, 6], &candidates[..50]);
        let requests: Vec<(&UserContext, &[u64])> =
            vec![(&users[0], large), (&users[1], small), (&users[1], large)];
        for ((who, items), outcome) in requests.iter().zip(folded.score_batch(&requests, false)) {
            let alone = plain.score(who, items, false).unwrap();
            assert_close(&outcome.unwrap().scores, &alone.scores, "batch");
        }
    }
}

/// Models of another shape keep the plain path.
#[test]
fn other_shapes_do_not_fold() {
    let dir = tempfile::tempdir().unwrap();
    let shape = Shape {
        projection_dim: None,
        use_bias: true,
        diag_scale: 0.0,
        deep_units: vec![],
    };
    let ranker = write_ranker(dir.path(), &shape, 3);
    assert!(!ranker.folded());
    let scores = ranker
        .score(
            &user("user_id-1", 0.0),
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            false,
        )
        .unwrap();
    assert!(scores.scores.iter().all(|s| s.is_finite()));
}
