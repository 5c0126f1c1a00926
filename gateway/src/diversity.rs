//! Diversity caps: at most `max_per_value` items of one value of an item
//! attribute in an answer (a home feed wants no more than two items of one
//! genre), applied after ranking over a larger candidate set (issue 19).
//!
//! The answer is picked greedily in ranking order: an item is taken unless
//! one of its values (a keyword list counts towards each keyword) has reached
//! the cap; items without the attribute (items upserted through the change
//! log have none yet) are never capped. When the candidates run out before k
//! items, the answer is short and says why.

use std::collections::HashMap;

use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::filter::{AttributeType, AttributeValue};
use recsys_proto::limits::MAX_ID_BYTES;
use recsys_proto::v1::{Diversity, RecommendedItem};

use crate::GatewayError;

/// How many more candidates than `k` a capped answer retrieves by default.
pub const CANDIDATES_PER_ITEM: u32 = 4;

/// A request's cap, checked against the bundle's attributes.
#[derive(Debug, Clone)]
pub struct Cap {
    attribute: String,
    max: u32,
}

impl Cap {
    /// Checks `diversity` against `attributes` (`None` when the bundle has
    /// none): the attribute must exist and not be a float, the cap at least 1.
    pub fn check(
        diversity: &Diversity,
        attributes: Option<&ItemAttributes>,
    ) -> Result<Self, GatewayError> {
        let field = "diversity.attribute";
        if diversity.attribute.len() > MAX_ID_BYTES {
            return Err(GatewayError::invalid(
                field,
                format!(
                    "is {} bytes, the limit is {MAX_ID_BYTES}",
                    diversity.attribute.len()
                ),
            ));
        }
        let attributes = attributes
            .ok_or_else(|| GatewayError::invalid(field, "the bundle has no item attributes"))?;
        match attributes.type_of(&diversity.attribute) {
            None => {
                return Err(GatewayError::invalid(
                    field,
                    format!(
                        "unknown attribute {:?}; the bundle's are {}",
                        diversity.attribute,
                        attributes
                            .schema()
                            .iter()
                            .map(|(name, _)| name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            Some(AttributeType::Float) => {
                return Err(GatewayError::invalid(
                    field,
                    format!(
                        "{:?} is a float: caps need keyword, keyword list, integer or boolean values",
                        diversity.attribute
                    ),
                ));
            }
            Some(_) => {}
        }
        if diversity.max_per_value == 0 {
            return Err(GatewayError::invalid(
                "diversity.max_per_value",
                "is 0, must be at least 1",
            ));
        }
        Ok(Self {
            attribute: diversity.attribute.clone(),
            max: diversity.max_per_value,
        })
    }

    /// The first `k` of `ranked` (best first) with the cap held, and a note
    /// when the cap left fewer than `k`.
    pub fn apply(
        &self,
        ranked: Vec<RecommendedItem>,
        k: usize,
        attributes: &ItemAttributes,
    ) -> (Vec<RecommendedItem>, String) {
        let candidates = ranked.len();
        let mut counts: HashMap<String, u32> = HashMap::new();
        let mut kept = Vec::with_capacity(k);
        let mut capped = 0usize;
        for item in ranked {
            if kept.len() == k {
                break;
            }
            let values = values(attributes.value(item.item_id, &self.attribute));
            if values
                .iter()
                .any(|value| counts.get(value).copied().unwrap_or(0) >= self.max)
            {
                capped += 1;
                continue;
            }
            for value in values {
                *counts.entry(value).or_default() += 1;
            }
            kept.push(item);
        }
        let note = if kept.len() < k {
            format!(
                "{} of {k} items: the cap of {} per {} left out {capped} of the {candidates} candidates; ask for more (retrieve_k) or a higher cap",
                kept.len(),
                self.max,
                self.attribute
            )
        } else {
            String::new()
        };
        (kept, note)
    }
}

/// The values an item counts towards.
fn values(value: Option<AttributeValue<'_>>) -> Vec<String> {
    match value {
        None => Vec::new(),
        Some(AttributeValue::Keyword(value)) => vec![value.to_string()],
        Some(AttributeValue::KeywordList(values)) => values.to_vec(),
        Some(AttributeValue::Integer(value)) => vec![value.to_string()],
        Some(AttributeValue::Boolean(value)) => vec![value.to_string()],
        Some(AttributeValue::Float(value)) => vec![format!("{value:?}")],
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn attributes() -> ItemAttributes {
        ItemAttributes::parse(
            "id\tgenre:keyword_list\trating:float\n\
             1\tComedy\t1\n2\tComedy|Drama\t2\n3\tDrama\t3\n4\tComedy\t4\n5\t\t5\n6\tDrama\t6\n",
            Path::new("attributes.tsv"),
        )
        .unwrap()
    }

    fn items(ids: &[u64]) -> Vec<RecommendedItem> {
        ids.iter()
            .map(|id| RecommendedItem {
                item_id: *id,
                ..Default::default()
            })
            .collect()
    }

    fn cap(attribute: &str, max: u32) -> Result<Cap, GatewayError> {
        Cap::check(
            &Diversity {
                attribute: attribute.into(),
                max_per_value: max,
                mmr_lambda: None,
            },
            Some(&attributes()),
        )
    }

    #[test]
    fn a_cap_holds_in_ranking_order_and_an_uncapped_item_passes() {
        let attributes = attributes();
        let (kept, note) =
            cap("genre", 1)
                .unwrap()
                .apply(items(&[1, 2, 3, 4, 5, 6]), 3, &attributes);
        // 1 takes Comedy; 2 (Comedy, Drama) is capped; 3 takes Drama; 4 is
        // capped; 5 has no genre.
        assert_eq!(
            kept.iter().map(|i| i.item_id).collect::<Vec<_>>(),
            vec![1, 3, 5]
        );
        assert_eq!(note, "");
        let (kept, note) = cap("genre", 1)
            .unwrap()
            .apply(items(&[1, 2, 4]), 3, &attributes);
        assert_eq!(kept.len(), 1);
        assert!(
            note.contains("1 of 3 items") && note.contains("left out 2 of the 3"),
            "{note}"
        );
    }

    #[test]
    fn bad_caps_are_refused_by_field() {
        for (attribute, max, words) in [
            (
                "colour",
                1,
                "unknown attribute \"colour\"; the bundle's are genre, rating",
            ),
            ("rating", 1, "is a float"),
            ("genre", 0, "max_per_value: is 0"),
        ] {
            let error = cap(attribute, max).unwrap_err().to_string();
            assert!(error.contains(words), "{error}");
        }
        let long = "a".repeat(MAX_ID_BYTES + 1);
        let error = cap(&long, 1).unwrap_err().to_string();
        assert!(
            error.contains(&format!("the limit is {MAX_ID_BYTES}")),
            "{error}"
        );
        let none = Cap::check(&Diversity::default(), None)
            .unwrap_err()
            .to_string();
        assert!(none.contains("no item attributes"), "{none}");
    }
}
