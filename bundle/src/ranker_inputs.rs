//! What the ranker takes from a request: the kind of each user-side feature in
//! `ranker/config.json`, read without the model crate, so that the gateway can
//! refuse a value the ranking node would refuse (a list for a one-value
//! feature, text or a list for a number) before any work, instead of answering
//! OK and unranked for the caller's own mistake. The model crate reads the
//! whole config; this reads only the fields it needs and ignores the rest.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::BundleError;

/// A user-side feature's kind, as the ranker config spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// One value.
    #[default]
    Categorical,
    /// A list of values (one value counts as a list of one).
    MultiHot,
    /// A number, standardized by `(x - mean) / std`.
    Numeric,
}

/// A numeric feature's standardization.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct InputNormalization {
    /// Subtracted first.
    pub mean: f64,
    /// Divided by next.
    pub std: f64,
}

/// One user-side feature the ranker reads from requests.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RankerInput {
    /// Its name in `user_features`.
    pub name: String,
    /// What value it takes.
    #[serde(default)]
    pub kind: InputKind,
    /// Numeric standardization.
    #[serde(default)]
    pub normalization: Option<InputNormalization>,
    side: String,
}

#[derive(Deserialize)]
struct Config {
    features: Vec<RankerInput>,
    #[serde(default)]
    dcn: Network,
}

/// The network's part of the config: only the heads' names and weights.
#[derive(Default, Deserialize)]
struct Network {
    #[serde(default)]
    heads: Vec<WeighedHead>,
}

#[derive(Deserialize)]
struct WeighedHead {
    name: String,
    weight: f64,
}

/// The ranker's user-side request features, from its config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankerInputs {
    /// Every user-side feature but `user_id` (the request's own field).
    pub features: Vec<RankerInput>,
    /// A multi-objective ranker's heads with their weights in the combined
    /// score, which a request may override; empty for a single output.
    pub heads: Vec<(String, f64)>,
}

impl RankerInputs {
    /// Reads the user-side features of the ranker config at `config`.
    pub fn load(config: &Path) -> Result<Self, BundleError> {
        let text = std::fs::read_to_string(config).map_err(|e| BundleError::io(config, e))?;
        let parsed: Config = serde_json::from_str(&text)
            .map_err(|e| BundleError::corrupt(config, format!("not a ranker config: {e}")))?;
        Ok(Self {
            features: parsed
                .features
                .into_iter()
                .filter(|f| f.side == "user" && f.name != "user_id")
                .collect(),
            heads: parsed
                .dcn
                .heads
                .into_iter()
                .map(|h| (h.name, h.weight))
                .collect(),
        })
    }

    /// The feature named `name`, when the ranker reads it from requests.
    pub fn get(&self, name: &str) -> Option<&RankerInput> {
        self.features.iter().find(|f| f.name == name)
    }
}

/// The weights of a ranker's combined score for one request: each head's own
/// (`heads`, name and weight, in score order) unless `overrides` names it.
/// Refused, with a reason for the `head_weights` field: overrides for a
/// single-output ranker, a name the ranker lacks, a weight that is not
/// finite or not within `[0, max_weight]`, or weights that are all 0 once
/// merged. The gateway checks a request with this before any work and the
/// ranking node before it scores, so the two never disagree.
pub fn head_weights(
    heads: &[(String, f64)],
    overrides: &HashMap<String, f32>,
    max_weight: f64,
) -> Result<Vec<f64>, String> {
    if overrides.is_empty() {
        return Ok(heads.iter().map(|(_, weight)| *weight).collect());
    }
    if heads.is_empty() {
        return Err("the ranker has a single output, no heads to weigh".into());
    }
    let mut names: Vec<&String> = overrides.keys().collect();
    names.sort_unstable();
    for name in names {
        if !heads.iter().any(|(head, _)| head == name) {
            let known: Vec<&str> = heads.iter().map(|(head, _)| head.as_str()).collect();
            return Err(format!(
                "the ranker has no head {name:?} (it has {})",
                known.join(", ")
            ));
        }
        let weight = f64::from(overrides[name]);
        if !(0.0..=max_weight).contains(&weight) {
            return Err(format!("{name}: {weight} is not within [0, {max_weight}]"));
        }
    }
    let weights: Vec<f64> = heads
        .iter()
        .map(|(name, weight)| overrides.get(name).map_or(*weight, |&w| f64::from(w)))
        .collect();
    if weights.iter().all(|&w| w == 0.0) {
        return Err("every head weighs 0, which ranks nothing".into());
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_side_kinds_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"version": "r1", "dcn": {"anything": 1}, "features": [
                {"name": "user_id", "side": "user", "vocabulary": "v", "dim": 4},
                {"name": "age", "side": "user", "kind": "numeric", "dim": 1,
                 "normalization": {"mean": 30.0, "std": 10.0}},
                {"name": "liked", "side": "user", "kind": "multi_hot", "vocabulary": "v", "dim": 4},
                {"name": "genre", "side": "item", "vocabulary": "v", "dim": 4}
            ]}"#,
        )
        .unwrap();
        let inputs = RankerInputs::load(&path).unwrap();
        let names: Vec<_> = inputs.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["age", "liked"]);
        assert_eq!(inputs.get("age").unwrap().kind, InputKind::Numeric);
        assert_eq!(inputs.get("liked").unwrap().kind, InputKind::MultiHot);
        assert!(inputs.get("genre").is_none());
        assert!(inputs.heads.is_empty());
        std::fs::write(
            &path,
            r#"{"dcn": {"heads": [{"name": "rating", "kind": "regression", "weight": 0.2},
                {"name": "click", "kind": "logit", "weight": 1.0}]}, "features": []}"#,
        )
        .unwrap();
        assert_eq!(
            RankerInputs::load(&path).unwrap().heads,
            [("rating".to_string(), 0.2), ("click".to_string(), 1.0)]
        );
        std::fs::write(&path, "{").unwrap();
        assert!(RankerInputs::load(&path).is_err());
    }

    #[test]
    fn head_weights_merge_the_overrides_and_refuse_what_ranks_nothing() {
        let heads = vec![("rating".to_string(), 0.0), ("click".to_string(), 1.0)];
        let weights = |pairs: &[(&str, f32)]| -> HashMap<String, f32> {
            pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
        };
        assert_eq!(head_weights(&heads, &weights(&[]), 1e6), Ok(vec![0.0, 1.0]));
        assert_eq!(
            head_weights(&heads, &weights(&[("rating", 2.0)]), 1e6),
            Ok(vec![2.0, 1.0])
        );
        // The config's 0 and the request's 0: nothing left to rank by, which
        // the gateway can only tell knowing the config's weights.
        let error = head_weights(&heads, &weights(&[("click", 0.0)]), 1e6).unwrap_err();
        assert!(error.contains("every head weighs 0"), "{error}");
        let error = head_weights(&[], &weights(&[("click", 1.0)]), 1e6).unwrap_err();
        assert!(error.contains("single output"), "{error}");
    }
}
