//! Parity with TensorFlow Recommenders: every case in `fixtures/dcn_tfrs.json` was
//! produced by `tfrs.layers.dcn.Cross` 0.7.7 itself (tools/tfrs_fixtures); our
//! candle implementation must reproduce its outputs within 1e-5.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use recsys_model::{Activation, CrossLayer, DcnConfig, DcnV2, Structure, keras};
use serde_json::Value;

const TOLERANCE: f32 = 1e-5;

fn fixture() -> Value {
    let text = include_str!("fixtures/dcn_tfrs.json");
    serde_json::from_str(text).unwrap()
}

fn tensor(value: &Value) -> Tensor {
    let shape: Vec<usize> = value["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let values: Vec<f32> = value["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The case's weights under our names and in our layout.
fn weights(case: &Value) -> HashMap<String, Tensor> {
    case["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let name = w["name"].as_str().unwrap();
            let (ours, transpose) =
                keras::from_keras(name).unwrap_or_else(|| panic!("unmapped weight {name}"));
            let t = tensor(w);
            let t = if transpose {
                t.t().unwrap().contiguous().unwrap()
            } else {
                t
            };
            (ours, t)
        })
        .collect()
}

fn config(case: &Value, input_dim: usize) -> Option<DcnConfig> {
    let c = &case["config"];
    let activation = match c["preactivation"].as_str() {
        None => Activation::Linear,
        Some("relu") => Activation::Relu,
        // TFRS's test uses tf.zeros_like as an activation; it is not a Keras activation.
        Some(_) => return None,
    };
    let structure = match c["structure"].as_str().unwrap() {
        "dcn_parallel" => Structure::Parallel,
        _ => Structure::Stacked,
    };
    let deep_units = c["deep_units"]
        .as_array()
        .map(|u| u.iter().map(|v| v.as_u64().unwrap() as usize).collect())
        .unwrap_or_default();
    Some(DcnConfig {
        input_dim,
        cross_layers: c["num_cross_layers"].as_u64().unwrap() as usize,
        projection_dim: c["projection_dim"].as_u64().map(|p| p as usize),
        diag_scale: c["diag_scale"].as_f64().unwrap(),
        use_bias: c["use_bias"].as_bool().unwrap(),
        cross_activation: activation,
        structure,
        deep_units,
        deep_activation: Activation::Relu,
        head: recsys_model::dcn_v2::Head::Regression,
        experts: None,
        heads: Vec::new(),
    })
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_tfrs_case_matches() {
    let fixture = fixture();
    let mut checked = Vec::new();
    let mut skipped = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let x0 = tensor(&case["x0"]);
        let (_, dim) = x0.dims2().unwrap();
        let Some(cfg) = config(case, dim) else {
            skipped.push(name.to_string());
            continue;
        };
        let vb = VarBuilder::from_tensors(weights(case), DType::F32, &Device::Cpu);
        let output = match case["config"]["structure"].as_str().unwrap() {
            "single" | "cross_stack" => {
                let x = if case["x"].is_null() {
                    x0.clone()
                } else {
                    tensor(&case["x"])
                };
                let mut out = x;
                for i in 0..cfg.cross_layers {
                    let layer = CrossLayer::new(&cfg, vb.pp("cross").pp(i)).unwrap();
                    out = layer.forward(&x0, &out).unwrap();
                }
                out
            }
            _ => DcnV2::new(&cfg, vb).unwrap().forward_raw(&x0).unwrap(),
        };
        let diff = max_abs_diff(&output, &tensor(&case["expected"]));
        assert!(diff <= TOLERANCE, "{name}: max abs diff {diff}");
        if let Some(literal) = case.get("test_expected").filter(|v| !v.is_null()) {
            let diff = max_abs_diff(&output, &tensor(literal));
            assert!(
                diff <= TOLERANCE,
                "{name}: differs from dcn_test.py's literal by {diff}"
            );
        }
        checked.push(name.to_string());
    }
    eprintln!("checked {} cases, skipped {skipped:?}", checked.len());
    assert_eq!(skipped, vec!["golden_preactivation".to_string()]);
    assert!(checked.len() >= 17, "only {} cases checked", checked.len());
}

#[test]
fn a_weight_of_the_wrong_shape_is_named() {
    let case = &fixture()["cases"][7];
    let x0 = tensor(&case["x0"]);
    let (_, dim) = x0.dims2().unwrap();
    let mut cfg = config(case, dim).unwrap();
    cfg.input_dim = dim + 1;
    let vb = VarBuilder::from_tensors(weights(case), DType::F32, &Device::Cpu);
    let err = CrossLayer::new(&cfg, vb.pp("cross").pp(0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cross.0"), "{err}");
    assert!(err.contains(&format!("{}", dim + 1)), "{err}");
}
