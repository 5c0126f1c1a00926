//! What the ranker takes from a request: the kind of each user-side feature in
//! `ranker/config.json`, read without the model crate, so that the gateway can
//! refuse a value the ranking node would refuse (a list for a one-value
//! feature, text or a list for a number) before any work, instead of answering
//! OK and unranked for the caller's own mistake. The model crate reads the
//! whole config; this reads only the fields it needs and ignores the rest.

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

/// The network's part of the config: only the heads' names.
#[derive(Default, Deserialize)]
struct Network {
    #[serde(default)]
    heads: Vec<NamedHead>,
}

#[derive(Deserialize)]
struct NamedHead {
    name: String,
}

/// The ranker's user-side request features, from its config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RankerInputs {
    /// Every user-side feature but `user_id` (the request's own field).
    pub features: Vec<RankerInput>,
    /// A multi-objective ranker's head names, which a request may weigh;
    /// empty for a single output.
    pub heads: Vec<String>,
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
            heads: parsed.dcn.heads.into_iter().map(|h| h.name).collect(),
        })
    }

    /// The feature named `name`, when the ranker reads it from requests.
    pub fn get(&self, name: &str) -> Option<&RankerInput> {
        self.features.iter().find(|f| f.name == name)
    }
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
            ["rating", "click"]
        );
        std::fs::write(&path, "{").unwrap();
        assert!(RankerInputs::load(&path).is_err());
    }
}
