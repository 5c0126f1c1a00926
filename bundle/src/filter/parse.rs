//! The text form's lexer and recursive-descent parser (the grammar is in
//! the parent module's documentation).

use std::fmt;

use super::{
    Bound, Filter, FilterError, Literal, MAX_FILTER_BYTES, MAX_FILTER_DEPTH, MAX_FILTER_NODES,
};

/// Parses the text form ([`Filter::parse`]).
pub(super) fn parse(text: &str) -> Result<Filter, FilterError> {
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
        self.chain(depth, "or", Self::and, Filter::Or)
    }

    fn and(&mut self, depth: usize) -> Result<Filter, FilterError> {
        self.chain(depth, "and", Self::unary, Filter::And)
    }

    /// `operand (op operand)*`: the operand alone, or `join` of them all.
    fn chain(
        &mut self,
        depth: usize,
        op: &str,
        operand: fn(&mut Self, usize) -> Result<Filter, FilterError>,
        join: fn(Vec<Filter>) -> Filter,
    ) -> Result<Filter, FilterError> {
        let mut all = vec![operand(self, depth)?];
        while self.is_op(op) {
            let (column, _) = self.next(op)?;
            self.node(column)?;
            all.push(operand(self, depth)?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            join(all)
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
