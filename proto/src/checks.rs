//! Checks of request values against [`crate::limits`] that more than one server
//! makes: the gateway checks everything its nodes would refuse, and the nodes
//! check again because anyone who reaches their port can call them. One
//! function each, so the gateway and the nodes cannot disagree on a limit.

use std::collections::HashMap;

use prost::Message;

use crate::limits::{
    MAX_FEATURE_NAME_BYTES, MAX_FEATURE_VALUE_BYTES, MAX_LIST_VALUES, MAX_USER_FEATURES,
    MAX_USER_FEATURES_BYTES, MAX_VALUE_MAGNITUDE,
};
use crate::v1::{FeatureValue, feature_value::Kind};

/// Why a request value breaks a limit; the text names the limit (the caller
/// names the field).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitError {
    /// A query of the wrong length.
    #[error("has {actual} values, the bundle's dimension is {expected}")]
    Dimensions {
        /// The bundle's dimension.
        expected: usize,
        /// Values sent.
        actual: usize,
    },
    /// A NaN, an infinity, or a number beyond [`MAX_VALUE_MAGNITUDE`].
    #[error(
        "value {position} is {value:e}, values must be finite and within ±{MAX_VALUE_MAGNITUDE:e}"
    )]
    Magnitude {
        /// Where in the query (0 for a feature).
        position: usize,
        /// The value.
        value: f32,
    },
    /// More features than [`MAX_USER_FEATURES`].
    #[error("has {0} features, the limit is {MAX_USER_FEATURES}")]
    FeatureCount(usize),
    /// A feature name longer than [`MAX_FEATURE_NAME_BYTES`].
    #[error("a feature name is {0} bytes, the limit is {MAX_FEATURE_NAME_BYTES}")]
    NameBytes(usize),
    /// A list longer than [`MAX_LIST_VALUES`].
    #[error("feature {name} has {values} values, the limit is {MAX_LIST_VALUES}")]
    ListValues {
        /// The feature.
        name: String,
        /// Values in its list.
        values: usize,
    },
    /// A string value longer than [`MAX_FEATURE_VALUE_BYTES`].
    #[error("feature {name} has a value of {bytes} bytes, the limit is {MAX_FEATURE_VALUE_BYTES}")]
    ValueBytes {
        /// The feature.
        name: String,
        /// The value's length.
        bytes: usize,
    },
    /// A float value that is not finite or beyond [`MAX_VALUE_MAGNITUDE`].
    #[error(
        "feature {name} is {value:e}, numbers must be finite and within ±{MAX_VALUE_MAGNITUDE:e}"
    )]
    FeatureMagnitude {
        /// The feature.
        name: String,
        /// The value.
        value: f32,
    },
    /// A feature set without a value.
    #[error("feature {0} has no value")]
    NoValue(String),
    /// Names and values together over [`MAX_USER_FEATURES_BYTES`].
    #[error("take {0} bytes, the limit is {MAX_USER_FEATURES_BYTES}")]
    FeatureBytes(usize),
}

/// Whether `value` is a number a request may carry: finite and within
/// [`MAX_VALUE_MAGNITUDE`].
pub fn in_bounds(value: f32) -> bool {
    value.is_finite() && value.abs() <= MAX_VALUE_MAGNITUDE
}

/// Checks a query embedding for a bundle of `dimensions`: its length, and every
/// value finite and within [`MAX_VALUE_MAGNITUDE`].
pub fn check_embedding(values: &[f32], dimensions: usize) -> Result<(), LimitError> {
    if values.len() != dimensions {
        return Err(LimitError::Dimensions {
            expected: dimensions,
            actual: values.len(),
        });
    }
    match values.iter().position(|v| !in_bounds(*v)) {
        Some(position) => Err(LimitError::Magnitude {
            position,
            value: values[position],
        }),
        None => Ok(()),
    }
}

/// Checks `user_features` against the limits every server shares: how many, how
/// long each name and string value, how many values in a list, every number
/// finite and bounded, and all of it within [`MAX_USER_FEATURES_BYTES`]. What a
/// feature's kind must be is the ranker's to say.
pub fn check_user_features(features: &HashMap<String, FeatureValue>) -> Result<(), LimitError> {
    if features.len() > MAX_USER_FEATURES {
        return Err(LimitError::FeatureCount(features.len()));
    }
    let mut bytes = 0usize;
    // Sorted, so that the feature an error names does not depend on hashing.
    let mut names: Vec<&String> = features.keys().collect();
    names.sort_unstable();
    for name in names {
        let value = &features[name];
        if name.len() > MAX_FEATURE_NAME_BYTES {
            return Err(LimitError::NameBytes(name.len()));
        }
        let long_value = |bytes: usize| LimitError::ValueBytes {
            name: name.clone(),
            bytes,
        };
        match &value.kind {
            None => return Err(LimitError::NoValue(name.clone())),
            Some(Kind::StringValue(s)) if s.len() > MAX_FEATURE_VALUE_BYTES => {
                return Err(long_value(s.len()));
            }
            Some(Kind::FloatValue(f)) if !in_bounds(*f) => {
                return Err(LimitError::FeatureMagnitude {
                    name: name.clone(),
                    value: *f,
                });
            }
            Some(Kind::StringList(list)) => {
                if list.values.len() > MAX_LIST_VALUES {
                    return Err(LimitError::ListValues {
                        name: name.clone(),
                        values: list.values.len(),
                    });
                }
                if let Some(long) = list
                    .values
                    .iter()
                    .find(|v| v.len() > MAX_FEATURE_VALUE_BYTES)
                {
                    return Err(long_value(long.len()));
                }
            }
            Some(_) => {}
        }
        bytes = bytes.saturating_add(name.len() + value.encoded_len());
    }
    if bytes > MAX_USER_FEATURES_BYTES {
        return Err(LimitError::FeatureBytes(bytes));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::StringList;
    use proptest::prelude::*;

    fn list(n: usize, len: usize) -> FeatureValue {
        FeatureValue {
            kind: Some(Kind::StringList(StringList {
                values: vec!["g".repeat(len); n],
            })),
        }
    }

    fn float(f: f32) -> FeatureValue {
        FeatureValue {
            kind: Some(Kind::FloatValue(f)),
        }
    }

    fn one(name: &str, value: FeatureValue) -> HashMap<String, FeatureValue> {
        HashMap::from([(name.to_string(), value)])
    }

    #[test]
    fn embeddings_are_finite_and_bounded() {
        assert!(check_embedding(&[1.0, -MAX_VALUE_MAGNITUDE], 2).is_ok());
        for bad in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.4e38,
            -3.4e38,
            1.000_001e6,
        ] {
            let error = check_embedding(&[0.0, bad], 2).unwrap_err();
            assert!(
                matches!(error, LimitError::Magnitude { position: 1, .. }),
                "{bad}"
            );
            assert!(error.to_string().contains("within ±1e6"), "{error}");
        }
        assert_eq!(
            check_embedding(&[0.0], 2).unwrap_err().to_string(),
            "has 1 values, the bundle's dimension is 2"
        );
    }

    #[test]
    fn every_feature_limit_is_named() {
        let message = |features| check_user_features(&features).unwrap_err().to_string();
        assert_eq!(
            message(one("genres", list(MAX_LIST_VALUES + 1, 1))),
            "feature genres has 1025 values, the limit is 1024"
        );
        assert!(check_user_features(&one("genres", list(MAX_LIST_VALUES, 1))).is_ok());
        assert_eq!(
            message(one("genres", list(1, MAX_FEATURE_VALUE_BYTES + 1))),
            "feature genres has a value of 1025 bytes, the limit is 1024"
        );
        assert!(message(one("age", float(f32::NAN))).contains("feature age is NaN"));
        assert!(message(one("age", float(-3.4e38))).contains("within ±1e6"));
        assert!(check_user_features(&one("age", float(1e6))).is_ok());
        assert!(message(one(&"n".repeat(129), float(1.0))).contains("the limit is 128"));
        assert_eq!(
            message(one("x", FeatureValue { kind: None })),
            "feature x has no value"
        );
        let many: HashMap<_, _> = (0..=MAX_USER_FEATURES)
            .map(|i| (i.to_string(), float(1.0)))
            .collect();
        assert_eq!(message(many), "has 65 features, the limit is 64");
        // Each list within its own limits, together over the byte budget.
        let big: HashMap<_, _> = (0..40)
            .map(|i| (i.to_string(), list(2, MAX_FEATURE_VALUE_BYTES)))
            .collect();
        assert!(message(big).contains("the limit is 65536"));
    }

    fn any_value() -> impl Strategy<Value = FeatureValue> {
        prop_oneof![
            ".{0,1100}".prop_map(|s| FeatureValue {
                kind: Some(Kind::StringValue(s))
            }),
            any::<i64>().prop_map(|i| FeatureValue {
                kind: Some(Kind::IntValue(i))
            }),
            any::<f32>().prop_map(float),
            (0usize..1100, 0usize..40).prop_map(|(n, len)| list(n, len)),
            Just(FeatureValue { kind: None }),
        ]
    }

    proptest! {
        /// Whatever the map, the check answers, and what it accepts is within
        /// every limit (so within the gateway's decoding budget too).
        #[test]
        fn accepted_features_are_within_every_limit(
            features in proptest::collection::hash_map(".{0,140}", any_value(), 0..70)
        ) {
            if check_user_features(&features).is_ok() {
                prop_assert!(features.len() <= MAX_USER_FEATURES);
                let mut bytes = 0;
                for (name, value) in &features {
                    prop_assert!(name.len() <= MAX_FEATURE_NAME_BYTES);
                    bytes += name.len() + value.encoded_len();
                    match value.kind.as_ref().unwrap() {
                        Kind::FloatValue(f) => prop_assert!(f.is_finite() && f.abs() <= MAX_VALUE_MAGNITUDE),
                        Kind::StringValue(s) => prop_assert!(s.len() <= MAX_FEATURE_VALUE_BYTES),
                        Kind::StringList(l) => prop_assert!(l.values.len() <= MAX_LIST_VALUES),
                        Kind::IntValue(_) => {}
                    }
                }
                prop_assert!(bytes <= MAX_USER_FEATURES_BYTES);
            }
        }

        /// Only finite values within the bound pass, at any position.
        #[test]
        fn accepted_embeddings_are_bounded(values in proptest::collection::vec(any::<f32>(), 0..16)) {
            match check_embedding(&values, values.len()) {
                Ok(()) => prop_assert!(values.iter().all(|v| in_bounds(*v))),
                Err(LimitError::Magnitude { position, value }) => {
                    prop_assert!(!in_bounds(value));
                    prop_assert!(values[..position].iter().all(|v| in_bounds(*v)));
                }
                Err(other) => prop_assert!(false, "{other}"),
            }
        }
    }
}
