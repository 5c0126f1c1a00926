//! A request's attribute filter (issue 19): the structured `filter` message or
//! the `filter_expression` text, bounded, checked against the bundle's item
//! attributes (unknown attributes and type mismatches are `INVALID_ARGUMENT`
//! naming the attribute), and written in the canonical text form every shard's
//! search receives and tests inside its traversal.

use prost::Message;
use recsys_bundle::attributes::{ItemAttributes, RowFilter};
use recsys_bundle::filter::{Bound, Filter, Literal, MAX_FILTER_DEPTH, MAX_FILTER_NODES};
use recsys_proto::limits::{MAX_FILTER_BYTES, MAX_ID_BYTES};
use recsys_proto::v1::{self as wire, RecommendRequest, attribute_literal, filter::Kind};

use crate::GatewayError;

/// A request's filter, checked.
#[derive(Debug, Clone)]
pub struct RequestFilter {
    /// The text form the shards' searches carry.
    pub text: String,
    /// Compiled against the bundle's attributes: what the shards' answers are
    /// checked against.
    pub compiled: RowFilter,
}

/// The request's filter, or `None` without one.
pub fn request_filter(
    request: &RecommendRequest,
    attributes: Option<&ItemAttributes>,
) -> Result<Option<RequestFilter>, GatewayError> {
    let (field, filter) = match (&request.filter, request.filter_expression.as_str()) {
        (None, "") => return Ok(None),
        (Some(_), text) if !text.is_empty() => {
            return Err(GatewayError::invalid(
                "filter",
                "give filter or filter_expression, not both",
            ));
        }
        (Some(filter), _) => {
            let bytes = filter.encoded_len();
            if bytes > 2 * MAX_FILTER_BYTES {
                return Err(GatewayError::invalid(
                    "filter",
                    format!("is {bytes} bytes, the limit is {}", 2 * MAX_FILTER_BYTES),
                ));
            }
            let mut nodes = 0;
            let filter = from_wire(filter, 0, &mut nodes)
                .map_err(|reason| GatewayError::invalid("filter", reason))?;
            ("filter", filter)
        }
        (None, text) => {
            let filter = Filter::parse(text)
                .map_err(|e| GatewayError::invalid("filter_expression", e.to_string()))?;
            ("filter_expression", filter)
        }
    };
    let attributes = attributes
        .ok_or_else(|| GatewayError::invalid(field, "the bundle has no item attributes"))?;
    let compiled = attributes
        .compile(&filter)
        .map_err(|e| GatewayError::invalid(field, e.to_string()))?;
    let text = filter.to_string();
    if text.len() > MAX_FILTER_BYTES {
        return Err(GatewayError::invalid(
            field,
            format!(
                "is {} bytes written as text, the limit is {MAX_FILTER_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(Some(RequestFilter { text, compiled }))
}

/// The structured filter as a [`Filter`], at most [`MAX_FILTER_NODES`] nodes
/// and [`MAX_FILTER_DEPTH`] deep; errors say what is wrong.
fn from_wire(filter: &wire::Filter, depth: usize, nodes: &mut usize) -> Result<Filter, String> {
    *nodes += 1;
    if *nodes > MAX_FILTER_NODES {
        return Err(format!(
            "has more than {MAX_FILTER_NODES} comparisons and operators"
        ));
    }
    if depth >= MAX_FILTER_DEPTH {
        return Err(format!("is nested deeper than {MAX_FILTER_DEPTH}"));
    }
    let name = |attribute: &str| {
        if attribute.is_empty() || attribute.len() > MAX_ID_BYTES {
            Err(format!(
                "an attribute name is {} bytes, must be 1 to {MAX_ID_BYTES}",
                attribute.len()
            ))
        } else {
            Ok(attribute.to_string())
        }
    };
    let list = |filters: &[wire::Filter], nodes: &mut usize, op: &str| {
        if filters.is_empty() {
            return Err(format!("{op} has no filters"));
        }
        filters
            .iter()
            .map(|f| from_wire(f, depth + 1, nodes))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &filter.kind {
        None => {
            return Err("a filter has no kind (equals, any_of, range, negated, all, any)".into());
        }
        Some(Kind::Equals(eq)) => Filter::Eq {
            attribute: name(&eq.attribute)?,
            value: literal(eq.value.as_ref(), &eq.attribute)?,
        },
        Some(Kind::AnyOf(any)) => {
            if any.values.is_empty() {
                return Err(format!("any_of {:?} has no values", any.attribute));
            }
            Filter::AnyOf {
                attribute: name(&any.attribute)?,
                values: any
                    .values
                    .iter()
                    .map(|v| literal(Some(v), &any.attribute))
                    .collect::<Result<_, _>>()?,
            }
        }
        Some(Kind::Range(range)) => {
            let bound = |value: Option<f64>, exclusive: bool| match value {
                None => Ok(None),
                Some(v) if v.is_finite() => Ok(Some(Bound {
                    value: Literal::Float(v),
                    inclusive: !exclusive,
                })),
                Some(v) => Err(format!(
                    "range {:?} has bound {v}, which is not finite",
                    range.attribute
                )),
            };
            Filter::Range {
                attribute: name(&range.attribute)?,
                min: bound(range.min, range.min_exclusive)?,
                max: bound(range.max, range.max_exclusive)?,
            }
        }
        Some(Kind::Negated(inner)) => Filter::Not(Box::new(from_wire(inner, depth + 1, nodes)?)),
        Some(Kind::All(all)) => Filter::And(list(&all.filters, nodes, "all")?),
        Some(Kind::Any(any)) => Filter::Or(list(&any.filters, nodes, "any")?),
    })
}

fn literal(value: Option<&wire::AttributeLiteral>, attribute: &str) -> Result<Literal, String> {
    match value.and_then(|v| v.value.as_ref()) {
        None => Err(format!("a comparison of {attribute:?} has no value")),
        Some(attribute_literal::Value::Keyword(v)) if v.len() > MAX_ID_BYTES => Err(format!(
            "a value of {attribute:?} is {} bytes, the limit is {MAX_ID_BYTES}",
            v.len()
        )),
        Some(attribute_literal::Value::Keyword(v)) => Ok(Literal::String(v.clone())),
        Some(attribute_literal::Value::Integer(v)) => Ok(Literal::Integer(*v)),
        Some(attribute_literal::Value::Number(v)) if v.is_finite() => Ok(Literal::Float(*v)),
        Some(attribute_literal::Value::Number(v)) => Err(format!(
            "a value of {attribute:?} is {v}, which is not finite"
        )),
        Some(attribute_literal::Value::Boolean(v)) => Ok(Literal::Boolean(*v)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn attributes() -> ItemAttributes {
        ItemAttributes::parse(
            "id\tgenre:keyword_list\tyear:integer\n1\tComedy|Drama\t1994\n",
            Path::new("attributes.tsv"),
        )
        .unwrap()
    }

    fn eq(attribute: &str, value: attribute_literal::Value) -> wire::Filter {
        wire::Filter {
            kind: Some(Kind::Equals(wire::AttributeEquals {
                attribute: attribute.into(),
                value: Some(wire::AttributeLiteral { value: Some(value) }),
            })),
        }
    }

    #[test]
    fn the_wire_limit_is_the_parser_s() {
        assert_eq!(MAX_FILTER_BYTES, recsys_bundle::filter::MAX_FILTER_BYTES);
    }

    #[test]
    fn the_structure_and_the_text_give_the_same_filter() {
        let structured = RecommendRequest {
            filter: Some(wire::Filter {
                kind: Some(Kind::All(wire::FilterList {
                    filters: vec![
                        eq("genre", attribute_literal::Value::Keyword("Comedy".into())),
                        wire::Filter {
                            kind: Some(Kind::Range(wire::AttributeRange {
                                attribute: "year".into(),
                                min: Some(1990.0),
                                ..Default::default()
                            })),
                        },
                    ],
                })),
            }),
            ..Default::default()
        };
        let text = RecommendRequest {
            filter_expression: r#"genre = "Comedy" and year >= 1990"#.into(),
            ..Default::default()
        };
        let attributes = attributes();
        let a = request_filter(&structured, Some(&attributes))
            .unwrap()
            .unwrap()
            .text;
        let b = request_filter(&text, Some(&attributes))
            .unwrap()
            .unwrap()
            .text;
        assert_eq!(Filter::parse(&a).unwrap().to_string(), a);
        let item = |name: &str| attributes.value(1, name);
        assert!(Filter::parse(&a).unwrap().matches(&item));
        assert!(Filter::parse(&b).unwrap().matches(&item));
    }

    #[test]
    fn bad_filters_are_refused_naming_the_field_and_the_problem() {
        let attributes = attributes();
        let deep = (0..40).fold(
            eq("year", attribute_literal::Value::Integer(1)),
            |inner, _| wire::Filter {
                kind: Some(Kind::Negated(Box::new(inner))),
            },
        );
        let cases = [
            (
                RecommendRequest {
                    filter_expression: "colour = \"red\"".into(),
                    ..Default::default()
                },
                "filter_expression: unknown attribute \"colour\"",
            ),
            (
                RecommendRequest {
                    filter_expression: "year >= ".into(),
                    ..Default::default()
                },
                "filter_expression: at column 9",
            ),
            (
                RecommendRequest {
                    filter: Some(eq("year", attribute_literal::Value::Keyword("old".into()))),
                    ..Default::default()
                },
                "filter: attribute \"year\" is an integer",
            ),
            (
                RecommendRequest {
                    filter: Some(deep),
                    ..Default::default()
                },
                "nested deeper than 32",
            ),
            (
                RecommendRequest {
                    filter: Some(wire::Filter { kind: None }),
                    ..Default::default()
                },
                "has no kind",
            ),
            (
                RecommendRequest {
                    filter: Some(eq("year", attribute_literal::Value::Integer(1))),
                    filter_expression: "year = 1".into(),
                    ..Default::default()
                },
                "not both",
            ),
        ];
        for (request, words) in cases {
            let error = request_filter(&request, Some(&attributes))
                .unwrap_err()
                .to_string();
            assert!(error.contains(words), "{words}: {error}");
        }
        let none = RecommendRequest {
            filter_expression: "year = 1".into(),
            ..Default::default()
        };
        let error = request_filter(&none, None).unwrap_err().to_string();
        assert!(error.contains("no item attributes"), "{error}");
    }
}
