//! Attribute filters: the structure a request carries (equality, any-of,
//! range, not, and, or over typed item attributes), the short text form the
//! CLI and grpcurl users write (`genre in ["Comedy","Drama"] and year >= 1990`),
//! the check against a bundle's attribute schema, and the evaluation on one
//! item, which a retrieval node runs inside its HNSW traversal (issue 19).
//!
//! The parser is a small recursive descent over a hand-written lexer (the
//! grammar is eight rules; a parser generator would be a dependency larger
//! than the parser). Every error names the column it found the problem at
//! (1-based, in characters), and sizes are bounded ([`MAX_FILTER_BYTES`],
//! [`MAX_FILTER_NODES`], [`MAX_FILTER_DEPTH`]) so a hostile expression costs
//! little to refuse.
//!
//! ```text
//! expr    := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" expr ")" | compare
//! compare := NAME ("=" | "==" | "!=" | "<" | "<=" | ">" | ">=") literal
//!          | NAME "in" "[" literal ("," literal)* "]"
//! literal := "string" | number | true | false
//! ```

use std::fmt;

/// Longest text expression accepted.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Most comparisons and operators in one filter.
pub const MAX_FILTER_NODES: usize = 256;
/// Deepest nesting of `not`, `and`, `or` and parentheses.
pub const MAX_FILTER_DEPTH: usize = 32;

/// The types an item attribute can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    /// One string ("Comedy").
    Keyword,
    /// Several strings (a movie's genres): `=` and `in` match any of them.
    KeywordList,
    /// A whole number (a year).
    Integer,
    /// A number.
    Float,
    /// True or false.
    Boolean,
}

impl AttributeType {
    /// The name errors use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keyword => "keyword",
            Self::KeywordList => "keyword list",
            Self::Integer => "integer",
            Self::Float => "float",
            Self::Boolean => "boolean",
        }
    }
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A string.
    String(String),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// `true` or `false`.
    Boolean(bool),
}

impl Literal {
    fn kind(&self) -> &'static str {
        match self {
            Self::String(_) => "a string",
            Self::Integer(_) => "an integer",
            Self::Float(_) => "a number",
            Self::Boolean(_) => "a boolean",
        }
    }

    /// The literal as a number, for ranges and numeric equality.
    fn number(&self) -> Option<f64> {
        match self {
            Self::Integer(value) => Some(*value as f64),
            Self::Float(value) => Some(*value),
            Self::String(_) | Self::Boolean(_) => None,
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(value) => {
                write!(
                    f,
                    "\"{}\"",
                    value.replace('\\', "\\\\").replace('"', "\\\"")
                )
            }
            Self::Integer(value) => write!(f, "{value}"),
            Self::Float(value) => write!(f, "{value:?}"),
            Self::Boolean(value) => write!(f, "{value}"),
        }
    }
}

/// One end of a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    /// The value.
    pub value: Literal,
    /// Whether the value itself is in the range.
    pub inclusive: bool,
}

/// A filter over item attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The attribute equals the value (for a keyword list: holds it).
    Eq {
        /// The attribute.
        attribute: String,
        /// The value.
        value: Literal,
    },
    /// The attribute equals one of the values (for a keyword list: holds one).
    AnyOf {
        /// The attribute.
        attribute: String,
        /// The values.
        values: Vec<Literal>,
    },
    /// The attribute lies between the bounds (either may be open).
    Range {
        /// The attribute.
        attribute: String,
        /// The lower bound.
        min: Option<Bound>,
        /// The upper bound.
        max: Option<Bound>,
    },
    /// The filter does not match.
    Not(Box<Filter>),
    /// Every filter matches.
    And(Vec<Filter>),
    /// Some filter matches.
    Or(Vec<Filter>),
}

/// A filter that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", column.map(|c| format!("at column {c}: ")).unwrap_or_default())]
pub struct FilterError {
    /// 1-based character column in the text form, when parsing.
    pub column: Option<usize>,
    /// What is wrong, naming the attribute where one is involved.
    pub message: String,
}

impl FilterError {
    fn at(column: usize, message: impl Into<String>) -> Self {
        Self {
            column: Some(column),
            message: message.into(),
        }
    }

    fn plain(message: impl Into<String>) -> Self {
        Self {
            column: None,
            message: message.into(),
        }
    }
}

/// An attribute value of one item, as [`Filter::matches`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeValue<'a> {
    /// A keyword.
    Keyword(&'a str),
    /// A keyword list.
    KeywordList(&'a [String]),
    /// An integer.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Boolean(bool),
}

impl Filter {
    /// Parses the text form; errors name the column.
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        parse::parse(text)
    }

    /// Checks every attribute against `schema` (name and type): unknown
    /// attributes and values of the wrong type are refused by name.
    pub fn check(&self, schema: &dyn Fn(&str) -> Option<AttributeType>) -> Result<(), FilterError> {
        let typed = |attribute: &str| {
            schema(attribute)
                .ok_or_else(|| FilterError::plain(format!("unknown attribute {attribute:?}")))
        };
        let fits = |attribute: &str, kind: AttributeType, value: &Literal| {
            let ok = match kind {
                AttributeType::Keyword | AttributeType::KeywordList => {
                    matches!(value, Literal::String(_))
                }
                AttributeType::Integer | AttributeType::Float => value.number().is_some(),
                AttributeType::Boolean => matches!(value, Literal::Boolean(_)),
            };
            if ok {
                Ok(())
            } else {
                Err(FilterError::plain(format!(
                    "attribute {attribute:?} is {} {}, compared with {} ({value})",
                    if kind == AttributeType::Integer {
                        "an"
                    } else {
                        "a"
                    },
                    kind.as_str(),
                    value.kind()
                )))
            }
        };
        match self {
            Self::Eq { attribute, value } => fits(attribute, typed(attribute)?, value),
            Self::AnyOf { attribute, values } => {
                let kind = typed(attribute)?;
                values
                    .iter()
                    .try_for_each(|value| fits(attribute, kind, value))
            }
            Self::Range {
                attribute,
                min,
                max,
            } => {
                let kind = typed(attribute)?;
                if !matches!(kind, AttributeType::Integer | AttributeType::Float) {
                    return Err(FilterError::plain(format!(
                        "attribute {attribute:?} is a {}: only numbers have ranges",
                        kind.as_str()
                    )));
                }
                [min, max]
                    .into_iter()
                    .flatten()
                    .try_for_each(|bound| fits(attribute, kind, &bound.value))
            }
            Self::Not(inner) => inner.check(schema),
            Self::And(all) | Self::Or(all) => all.iter().try_for_each(|f| f.check(schema)),
        }
    }

    /// Whether an item whose attributes `value` reads matches (a missing
    /// attribute matches no comparison).
    pub fn matches<'a>(&self, value: &dyn Fn(&str) -> Option<AttributeValue<'a>>) -> bool {
        match self {
            Self::Eq {
                attribute,
                value: wanted,
            } => value(attribute).is_some_and(|v| equals(v, wanted)),
            Self::AnyOf { attribute, values } => {
                value(attribute).is_some_and(|v| values.iter().any(|wanted| equals(v, wanted)))
            }
            Self::Range {
                attribute,
                min,
                max,
            } => {
                let Some(number) = value(attribute).and_then(|v| match v {
                    AttributeValue::Integer(n) => Some(n as f64),
                    AttributeValue::Float(n) => Some(n),
                    _ => None,
                }) else {
                    return false;
                };
                let above = min.as_ref().is_none_or(|bound| {
                    bound.value.number().is_some_and(|b| {
                        if bound.inclusive {
                            number >= b
                        } else {
                            number > b
                        }
                    })
                });
                let below = max.as_ref().is_none_or(|bound| {
                    bound.value.number().is_some_and(|b| {
                        if bound.inclusive {
                            number <= b
                        } else {
                            number < b
                        }
                    })
                });
                above && below
            }
            Self::Not(inner) => !inner.matches(value),
            Self::And(all) => all.iter().all(|f| f.matches(value)),
            Self::Or(all) => all.iter().any(|f| f.matches(value)),
        }
    }
}

/// The text form, which [`Filter::parse`] reads back to the same filter
/// (every operand of `and`, `or` and `not` in parentheses).
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |f: &mut fmt::Formatter<'_>, all: &[Filter], op: &str| {
            for (i, filter) in all.iter().enumerate() {
                if i > 0 {
                    write!(f, " {op} ")?;
                }
                write!(f, "({filter})")?;
            }
            Ok(())
        };
        match self {
            Self::Eq { attribute, value } => write!(f, "{attribute} = {value}"),
            Self::AnyOf { attribute, values } => {
                write!(f, "{attribute} in [")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str("]")
            }
            Self::Range {
                attribute,
                min,
                max,
            } => {
                let side = |f: &mut fmt::Formatter<'_>, bound: &Bound, below: bool| {
                    let op = match (below, bound.inclusive) {
                        (false, true) => ">=",
                        (false, false) => ">",
                        (true, true) => "<=",
                        (true, false) => "<",
                    };
                    write!(f, "{attribute} {op} {}", bound.value)
                };
                match (min, max) {
                    (Some(min), Some(max)) => {
                        f.write_str("(")?;
                        side(f, min, false)?;
                        f.write_str(") and (")?;
                        side(f, max, true)?;
                        f.write_str(")")
                    }
                    (Some(min), None) => side(f, min, false),
                    (None, Some(max)) => side(f, max, true),
                    // Every number: what `> -inf` would say.
                    (None, None) => {
                        write!(f, "not (not ({attribute} >= 0) and not ({attribute} < 0))")
                    }
                }
            }
            Self::Not(inner) => write!(f, "not ({inner})"),
            Self::And(all) => join(f, all, "and"),
            Self::Or(all) => join(f, all, "or"),
        }
    }
}

fn equals(value: AttributeValue<'_>, wanted: &Literal) -> bool {
    match (value, wanted) {
        (AttributeValue::Keyword(v), Literal::String(w)) => v == w,
        (AttributeValue::KeywordList(list), Literal::String(w)) => list.iter().any(|v| v == w),
        (AttributeValue::Integer(v), Literal::Integer(w)) => v == *w,
        (AttributeValue::Integer(v), Literal::Float(w)) => v as f64 == *w,
        (AttributeValue::Float(v), w) => w.number().is_some_and(|w| v == w),
        (AttributeValue::Boolean(v), Literal::Boolean(w)) => v == *w,
        _ => false,
    }
}

mod parse;
#[cfg(test)]
mod tests;
