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
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError::plain(format!(
                "the filter is {} bytes, the limit is {MAX_FILTER_BYTES}",
                text.len()
            )));
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            at: 0,
            nodes: 0,
            end: text.chars().count() + 1,
        };
        let filter = parser.expr(0)?;
        match parser.peek() {
            None => Ok(filter),
            Some((column, token)) => Err(FilterError::at(
                *column,
                format!("unexpected {token} after a complete filter"),
            )),
        }
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

/// A token of the text form.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Name(String),
    Literal(Literal),
    Op(&'static str),
    Open,
    Close,
    OpenList,
    CloseList,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "{name:?}"),
            Self::Literal(literal) => write!(f, "{literal}"),
            Self::Op(op) => write!(f, "{op:?}"),
            Self::Open => f.write_str("\"(\""),
            Self::Close => f.write_str("\")\""),
            Self::OpenList => f.write_str("\"[\""),
            Self::CloseList => f.write_str("\"]\""),
            Self::Comma => f.write_str("\",\""),
        }
    }
}

/// Splits `text` into tokens, each with its 1-based column.
fn lex(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let column = i + 1;
        let c = chars[i];
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let token = match c {
            _ if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Token::Open,
            ')' => Token::Close,
            '[' => Token::OpenList,
            ']' => Token::CloseList,
            ',' => Token::Comma,
            '=' | '!' | '<' | '>' => {
                let op = match two.as_str() {
                    "==" => "=",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => match c {
                        '=' => "=",
                        '<' => "<",
                        '>' => ">",
                        _ => {
                            return Err(FilterError::at(column, "\"!\" must be followed by \"=\""));
                        }
                    },
                };
                i += if op.len() == 2 || two == "==" { 2 } else { 1 };
                tokens.push((column, Token::Op(op)));
                continue;
            }
            '"' => {
                let mut value = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => {
                            return Err(FilterError::at(column, "a string that is never closed"));
                        }
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some('"') => value.push('"'),
                                Some('\\') => value.push('\\'),
                                _ => {
                                    return Err(FilterError::at(
                                        j + 1,
                                        "only \\\" and \\\\ are escapes in a string",
                                    ));
                                }
                            }
                            j += 2;
                        }
                        Some(other) => {
                            value.push(*other);
                            j += 1;
                        }
                    }
                }
                i = j + 1;
                tokens.push((column, Token::Literal(Literal::String(value))));
                continue;
            }
            _ if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric() || matches!(chars[j], '.' | '-' | '+'))
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let literal = if let Ok(value) = text.parse::<i64>() {
                    Literal::Integer(value)
                } else {
                    match text.parse::<f64>() {
                        Ok(value) if value.is_finite() => Literal::Float(value),
                        _ => {
                            return Err(FilterError::at(
                                column,
                                format!("{text:?} is not a number"),
                            ));
                        }
                    }
                };
                i = j;
                tokens.push((column, Token::Literal(literal)));
                continue;
            }
            _ if c.is_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_alphanumeric() || matches!(chars[j], '_' | '.'))
                {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                i = j;
                let token = match word.as_str() {
                    "true" => Token::Literal(Literal::Boolean(true)),
                    "false" => Token::Literal(Literal::Boolean(false)),
                    "and" | "or" | "not" | "in" => Token::Op(match word.as_str() {
                        "and" => "and",
                        "or" => "or",
                        "not" => "not",
                        _ => "in",
                    }),
                    _ => Token::Name(word),
                };
                tokens.push((column, token));
                continue;
            }
            other => return Err(FilterError::at(column, format!("unexpected {other:?}"))),
        };
        tokens.push((column, token));
        i += 1;
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [(usize, Token)],
    at: usize,
    nodes: usize,
    /// The column just past the text, for errors at its end.
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&(usize, Token)> {
        self.tokens.get(self.at)
    }

    fn next(&mut self, wanted: &str) -> Result<(usize, Token), FilterError> {
        let token = self.tokens.get(self.at).cloned().ok_or_else(|| {
            FilterError::at(
                self.end,
                format!("the filter ends where {wanted} was expected"),
            )
        })?;
        self.at += 1;
        Ok(token)
    }

    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some((_, Token::Op(found))) if *found == op)
    }

    fn node(&mut self, column: usize) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_FILTER_NODES {
            return Err(FilterError::at(
                column,
                format!("the filter has more than {MAX_FILTER_NODES} parts"),
            ));
        }
        Ok(())
    }

    fn expr(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut any = vec![self.and(depth)?];
        while self.is_op("or") {
            let (column, _) = self.next("or")?;
            self.node(column)?;
            any.push(self.and(depth)?);
        }
        Ok(if any.len() == 1 {
            any.remove(0)
        } else {
            Filter::Or(any)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let mut all = vec![self.unary(depth)?];
        while self.is_op("and") {
            let (column, _) = self.next("and")?;
            self.node(column)?;
            all.push(self.unary(depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Filter::And(all)
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Filter, FilterError> {
        let (column, token) = self.next("a comparison")?;
        if depth >= MAX_FILTER_DEPTH {
            return Err(FilterError::at(
                column,
                format!("the filter nests deeper than {MAX_FILTER_DEPTH}"),
            ));
        }
        match token {
            Token::Op("not") => {
                self.node(column)?;
                Ok(Filter::Not(Box::new(self.unary(depth + 1)?)))
            }
            Token::Open => {
                let inner = self.expr(depth + 1)?;
                match self.next("\")\"")? {
                    (_, Token::Close) => Ok(inner),
                    (column, other) => Err(FilterError::at(
                        column,
                        format!("expected \")\", found {other}"),
                    )),
                }
            }
            Token::Name(attribute) => self.compare(column, attribute),
            other => Err(FilterError::at(
                column,
                format!("expected an attribute name, \"not\" or \"(\", found {other}"),
            )),
        }
    }

    fn compare(&mut self, column: usize, attribute: String) -> Result<Filter, FilterError> {
        self.node(column)?;
        let (op_column, op) = self.next("a comparison (=, !=, <, <=, >, >=, in)")?;
        let Token::Op(op) = op else {
            return Err(FilterError::at(
                op_column,
                format!("expected a comparison after {attribute:?}, found {op}"),
            ));
        };
        if op == "in" {
            match self.next("\"[\"")? {
                (_, Token::OpenList) => {}
                (column, other) => {
                    return Err(FilterError::at(
                        column,
                        format!("expected \"[\" after \"in\", found {other}"),
                    ));
                }
            }
            let mut values = vec![self.literal()?];
            loop {
                match self.next("\",\" or \"]\"")? {
                    (_, Token::Comma) => values.push(self.literal()?),
                    (_, Token::CloseList) => break,
                    (column, other) => {
                        return Err(FilterError::at(
                            column,
                            format!("expected \",\" or \"]\", found {other}"),
                        ));
                    }
                }
                if values.len() > MAX_FILTER_NODES {
                    return Err(FilterError::at(
                        column,
                        format!("a list longer than {MAX_FILTER_NODES} values"),
                    ));
                }
            }
            return Ok(Filter::AnyOf { attribute, values });
        }
        let value = self.literal()?;
        let bound = |inclusive| {
            Some(Bound {
                value: value.clone(),
                inclusive,
            })
        };
        Ok(match op {
            "=" => Filter::Eq { attribute, value },
            "!=" => Filter::Not(Box::new(Filter::Eq { attribute, value })),
            "<" => Filter::Range {
                attribute,
                min: None,
                max: bound(false),
            },
            "<=" => Filter::Range {
                attribute,
                min: None,
                max: bound(true),
            },
            ">" => Filter::Range {
                attribute,
                min: bound(false),
                max: None,
            },
            ">=" => Filter::Range {
                attribute,
                min: bound(true),
                max: None,
            },
            other => {
                return Err(FilterError::at(
                    op_column,
                    format!("expected a comparison after {attribute:?}, found {other:?}"),
                ));
            }
        })
    }

    fn literal(&mut self) -> Result<Literal, FilterError> {
        match self.next("a value")? {
            (_, Token::Literal(literal)) => Ok(literal),
            (column, other) => Err(FilterError::at(
                column,
                format!("expected a value (\"string\", number, true or false), found {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
