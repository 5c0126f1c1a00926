//! A [`Filter`] compiled against one [`ItemAttributes`]: attribute names
//! become column numbers and keywords their dictionary codes, so testing an
//! item inside an HNSW traversal is a hash lookup and a few integer compares,
//! never a string compare. The same compiled filter estimates how many items
//! match (from the posting lists and sorted numbers kept with the columns) and
//! lists them, which is what a shard decides between a filtered graph search
//! and an exact scan of the matching items with (issue 19, as Qdrant does).
//!
//! Its meaning is [`Filter::matches`]'s exactly (a property test compares the
//! two on random items and filters): a missing value matches no comparison,
//! `not` of one does.

use super::{Column, ColumnIndex, ItemAttributes};
use crate::filter::{AttributeType, Filter, FilterError, Literal};

/// A compiled filter, valid for the [`ItemAttributes`] that compiled it.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    node: Node,
}

/// One bound of a range: the value and whether it is in.
type Side = Option<(f64, bool)>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A keyword, keyword list or boolean column holds one of `codes` (sorted).
    Codes {
        column: usize,
        codes: Vec<u32>,
    },
    /// An integer column equals `value` (exactly, not through f64).
    Integer {
        column: usize,
        value: i64,
    },
    /// A number column lies within the bounds.
    Range {
        column: usize,
        min: Side,
        max: Side,
    },
    /// Matches nothing (a keyword no item has).
    Never,
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

impl ItemAttributes {
    /// Checks `filter` against the attributes' schema (unknown attributes and
    /// type mismatches are refused by name) and compiles it.
    pub fn compile(&self, filter: &Filter) -> Result<RowFilter, FilterError> {
        filter.check(&|name| self.type_of(name))?;
        Ok(RowFilter {
            node: self.compile_node(filter),
        })
    }

    fn compile_node(&self, filter: &Filter) -> Node {
        // `check` has passed: every attribute exists, every literal fits.
        let column_of = |name: &str| self.index_of(name).unwrap_or(usize::MAX);
        match filter {
            Filter::Eq { attribute, value } => self.equals(column_of(attribute), [value]),
            Filter::AnyOf { attribute, values } => self.equals(column_of(attribute), values),
            Filter::Range {
                attribute,
                min,
                max,
            } => {
                let side = |bound: &Option<crate::filter::Bound>| {
                    bound
                        .as_ref()
                        .and_then(|b| number(&b.value).map(|v| (v, b.inclusive)))
                };
                Node::Range {
                    column: column_of(attribute),
                    min: side(min),
                    max: side(max),
                }
            }
            Filter::Not(inner) => Node::Not(Box::new(self.compile_node(inner))),
            Filter::And(all) => Node::And(all.iter().map(|f| self.compile_node(f)).collect()),
            Filter::Or(all) => Node::Or(all.iter().map(|f| self.compile_node(f)).collect()),
        }
    }

    /// Column `column` equals one of `values`.
    fn equals<'a>(&self, column: usize, values: impl IntoIterator<Item = &'a Literal>) -> Node {
        let Some((_, kind)) = self.schema.get(column) else {
            return Node::Never;
        };
        match kind {
            AttributeType::Keyword | AttributeType::KeywordList | AttributeType::Boolean => {
                let mut codes: Vec<u32> = values
                    .into_iter()
                    .filter_map(|value| self.code_of(column, value))
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                if codes.is_empty() {
                    Node::Never
                } else {
                    Node::Codes { column, codes }
                }
            }
            AttributeType::Integer | AttributeType::Float => {
                let mut any: Vec<Node> = values
                    .into_iter()
                    .map(|value| match (kind, value) {
                        (AttributeType::Integer, Literal::Integer(value)) => Node::Integer {
                            column,
                            value: *value,
                        },
                        _ => match number(value) {
                            Some(v) => Node::Range {
                                column,
                                min: Some((v, true)),
                                max: Some((v, true)),
                            },
                            None => Node::Never,
                        },
                    })
                    .collect();
                if any.len() == 1 {
                    any.pop().unwrap_or(Node::Never)
                } else {
                    Node::Or(any)
                }
            }
        }
    }

    /// The code of `value` in a keyword or boolean column, if any item has it.
    fn code_of(&self, column: usize, value: &Literal) -> Option<u32> {
        match (&self.columns[column], value) {
            (
                Column::Keyword { dictionary, .. } | Column::KeywordList { dictionary, .. },
                Literal::String(value),
            ) => dictionary
                .iter()
                .position(|known| known == value)
                .map(|code| code as u32),
            (Column::Boolean(_), Literal::Boolean(value)) => Some(u32::from(*value)),
            _ => None,
        }
    }

    /// The values of keyword, keyword list and boolean columns, as (column,
    /// code), with the rows holding each (ascending).
    pub fn value_postings(&self) -> impl Iterator<Item = ((usize, u32), &[u32])> {
        self.index
            .iter()
            .enumerate()
            .filter_map(|(column, index)| match index {
                ColumnIndex::Postings { rows, .. } => Some((column, rows)),
                ColumnIndex::Sorted(_) => None,
            })
            .flat_map(|(column, postings)| {
                postings
                    .iter()
                    .enumerate()
                    .map(move |(code, rows)| ((column, code as u32), rows.as_slice()))
            })
    }

    /// The item of row `row`.
    pub fn id_of_row(&self, row: u32) -> u64 {
        self.ids[row as usize]
    }

    /// Whether the item of row `row` matches `filter`.
    pub fn matches_row_of(&self, filter: &RowFilter, row: u32) -> bool {
        self.matches_row(&filter.node, row as usize)
    }

    /// The row of item `id`, if it has attributes.
    pub fn row_of(&self, id: u64) -> Option<u32> {
        self.rows.get(&id).copied()
    }

    /// Whether item `id` matches `filter` (an item without attributes matches
    /// only what a missing value matches: `not` of a comparison).
    pub fn matches_id(&self, filter: &RowFilter, id: u64) -> bool {
        match self.row_of(id) {
            Some(row) => self.matches_row(&filter.node, row as usize),
            None => matches_missing(&filter.node),
        }
    }

    fn matches_row(&self, node: &Node, row: usize) -> bool {
        match node {
            Node::Codes { column, codes } => match &self.columns[*column] {
                Column::Keyword { codes: rows, .. } => {
                    rows[row].is_some_and(|code| codes.binary_search(&code).is_ok())
                }
                Column::KeywordList {
                    offsets,
                    codes: held,
                    ..
                } => held[offsets[row] as usize..offsets[row + 1] as usize]
                    .iter()
                    .any(|code| codes.binary_search(code).is_ok()),
                Column::Boolean(values) => {
                    values[row].is_some_and(|v| codes.binary_search(&u32::from(v)).is_ok())
                }
                Column::Integer(_) | Column::Float(_) => false,
            },
            Node::Integer { column, value } => match &self.columns[*column] {
                Column::Integer(values) => values[row] == Some(*value),
                _ => false,
            },
            Node::Range { column, min, max } => {
                let number = match &self.columns[*column] {
                    Column::Integer(values) => values[row].map(|v| v as f64),
                    Column::Float(values) => values[row],
                    _ => None,
                };
                number.is_some_and(|n| within(n, *min, *max))
            }
            Node::Never => false,
            Node::Not(inner) => !self.matches_row(inner, row),
            Node::And(all) => all.iter().all(|node| self.matches_row(node, row)),
            Node::Or(all) => all.iter().any(|node| self.matches_row(node, row)),
        }
    }

    /// About how many items match `filter`: exact for one comparison (the
    /// posting lists and sorted numbers say), combined as if independent for
    /// `and` and `or`.
    pub fn estimate(&self, filter: &RowFilter) -> f64 {
        self.estimate_node(&filter.node)
    }

    fn estimate_node(&self, node: &Node) -> f64 {
        let items = self.len() as f64;
        let share = |node: &Node| {
            if items == 0.0 {
                0.0
            } else {
                self.estimate_node(node) / items
            }
        };
        match node {
            Node::Codes { column, codes } => match &self.index[*column] {
                ColumnIndex::Postings { rows: postings, .. } => codes
                    .iter()
                    .map(|code| postings.get(*code as usize).map_or(0, Vec::len) as f64)
                    .sum::<f64>()
                    .min(items),
                ColumnIndex::Sorted(_) => 0.0,
            },
            Node::Integer { column, value } => {
                let v = *value as f64;
                self.sorted_within(*column, Some((v, true)), Some((v, true)))
                    .len() as f64
            }
            Node::Range { column, min, max } => {
                self.sorted_within(*column, *min, *max).len() as f64
            }
            Node::Never => 0.0,
            Node::Not(inner) => items - self.estimate_node(inner),
            Node::And(all) => items * all.iter().map(share).product::<f64>(),
            Node::Or(all) => items * (1.0 - all.iter().map(|n| 1.0 - share(n)).product::<f64>()),
        }
    }

    /// The (value, row) pairs of a number column within the bounds.
    fn sorted_within(&self, column: usize, min: Side, max: Side) -> &[(f64, u32)] {
        let ColumnIndex::Sorted(sorted) = &self.index[column] else {
            return &[];
        };
        let start = match min {
            None => 0,
            Some((b, true)) => sorted.partition_point(|(v, _)| *v < b),
            Some((b, false)) => sorted.partition_point(|(v, _)| *v <= b),
        };
        let end = match max {
            None => sorted.len(),
            Some((b, true)) => sorted.partition_point(|(v, _)| *v <= b),
            Some((b, false)) => sorted.partition_point(|(v, _)| *v < b),
        };
        sorted.get(start..end.max(start)).unwrap_or(&[])
    }

    /// Every item with attributes that matches `filter`, ids ascending: from
    /// the posting lists and sorted numbers where the filter allows (its cost
    /// then follows the matching items, not the catalog), else by testing
    /// every row. Items without attributes are never listed.
    pub fn matching_ids(&self, filter: &RowFilter) -> Vec<u64> {
        // Values of one column: their ids straight from the postings, in
        // order, no row tested (what the postings list is what matches).
        if let Node::Codes { column, codes } = &filter.node
            && let ColumnIndex::Postings { ids, .. } = &self.index[*column]
        {
            let mut matching: Vec<u64> = codes
                .iter()
                .filter_map(|code| ids.get(*code as usize))
                .flatten()
                .copied()
                .collect();
            matching.sort_unstable();
            matching.dedup();
            return matching;
        }
        let rows = match self.candidates(&filter.node) {
            Some(rows) => rows,
            None => (0..self.len() as u32).collect(),
        };
        let mut ids: Vec<u64> = rows
            .into_iter()
            .filter(|row| self.matches_row(&filter.node, *row as usize))
            .map(|row| self.ids[row as usize])
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Rows, ascending, that include every row matching `node`, or `None`
    /// when only testing every row finds them (a `not`).
    fn candidates(&self, node: &Node) -> Option<Vec<u32>> {
        let sorted_rows = |pairs: &[(f64, u32)]| {
            let mut rows: Vec<u32> = pairs.iter().map(|(_, row)| *row).collect();
            rows.sort_unstable();
            rows
        };
        match node {
            Node::Codes { column, codes } => {
                let ColumnIndex::Postings { rows: postings, .. } = &self.index[*column] else {
                    return Some(Vec::new());
                };
                let mut rows: Vec<u32> = codes
                    .iter()
                    .filter_map(|code| postings.get(*code as usize))
                    .flatten()
                    .copied()
                    .collect();
                if codes.len() > 1 {
                    rows.sort_unstable();
                    rows.dedup();
                }
                Some(rows)
            }
            Node::Integer { column, value } => {
                let v = *value as f64;
                Some(sorted_rows(self.sorted_within(
                    *column,
                    Some((v, true)),
                    Some((v, true)),
                )))
            }
            Node::Range { column, min, max } => {
                Some(sorted_rows(self.sorted_within(*column, *min, *max)))
            }
            Node::Never => Some(Vec::new()),
            Node::Not(_) => None,
            // The narrowest part that can list its rows bounds the whole.
            Node::And(all) => {
                let mut parts: Vec<(f64, &Node)> = all
                    .iter()
                    .map(|node| (self.estimate_node(node), node))
                    .collect();
                parts.sort_by(|a, b| a.0.total_cmp(&b.0));
                parts
                    .into_iter()
                    .find_map(|(_, node)| self.candidates(node))
            }
            Node::Or(all) => {
                let mut rows = Vec::new();
                for node in all {
                    rows.extend(self.candidates(node)?);
                }
                rows.sort_unstable();
                rows.dedup();
                Some(rows)
            }
        }
    }
}

impl RowFilter {
    /// The one keyword, keyword list or boolean value every matching item
    /// holds, as (column, code), when the filter is an equality or narrowed by
    /// one in an `and`: where a scan may start from that value's items alone.
    pub fn required_value(&self) -> Option<(usize, u32)> {
        fn find(node: &Node) -> Option<(usize, u32)> {
            match node {
                Node::Codes { column, codes } if codes.len() == 1 => Some((*column, codes[0])),
                Node::And(all) => all.iter().find_map(find),
                _ => None,
            }
        }
        find(&self.node)
    }

    /// Whether the filter is exactly [`Self::required_value`] (nothing else to
    /// test on the items holding it).
    pub fn is_one_value(&self) -> bool {
        matches!(&self.node, Node::Codes { codes, .. } if codes.len() == 1)
    }

    /// Whether an item without attributes matches (a `not` of a comparison
    /// does): items upserted since the bundle was built have none.
    pub fn matches_missing(&self) -> bool {
        matches_missing(&self.node)
    }
}

/// Whether an item without attributes matches `node`.
fn matches_missing(node: &Node) -> bool {
    match node {
        Node::Codes { .. } | Node::Integer { .. } | Node::Range { .. } | Node::Never => false,
        Node::Not(inner) => !matches_missing(inner),
        Node::And(all) => all.iter().all(matches_missing),
        Node::Or(all) => all.iter().any(matches_missing),
    }
}

fn number(value: &Literal) -> Option<f64> {
    match value {
        Literal::Integer(v) => Some(*v as f64),
        Literal::Float(v) => Some(*v),
        Literal::String(_) | Literal::Boolean(_) => None,
    }
}

fn within(n: f64, min: Side, max: Side) -> bool {
    let above = min.is_none_or(|(b, inclusive)| if inclusive { n >= b } else { n > b });
    let below = max.is_none_or(|(b, inclusive)| if inclusive { n <= b } else { n < b });
    above && below
}

#[cfg(test)]
mod tests;
