//! Rankers exported from trained TFRS models: every ranker in `fixtures/tfrs_export/`
//! was written by `tools/tfrs_export/export_ranker.py` from a TFRS DCN model, and
//! `expected.json` holds the scores that model computes itself (`model(features)`).
//! `Ranker::load` + `Ranker::score` must reproduce them within 1e-5, unknown users,
//! unknown and missing feature values and unknown items included.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use recsys_model::{Ranker, RankerFiles, Structure, UserContext};
use serde_json::Value;

const TOLERANCE: f32 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tfrs_export")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(model: &Value) -> Ranker {
    let bundle_dir = fixtures().join(model["bundle_dir"].as_str().unwrap());
    let file = |key: &str| bundle_dir.join(model[key].as_str().unwrap());
    Ranker::load(&RankerFiles {
        config: file("config"),
        weights: file("weights"),
        item_features: file("item_features"),
        user_features: None,
        bundle_dir: bundle_dir.clone(),
    })
    .unwrap_or_else(|e| panic!("{}: {e}", model["name"]))
}

fn user(request: &Value) -> UserContext {
    UserContext {
        user_id: request["user_id"].as_str().unwrap().to_string(),
        features: request["user_features"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
            .collect::<HashMap<_, _>>(),
    }
}

#[test]
fn exported_rankers_score_as_tfrs_does() {
    let expected = expected();
    let mut worst = 0f32;
    let mut scored = 0;
    for model in expected["models"].as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        let ranker = load(model);
        assert_eq!(
            ranker.version(),
            format!("tfrs-export-fixture-{name}"),
            "{name}"
        );
        let mut model_worst = 0f32;
        for request in model["requests"].as_array().unwrap() {
            let case = request["name"].as_str().unwrap();
            let items: Vec<u64> = request["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            let allow = request["allow_unknown_items"].as_bool().unwrap();
            let scores = ranker
                .score(&user(request), &items, allow)
                .unwrap_or_else(|e| panic!("{name} / {case}: {e}"));
            assert_eq!(
                scores.user_out_of_vocabulary,
                request["user_out_of_vocabulary"].as_bool().unwrap(),
                "{name} / {case}"
            );
            let want: Vec<f32> = request["scores"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(scores.scores.len(), want.len(), "{name} / {case}");
            for (got, want) in scores.scores.iter().zip(&want) {
                let diff = (got - want).abs();
                assert!(
                    diff <= TOLERANCE,
                    "{name} / {case}: {got} vs TFRS {want} (diff {diff})"
                );
                model_worst = model_worst.max(diff);
                scored += 1;
            }
        }
        eprintln!("{name}: max abs diff against TFRS {model_worst:e}");
        worst = worst.max(model_worst);
    }
    eprintln!("{scored} scores, max abs diff against TFRS {worst:e}");
    assert!(scored >= 40, "only {scored} scores checked");
}

/// The fixtures cover what the exporter claims to support: full and low rank,
/// one and two cross layers, stacked and parallel, regression and logit heads.
#[test]
fn fixtures_cover_both_structures_and_ranks() {
    let expected = expected();
    let models = expected["models"].as_array().unwrap();
    let config = |name: &str| {
        let model = models.iter().find(|m| m["name"] == name).unwrap();
        let bundle_dir = fixtures().join(model["bundle_dir"].as_str().unwrap());
        let text =
            std::fs::read_to_string(bundle_dir.join(model["config"].as_str().unwrap())).unwrap();
        serde_json::from_str::<recsys_model::RankerConfig>(&text).unwrap()
    };
    let tutorial = config("tutorial");
    assert_eq!(tutorial.dcn.structure, Structure::Stacked);
    assert_eq!(tutorial.dcn.projection_dim, None);
    assert_eq!(tutorial.dcn.cross_layers, 1);
    assert_eq!(tutorial.features.len(), 6);
    let variant = config("variant");
    assert_eq!(variant.dcn.structure, Structure::Parallel);
    assert_eq!(variant.dcn.projection_dim, Some(3));
    assert_eq!(variant.dcn.cross_layers, 2);
    assert!(variant.dcn.diag_scale > 0.0);
    assert_eq!(variant.dcn.head, recsys_model::dcn_v2::Head::Logit);

    // The item tables: the tutorial's is its movie vocabulary, the variant's adds a
    // movie the model never saw.
    assert_eq!(load(&models[0]).items(), 8);
    let variant_ranker = load(&models[1]);
    assert_eq!(variant_ranker.items(), 9);
    assert!(variant_ranker.knows_item(99));
}
