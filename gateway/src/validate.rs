//! Request validation: every limit is named in the error, and nothing invalid
//! reaches a shard.

use recsys_proto::checks::{check_embedding, check_user_features};
use recsys_proto::limits::{self, MAX_ID_BYTES};
use std::collections::HashMap;

use recsys_bundle::ranker_inputs::{InputKind, RankerInputs};
use recsys_proto::v1::{
    FeatureValue, RecommendRequest, feature_value::Kind, recommend_request::Query,
};

use crate::GatewayError;

/// Limits on `Recommend` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecommendLimits {
    /// Largest `k`.
    pub max_k: u32,
    /// Largest `retrieve_k`.
    pub max_retrieve_k: u32,
    /// Most `exclude_item_ids`.
    pub max_exclusions: usize,
}

/// The API's limits (`recsys_proto::limits`), which every node accepts.
impl Default for RecommendLimits {
    fn default() -> Self {
        Self {
            max_k: limits::MAX_K,
            max_retrieve_k: limits::MAX_RETRIEVE_K,
            max_exclusions: limits::MAX_EXCLUSIONS,
        }
    }
}

/// What a valid request asks for, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Items to return.
    pub k: u32,
    /// Candidates to retrieve (at least `k`).
    pub retrieve_k: u32,
}

/// Checks `request` for a bundle of `dimensions`.
pub fn validate(
    request: &RecommendRequest,
    dimensions: usize,
    limits: &RecommendLimits,
) -> Result<Checked, GatewayError> {
    let similar = request.similar_to_item_id.is_some();
    match &request.query {
        None if !similar => {
            return Err(GatewayError::invalid(
                "query",
                "empty request: set user_id, query_embedding or similar_to_item_id",
            ));
        }
        None => {}
        Some(Query::QueryEmbedding(_)) if similar => {
            return Err(GatewayError::invalid(
                "similar_to_item_id",
                "cannot be combined with query_embedding: the item's own vector is the query",
            ));
        }
        Some(Query::UserId(user_id)) if user_id.is_empty() => {
            return Err(GatewayError::invalid("user_id", "is empty"));
        }
        Some(Query::UserId(user_id)) if user_id.len() > MAX_ID_BYTES => {
            return Err(GatewayError::invalid(
                "user_id",
                format!("is {} bytes, the limit is {MAX_ID_BYTES}", user_id.len()),
            ));
        }
        Some(Query::QueryEmbedding(embedding)) => {
            check_embedding(&embedding.values, dimensions)
                .map_err(|e| GatewayError::invalid("query_embedding", e.to_string()))?;
        }
        Some(Query::UserId(_)) => {}
    }
    if request.k == 0 || request.k > limits.max_k {
        return Err(GatewayError::invalid(
            "k",
            format!("is {}, must be between 1 and {}", request.k, limits.max_k),
        ));
    }
    let retrieve_k = if request.retrieve_k == 0 {
        request.k
    } else {
        request.retrieve_k
    };
    if retrieve_k < request.k || retrieve_k > limits.max_retrieve_k {
        return Err(GatewayError::invalid(
            "retrieve_k",
            format!(
                "is {retrieve_k}, must be between k ({}) and {}",
                request.k, limits.max_retrieve_k
            ),
        ));
    }
    // The item of a similar-items request is excluded too, and counts.
    let excluded = request.exclude_item_ids.len() + usize::from(similar);
    if excluded > limits.max_exclusions {
        return Err(GatewayError::invalid(
            "exclude_item_ids",
            format!(
                "has {excluded} ids{}, the limit is {}",
                if similar {
                    " (similar_to_item_id counts as one)"
                } else {
                    ""
                },
                limits.max_exclusions
            ),
        ));
    }
    // What a ranking node refuses is refused here, before any work: otherwise
    // the answer would come back OK and unranked for the caller's own mistake.
    check_user_features(&request.user_features)
        .map_err(|e| GatewayError::invalid("user_features", e.to_string()))?;
    if let Some(options) = &request.options {
        let p = options.top_k_probability;
        if !(0.0..=1.0).contains(&p) {
            return Err(GatewayError::invalid(
                "options.top_k_probability",
                format!("is {p}, must be between 0 and 1 (0 means the default)"),
            ));
        }
        let target = options.recall_target;
        if !(0.0..=1.0).contains(&target) {
            return Err(GatewayError::invalid(
                "options.recall_target",
                format!("is {target}, must be between 0 and 1 (0 means the default)"),
            ));
        }
    }
    Ok(Checked {
        k: request.k,
        retrieve_k,
    })
}

/// Checks a request's head weights against the ranker's heads as the ranking
/// node will (`recsys_bundle::ranker_inputs::head_weights`, with the API's
/// [`recsys_proto::limits::MAX_HEAD_WEIGHT`]): refused here rather than
/// answered in retrieval order for the caller's own mistake.
pub fn check_head_weights(
    weights: &HashMap<String, f32>,
    inputs: &RankerInputs,
) -> Result<(), GatewayError> {
    use recsys_proto::limits::{MAX_HEAD_WEIGHT, MAX_HEADS};
    // A bound before the names are sorted: no ranker has more heads.
    if weights.len() > MAX_HEADS {
        return Err(GatewayError::invalid(
            "head_weights",
            format!("{} entries, the limit is {MAX_HEADS}", weights.len()),
        ));
    }
    recsys_bundle::ranker_inputs::head_weights(&inputs.heads, weights, MAX_HEAD_WEIGHT)
        .map(|_| ())
        .map_err(|reason| GatewayError::invalid("head_weights", reason))
}

/// Checks each user feature the ranker reads against its kind, as the ranking
/// node would (`recsys_model::features`): a categorical feature takes one value
/// (text or an integer), a multi-hot one text, an integer or a list, a numeric
/// one a number (or text or an integer that parses as one) that stays finite
/// in f32 once standardized. Features the ranker does not read pass.
pub fn check_ranker_kinds(
    features: &HashMap<String, FeatureValue>,
    inputs: &RankerInputs,
) -> Result<(), GatewayError> {
    let mut names: Vec<&String> = features.keys().collect();
    names.sort_unstable();
    for name in names {
        let (Some(input), Some(value)) = (inputs.get(name), features[name].kind.as_ref()) else {
            continue;
        };
        let refused = |why: String| {
            Err(GatewayError::invalid(
                "user_features",
                format!("feature {name}: {why}"),
            ))
        };
        let number = match (input.kind, value) {
            (InputKind::Categorical, Kind::StringValue(_) | Kind::IntValue(_))
            | (
                InputKind::MultiHot,
                Kind::StringValue(_) | Kind::IntValue(_) | Kind::StringList(_),
            ) => {
                continue;
            }
            (InputKind::Categorical, _) => {
                return refused(format!(
                    "{} given, the feature is categorical (one value)",
                    describe(value)
                ));
            }
            (InputKind::MultiHot, _) => {
                return refused(format!(
                    "{} given, the feature is a list of values",
                    describe(value)
                ));
            }
            (InputKind::Numeric, Kind::FloatValue(x)) => f64::from(*x),
            (InputKind::Numeric, Kind::IntValue(i)) => *i as f64,
            (InputKind::Numeric, Kind::StringValue(text)) => match text.parse::<f64>() {
                Ok(x) if x.is_finite() => x,
                _ => {
                    return refused(format!(
                        "{text:?} is not a finite number, the feature is numeric"
                    ));
                }
            },
            (InputKind::Numeric, Kind::StringList(_)) => {
                return refused("a list given, the feature needs a finite number".into());
            }
        };
        let standardized = match input.normalization {
            Some(n) => (number - n.mean) / n.std,
            None => number,
        } as f32;
        if !standardized.is_finite() {
            return refused(format!(
                "{number} is out of range: standardized it does not fit in f32"
            ));
        }
    }
    Ok(())
}

fn describe(value: &Kind) -> &'static str {
    match value {
        Kind::StringValue(_) | Kind::IntValue(_) => "a single value",
        Kind::FloatValue(_) => "a number",
        Kind::StringList(_) => "a list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_proto::v1::{QueryEmbedding, RecommendOptions};

    fn embedding(values: Vec<f32>, k: u32) -> RecommendRequest {
        RecommendRequest {
            query: Some(Query::QueryEmbedding(QueryEmbedding { values })),
            k,
            ..Default::default()
        }
    }

    fn message(request: RecommendRequest) -> String {
        validate(&request, 2, &RecommendLimits::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn names_field_and_limit() {
        assert!(
            message(RecommendRequest {
                k: 1,
                ..Default::default()
            })
            .contains("empty request")
        );
        assert!(
            message(embedding(vec![1.0], 1))
                .contains("query_embedding: has 1 values, the bundle's dimension is 2")
        );
        assert!(message(embedding(vec![1.0, f32::NAN], 1)).contains("value 1 is NaN"));
        assert!(message(embedding(vec![f32::NEG_INFINITY, 0.0], 1)).contains("value 0 is -inf"));
        // Finite but enough to overflow a score: refused with the bound.
        assert_eq!(
            message(embedding(vec![3.4e38, 0.0], 1)),
            "query_embedding: value 0 is 3.4e38, values must be finite and within ±1e6"
        );
        assert!(
            message(embedding(vec![1.0, 0.0], 0)).contains("k: is 0, must be between 1 and 1000")
        );
        assert!(message(embedding(vec![1.0, 0.0], 1001)).contains("between 1 and 1000"));
        let mut r = embedding(vec![1.0, 0.0], 10);
        r.retrieve_k = 5;
        assert!(message(r).contains("retrieve_k: is 5, must be between k (10) and 10000"));
        let mut r = embedding(vec![1.0, 0.0], 10);
        r.exclude_item_ids = (0..10_001).collect();
        assert!(message(r).contains("exclude_item_ids: has 10001 ids, the limit is 10000"));
        let mut r = embedding(vec![1.0, 0.0], 10);
        r.options = Some(RecommendOptions {
            top_k_probability: 1.5,
            ..Default::default()
        });
        assert!(message(r).contains("top_k_probability"));
        for target in [-0.5, 1.5, f32::NAN] {
            let mut r = embedding(vec![1.0, 0.0], 10);
            r.options = Some(RecommendOptions {
                recall_target: target,
                ..Default::default()
            });
            assert!(message(r).contains("options.recall_target: is"), "{target}");
        }
        // A list the ranking node would refuse is refused here, with its limit.
        let mut r = embedding(vec![1.0, 0.0], 10);
        let list = |n: usize| recsys_proto::v1::FeatureValue {
            kind: Some(recsys_proto::v1::feature_value::Kind::StringList(
                recsys_proto::v1::StringList {
                    values: vec!["g".into(); n],
                },
            )),
        };
        r.user_features
            .insert("genres".into(), list(limits::MAX_LIST_VALUES + 1));
        assert_eq!(
            message(r.clone()),
            "user_features: feature genres has 1025 values, the limit is 1024"
        );
        r.user_features
            .insert("genres".into(), list(limits::MAX_LIST_VALUES));
        assert!(validate(&r, 2, &RecommendLimits::default()).is_ok());
        let r = RecommendRequest {
            query: Some(Query::UserId(String::new())),
            k: 1,
            ..Default::default()
        };
        assert!(message(r).contains("user_id: is empty"));
    }

    #[test]
    fn values_of_the_wrong_kind_for_the_ranker_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"features": [
                {"name": "age", "side": "user", "kind": "numeric",
                 "normalization": {"mean": 0.0, "std": 1e-40}},
                {"name": "zip", "side": "user"},
                {"name": "liked", "side": "user", "kind": "multi_hot"}
            ]}"#,
        )
        .unwrap();
        let inputs = RankerInputs::load(&config).unwrap();
        let value = |kind| FeatureValue { kind: Some(kind) };
        let check = |name: &str, kind| {
            let features = HashMap::from([(name.to_string(), value(kind))]);
            check_ranker_kinds(&features, &inputs).map_err(|e| e.to_string())
        };
        let list = || {
            Kind::StringList(recsys_proto::v1::StringList {
                values: vec!["a".into()],
            })
        };
        assert!(check("zip", Kind::StringValue("94110".into())).is_ok());
        assert!(check("zip", Kind::IntValue(94110)).is_ok());
        assert!(check("liked", list()).is_ok());
        assert!(check("other", list()).is_ok());
        assert_eq!(
            check("zip", list()).unwrap_err(),
            "user_features: feature zip: a list given, the feature is categorical (one value)"
        );
        assert!(
            check("liked", Kind::FloatValue(1.0))
                .unwrap_err()
                .contains("list of values")
        );
        assert!(
            check("age", Kind::StringValue("old".into()))
                .unwrap_err()
                .contains("not a finite number")
        );
        assert!(
            check("age", list())
                .unwrap_err()
                .contains("needs a finite number")
        );
        // 1 / 1e-40 overflows f32.
        assert!(
            check("age", Kind::FloatValue(1.0))
                .unwrap_err()
                .contains("does not fit in f32")
        );
        assert!(check("age", Kind::FloatValue(0.0)).is_ok());
    }

    #[test]
    fn retrieve_k_defaults_to_k() {
        let checked = validate(
            &embedding(vec![1.0, 0.0], 7),
            2,
            &RecommendLimits::default(),
        )
        .unwrap();
        assert_eq!(
            checked,
            Checked {
                k: 7,
                retrieve_k: 7
            }
        );
    }
}
