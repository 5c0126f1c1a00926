//! Typed item attributes (issue 19): what filters ([`crate::filter`]) and
//! diversity caps read. A bundle may carry them as `attributes.tsv`, a file a
//! person can read and write: a header of `id` and `NAME:TYPE` columns, then
//! one row per item.
//!
//! ```text
//! id      genre:keyword_list   year:integer   rating:float   in_stock:boolean   language:keyword
//! 42      Comedy|Romance       1994           4.5            true               en
//! 43                           1990                          false              fr
//! ```
//!
//! An empty cell is a missing value (which matches no comparison); a keyword
//! list separates its keywords with `|`. Values are kept in columns (keywords
//! as codes into a dictionary), so a filter evaluated inside an HNSW traversal
//! reads a few integers per item, and the per-value posting lists and sorted
//! numbers that estimate a filter's selectivity and list its matching items
//! ([`row_filter`]) come with the load.

use std::collections::HashMap;
use std::path::Path;

use rustc_hash::FxHashMap;

use crate::BundleError;
use crate::filter::{AttributeType, AttributeValue};

pub mod row_filter;
pub use row_filter::RowFilter;

/// The file name the builders write, relative to the bundle.
pub const ATTRIBUTES_FILE: &str = "attributes.tsv";

/// Most attributes an item may have.
pub const MAX_ATTRIBUTES: usize = 64;

/// One attribute's values, one slot per item row.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    /// Codes into `dictionary`; `None` when missing.
    Keyword {
        dictionary: Vec<String>,
        codes: Vec<Option<u32>>,
    },
    /// Each row's keywords are `values[offsets[row]..offsets[row + 1]]`,
    /// and their codes into `dictionary` the same slice of `codes`.
    KeywordList {
        offsets: Vec<u32>,
        values: Vec<String>,
        codes: Vec<u32>,
        dictionary: Vec<String>,
    },
    Integer(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Boolean(Vec<Option<bool>>),
}

/// What a column's values are looked up by: the statistics a filter's
/// selectivity is estimated from and its matching rows listed by.
#[derive(Debug, Clone, PartialEq)]
enum ColumnIndex {
    /// Keyword, keyword list and boolean (code 0 false, 1 true) columns: the
    /// rows holding each code, ascending, each row once, and the same rows'
    /// item ids (listing one value's items then reads one array in order,
    /// not an id per row from wherever it lies).
    Postings {
        rows: Vec<Vec<u32>>,
        ids: Vec<Vec<u64>>,
    },
    /// Number columns: (value, row) of the rows with a value, by value.
    Sorted(Vec<(f64, u32)>),
}

/// Every item's attributes, by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemAttributes {
    schema: Vec<(String, AttributeType)>,
    /// Item id → row, with the fast hash: a filtered search looks an item up
    /// for every node its traversal measures.
    rows: FxHashMap<u64, u32>,
    ids: Vec<u64>,
    columns: Vec<Column>,
    index: Vec<ColumnIndex>,
}

fn type_name(kind: AttributeType) -> &'static str {
    match kind {
        AttributeType::Keyword => "keyword",
        AttributeType::KeywordList => "keyword_list",
        AttributeType::Integer => "integer",
        AttributeType::Float => "float",
        AttributeType::Boolean => "boolean",
    }
}

fn parse_type(name: &str) -> Option<AttributeType> {
    Some(match name {
        "keyword" => AttributeType::Keyword,
        "keyword_list" => AttributeType::KeywordList,
        "integer" => AttributeType::Integer,
        "float" => AttributeType::Float,
        "boolean" => AttributeType::Boolean,
        _ => return None,
    })
}

impl ItemAttributes {
    /// Reads the TSV text of `path` (named in errors, with the line).
    pub fn parse(text: &str, path: &Path) -> Result<Self, BundleError> {
        Self::parse_where(text, path, |_| true)
    }

    /// Reads the rows of the items `keep` accepts (a retrieval node keeps its
    /// shard's), checking every row.
    pub fn parse_where(
        text: &str,
        path: &Path,
        keep: impl Fn(u64) -> bool,
    ) -> Result<Self, BundleError> {
        let fail = |line: usize, reason: String| {
            BundleError::corrupt(path, format!("line {line}: {reason}"))
        };
        let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
        let (_, header) = lines
            .next()
            .ok_or_else(|| fail(1, "no header (id, then NAME:TYPE columns)".into()))?;
        let mut fields = header.split('\t');
        if fields.next() != Some("id") {
            return Err(fail(1, "the first column must be \"id\"".into()));
        }
        let mut schema = Vec::new();
        for field in fields {
            let (name, kind) = field
                .split_once(':')
                .ok_or_else(|| fail(1, format!("column {field:?} is not NAME:TYPE")))?;
            let kind = parse_type(kind).ok_or_else(|| {
                fail(
                    1,
                    format!(
                        "column {name:?} has type {kind:?}; types are keyword, keyword_list, integer, float, boolean"
                    ),
                )
            })?;
            if name.is_empty() || schema.iter().any(|(seen, _)| seen == name) {
                return Err(fail(
                    1,
                    format!("column name {name:?} is empty or repeated"),
                ));
            }
            schema.push((name.to_string(), kind));
        }
        if schema.len() > MAX_ATTRIBUTES {
            return Err(fail(
                1,
                format!("{} attributes, the limit is {MAX_ATTRIBUTES}", schema.len()),
            ));
        }
        let mut builder = Builder::new(schema);
        for (number, line) in lines {
            if line.is_empty() {
                continue;
            }
            builder
                .row(line, &keep)
                .map_err(|reason| fail(number, reason))?;
        }
        Ok(builder.finish())
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        Self::load_where(path, |_| true)
    }

    /// Reads the rows of the file at `path` that `keep` accepts.
    pub fn load_where(path: &Path, keep: impl Fn(u64) -> bool) -> Result<Self, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|e| BundleError::io(path, e))?;
        Self::parse_where(&text, path, keep)
    }

    /// The TSV text, items in id order (the same attributes always make the
    /// same file).
    pub fn to_tsv(&self) -> String {
        let mut out = String::from("id");
        for (name, kind) in &self.schema {
            out.push('\t');
            out.push_str(name);
            out.push(':');
            out.push_str(type_name(*kind));
        }
        out.push('\n');
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        for id in ids {
            out.push_str(&id.to_string());
            let row = self.rows[&id] as usize;
            for index in 0..self.schema.len() {
                out.push('\t');
                match self.value_at(row, index) {
                    None => {}
                    Some(AttributeValue::Keyword(value)) => out.push_str(value),
                    Some(AttributeValue::KeywordList(values)) => out.push_str(&values.join("|")),
                    Some(AttributeValue::Integer(value)) => out.push_str(&value.to_string()),
                    Some(AttributeValue::Float(value)) => out.push_str(&format!("{value:?}")),
                    Some(AttributeValue::Boolean(value)) => out.push_str(&value.to_string()),
                }
            }
            out.push('\n');
        }
        out
    }

    /// Writes the file at `path`.
    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        std::fs::write(path, self.to_tsv()).map_err(|e| BundleError::io(path, e))
    }

    /// The attributes and their types, in column order.
    pub fn schema(&self) -> &[(String, AttributeType)] {
        &self.schema
    }

    /// The type of `name`, if the items have it (what [`crate::filter::Filter::check`] asks).
    pub fn type_of(&self, name: &str) -> Option<AttributeType> {
        self.index_of(name).map(|index| self.schema[index].1)
    }

    /// The items with attributes, in the file's order.
    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    /// Items with attributes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no item has attributes.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.schema.iter().position(|(known, _)| known == name)
    }

    /// Item `id`'s value of `name`, if it has one.
    pub fn value(&self, id: u64, name: &str) -> Option<AttributeValue<'_>> {
        let row = *self.rows.get(&id)? as usize;
        self.value_at(row, self.index_of(name)?)
    }

    fn value_at(&self, row: usize, index: usize) -> Option<AttributeValue<'_>> {
        Some(match &self.columns[index] {
            Column::Keyword { dictionary, codes } => {
                AttributeValue::Keyword(&dictionary[codes[row]? as usize])
            }
            Column::KeywordList {
                offsets, values, ..
            } => {
                let range = offsets[row] as usize..offsets[row + 1] as usize;
                if range.is_empty() {
                    return None;
                }
                AttributeValue::KeywordList(&values[range])
            }
            Column::Integer(values) => AttributeValue::Integer(values[row]?),
            Column::Float(values) => AttributeValue::Float(values[row]?),
            Column::Boolean(values) => AttributeValue::Boolean(values[row]?),
        })
    }

    /// How many items have each value of keyword (or keyword list) attribute
    /// `name`: the statistics a shard estimates a filter's selectivity from.
    pub fn keyword_counts(&self, name: &str) -> Option<HashMap<&str, usize>> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        match &self.columns[self.index_of(name)?] {
            Column::Keyword { dictionary, codes } => {
                for code in codes.iter().flatten() {
                    *counts
                        .entry(dictionary[*code as usize].as_str())
                        .or_default() += 1;
                }
            }
            Column::KeywordList { values, .. } => {
                for value in values {
                    *counts.entry(value.as_str()).or_default() += 1;
                }
            }
            _ => return None,
        }
        Some(counts)
    }
}

/// Builds the columns row by row.
struct Builder {
    schema: Vec<(String, AttributeType)>,
    rows: FxHashMap<u64, u32>,
    /// Every id seen, kept or not: a repeated one is refused either way.
    seen: rustc_hash::FxHashSet<u64>,
    ids: Vec<u64>,
    columns: Vec<Column>,
    /// Per keyword column: value → code.
    codes: Vec<HashMap<String, u32>>,
}

impl Builder {
    fn new(schema: Vec<(String, AttributeType)>) -> Self {
        let columns = schema
            .iter()
            .map(|(_, kind)| match kind {
                AttributeType::Keyword => Column::Keyword {
                    dictionary: Vec::new(),
                    codes: Vec::new(),
                },
                AttributeType::KeywordList => Column::KeywordList {
                    offsets: vec![0],
                    values: Vec::new(),
                    codes: Vec::new(),
                    dictionary: Vec::new(),
                },
                AttributeType::Integer => Column::Integer(Vec::new()),
                AttributeType::Float => Column::Float(Vec::new()),
                AttributeType::Boolean => Column::Boolean(Vec::new()),
            })
            .collect();
        let codes = schema.iter().map(|_| HashMap::new()).collect();
        Self {
            schema,
            rows: FxHashMap::default(),
            seen: rustc_hash::FxHashSet::default(),
            ids: Vec::new(),
            columns,
            codes,
        }
    }

    fn row(&mut self, line: &str, keep: &impl Fn(u64) -> bool) -> Result<(), String> {
        let mut cells = line.split('\t');
        let id = cells.next().unwrap_or_default();
        let id: u64 = id
            .parse()
            .map_err(|_| format!("id {id:?} is not a number below 2^64"))?;
        let cells: Vec<&str> = cells.collect();
        if cells.len() != self.schema.len() {
            return Err(format!(
                "{} values for {} attributes",
                cells.len(),
                self.schema.len()
            ));
        }
        if !self.seen.insert(id) {
            return Err(format!("item {id} is listed twice"));
        }
        let row = u32::try_from(self.ids.len()).map_err(|_| "more than 2^32 items".to_string())?;
        // Every row is checked, kept or not.
        let values = self
            .schema
            .iter()
            .zip(&cells)
            .map(|((name, kind), cell)| parse_cell(name, *kind, cell))
            .collect::<Result<Vec<_>, _>>()?;
        if !keep(id) {
            return Ok(());
        }
        self.rows.insert(id, row);
        self.ids.push(id);
        for (index, value) in values.into_iter().enumerate() {
            match (&mut self.columns[index], value) {
                (Column::Keyword { dictionary, codes }, Cell::Text(cell)) => {
                    codes.push(Some(code(&mut self.codes[index], dictionary, cell)));
                }
                (Column::Keyword { codes, .. }, _) => codes.push(None),
                (
                    Column::KeywordList {
                        offsets,
                        values,
                        codes,
                        dictionary,
                    },
                    cell,
                ) => {
                    let text = if let Cell::Text(text) = cell {
                        text
                    } else {
                        ""
                    };
                    for keyword in text.split('|').filter(|k| !k.is_empty()) {
                        values.push(keyword.to_string());
                        codes.push(code(&mut self.codes[index], dictionary, keyword));
                    }
                    let end = u32::try_from(values.len())
                        .map_err(|_| "more than 2^32 keywords in one column".to_string())?;
                    offsets.push(end);
                }
                (Column::Integer(values), cell) => values.push(match cell {
                    Cell::Integer(v) => Some(v),
                    _ => None,
                }),
                (Column::Float(values), cell) => values.push(match cell {
                    Cell::Float(v) => Some(v),
                    _ => None,
                }),
                (Column::Boolean(values), cell) => values.push(match cell {
                    Cell::Boolean(v) => Some(v),
                    _ => None,
                }),
            }
        }
        Ok(())
    }

    fn finish(self) -> ItemAttributes {
        let index = self
            .columns
            .iter()
            .map(|column| column_index(column, &self.ids))
            .collect();
        ItemAttributes {
            schema: self.schema,
            rows: self.rows,
            ids: self.ids,
            columns: self.columns,
            index,
        }
    }
}

/// One cell of the file, read as its column's type says.
enum Cell<'a> {
    Missing,
    Text(&'a str),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

/// Reads `cell` of attribute `name` of type `kind`; an empty cell is missing.
fn parse_cell<'a>(name: &str, kind: AttributeType, cell: &'a str) -> Result<Cell<'a>, String> {
    if cell.is_empty() {
        return Ok(Cell::Missing);
    }
    let bad = |what: &str| format!("attribute {name:?}: {cell:?} is not {what}");
    Ok(match kind {
        AttributeType::Keyword | AttributeType::KeywordList => Cell::Text(cell),
        AttributeType::Integer => Cell::Integer(cell.parse().map_err(|_| bad("an integer"))?),
        AttributeType::Float => {
            let value: f64 = cell.parse().map_err(|_| bad("a number"))?;
            if !value.is_finite() {
                return Err(bad("a finite number"));
            }
            Cell::Float(value)
        }
        AttributeType::Boolean => match cell {
            "true" => Cell::Boolean(true),
            "false" => Cell::Boolean(false),
            _ => return Err(bad("true or false")),
        },
    })
}

/// Calls its second argument with each code one row holds.
type CodesOfRow<'a> = &'a dyn Fn(usize, &mut dyn FnMut(u32));

/// The postings or sorted values of one column of the items `ids` (by row).
fn column_index(column: &Column, ids: &[u64]) -> ColumnIndex {
    let rows = ids.len();
    let postings = |codes: usize, of_row: CodesOfRow<'_>| {
        let mut postings = vec![Vec::new(); codes];
        for row in 0..rows {
            of_row(row, &mut |code| {
                let list: &mut Vec<u32> = &mut postings[code as usize];
                if list.last() != Some(&(row as u32)) {
                    list.push(row as u32);
                }
            });
        }
        let ids = postings
            .iter()
            .map(|rows| rows.iter().map(|row| ids[*row as usize]).collect())
            .collect();
        ColumnIndex::Postings {
            rows: postings,
            ids,
        }
    };
    let sorted = |mut values: Vec<(f64, u32)>| {
        values.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        ColumnIndex::Sorted(values)
    };
    match column {
        Column::Keyword { dictionary, codes } => postings(dictionary.len(), &|row, push| {
            if let Some(code) = codes[row] {
                push(code);
            }
        }),
        Column::KeywordList {
            offsets,
            codes,
            dictionary,
            ..
        } => postings(dictionary.len(), &|row, push| {
            for code in &codes[offsets[row] as usize..offsets[row + 1] as usize] {
                push(*code);
            }
        }),
        Column::Boolean(values) => postings(2, &|row, push| {
            if let Some(value) = values[row] {
                push(u32::from(value));
            }
        }),
        Column::Integer(values) => sorted(
            values
                .iter()
                .enumerate()
                .filter_map(|(row, v)| v.map(|v| (v as f64, row as u32)))
                .collect(),
        ),
        Column::Float(values) => sorted(
            values
                .iter()
                .enumerate()
                .filter_map(|(row, v)| v.map(|v| (v, row as u32)))
                .collect(),
        ),
    }
}

/// `value`'s code in `dictionary`, added if new.
fn code(codes: &mut HashMap<String, u32>, dictionary: &mut Vec<String>, value: &str) -> u32 {
    if let Some(code) = codes.get(value) {
        return *code;
    }
    let code = dictionary.len() as u32;
    dictionary.push(value.to_string());
    codes.insert(value.to_string(), code);
    code
}

#[cfg(test)]
mod tests;
