//! A generic interactions CSV, for data that is not MovieLens.
//!
//! ```text
//! interactions.csv   header with user,item and optionally rating (or label: a 0/1 click),timestamp (any order, more columns ignored)
//! items.csv          header with item and optionally title,year,genres (genres joined by "|")
//! users.csv          header with user; every other column is a categorical user feature
//! ```
//!
//! UTF-8, comma-separated, RFC 4180 quoting (`"a, b"`, `""` for a quote).
//! Timestamps are integer seconds.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::dataset::{Dataset, Interaction, Item, User, year_from_title};
use crate::error::{Result, TrainerError};
use crate::movielens::check_unique;
use crate::text_file::{Encoding, Record, TextFile};

/// Loads interactions and, when given, the item and user feature files.
pub fn load_interactions_csv(
    interactions: &Path,
    items: Option<&Path>,
    users: Option<&Path>,
) -> Result<Dataset> {
    let items = items.map(read_items).transpose()?.unwrap_or_default();
    let users = users.map(read_users).transpose()?.unwrap_or_default();
    let interactions = read_interactions(interactions)?;
    Ok(Dataset {
        interactions,
        items,
        users,
    })
}

/// A CSV file's header and its data lines split into cells.
pub(crate) struct Table {
    file: TextFile,
    header: Vec<String>,
}

impl Table {
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let file = TextFile::read(path, Encoding::Utf8)?;
        let (line, text) = file
            .lines()
            .next()
            .ok_or_else(|| TrainerError::field(path, 1, "header", "the file is empty"))?;
        let header = split_csv(text)
            .map_err(|reason| TrainerError::field(path, line, "header", reason))?
            .into_iter()
            .map(|h| h.trim().trim_start_matches('\u{feff}').to_lowercase())
            .collect();
        Ok(Self { file, header })
    }

    pub(crate) fn column(&self, name: &str) -> Result<usize> {
        self.optional(name)
            .ok_or_else(|| TrainerError::MissingColumn {
                path: self.file.path.clone(),
                column: name.to_string(),
            })
    }

    fn optional(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Calls `f` with each data line as a record whose fields are named by the header.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Record<'_>) -> Result<()>) -> Result<()> {
        let names: Vec<&str> = self.header.iter().map(String::as_str).collect();
        for (line, text) in self.file.lines().skip(1) {
            let cells = split_csv(text)
                .map_err(|reason| TrainerError::field(&self.file.path, line, "line", reason))?;
            let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
            let record = Record::new(&self.file.path, line, refs, &names)?;
            f(&record)?;
        }
        Ok(())
    }
}

fn read_interactions(path: &Path) -> Result<Vec<Interaction>> {
    let table = Table::read(path)?;
    let user = table.column("user")?;
    let item = table.column("item")?;
    // A click label stands where a rating would (`recsys train ranking
    // --objective click --negatives 0`).
    let rating = table.optional("rating").or_else(|| table.optional("label"));
    let timestamp = table.optional("timestamp");
    let mut out = Vec::new();
    table.for_each(|record| {
        let rating = match rating {
            Some(i) if !record.text(i).is_empty() => {
                let r: f32 = record.parse(i)?;
                if !r.is_finite() {
                    return Err(record.error(i, format!("{r} is not a finite number")));
                }
                Some(r)
            }
            _ => None,
        };
        let timestamp = match timestamp {
            Some(i) if !record.text(i).is_empty() => Some(record.parse(i)?),
            _ => None,
        };
        out.push(Interaction {
            user: record.required(user)?.to_string(),
            item: record.required(item)?.to_string(),
            rating,
            timestamp,
        });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(TrainerError::Empty("the interactions file has no rows"));
    }
    Ok(out)
}

fn read_items(path: &Path) -> Result<Vec<Item>> {
    let table = Table::read(path)?;
    let id = table.column("item")?;
    let title = table.optional("title");
    let year = table.optional("year");
    let genres = table.optional("genres");
    let mut items = Vec::new();
    let mut ids: Vec<(String, usize)> = Vec::new();
    table.for_each(|record| {
        let item_id = record.required(id)?;
        let title = title.map(|i| record.text(i)).filter(|t| !t.is_empty());
        let year = match year {
            Some(i) if !record.text(i).is_empty() => Some(record.parse(i)?),
            _ => title.and_then(year_from_title),
        };
        let genres = genres
            .map(|i| {
                record
                    .text(i)
                    .split('|')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        ids.push((item_id.to_string(), record.line));
        items.push(Item {
            id: item_id.to_string(),
            title: title.map(str::to_string),
            year,
            genres,
        });
        Ok(())
    })?;
    refuse_duplicates(path, "item", &ids)?;
    Ok(items)
}

fn read_users(path: &Path) -> Result<Vec<User>> {
    let table = Table::read(path)?;
    let id = table.column("user")?;
    let mut users = Vec::new();
    let mut ids: Vec<(String, usize)> = Vec::new();
    table.for_each(|record| {
        let user_id = record.required(id)?;
        let features: BTreeMap<String, String> = table
            .header
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != id)
            .filter(|&(i, _)| !record.text(i).is_empty())
            .map(|(i, name)| (name.clone(), record.text(i).to_string()))
            .collect();
        ids.push((user_id.to_string(), record.line));
        users.push(User {
            id: user_id.to_string(),
            features,
        });
        Ok(())
    })?;
    refuse_duplicates(path, "user", &ids)?;
    Ok(users)
}

fn refuse_duplicates(path: &Path, field: &str, ids: &[(String, usize)]) -> Result<()> {
    let names = [field];
    let mut first_line = HashMap::new();
    for (id, line) in ids {
        let record = Record::new(path, *line, vec![id.as_str()], &names)?;
        check_unique(&mut first_line, &record, 0, id)?;
    }
    Ok(())
}

/// Splits one CSV line, honouring double quotes.
fn split_csv(line: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if cell.trim().is_empty() => {
                cell.clear();
                quoted = true;
            }
            (false, ',') => cells.push(std::mem::take(&mut cell)),
            (_, c) => cell.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote");
    }
    cells.push(cell);
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_csv("a,\"b, c\",\"d\"\"e\",").unwrap(),
            vec!["a", "b, c", "d\"e", ""]
        );
        assert!(split_csv("a,\"b").is_err());
    }
}
