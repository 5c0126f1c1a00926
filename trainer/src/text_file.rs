//! Reading delimited text files line by line, with positions for errors.
//!
//! GroupLens ships MovieLens in Latin-1 (ISO-8859-1): titles such as
//! "Misérables, Les (1995)" are single bytes ≥ 0x80 that are not UTF-8. Latin-1
//! maps every byte to the code point of the same value, so decoding is `b as char`
//! and never fails. Other files are UTF-8, and a bad byte is reported with its line.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Result, TrainerError};

/// How a file's bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// ISO-8859-1: one byte, one char (MovieLens).
    Latin1,
    /// UTF-8, refused with the line of the first bad byte.
    Utf8,
}

/// A whole text file in memory.
#[derive(Debug)]
pub(crate) struct TextFile {
    pub(crate) path: PathBuf,
    text: String,
}

impl TextFile {
    pub(crate) fn read(path: &Path, encoding: Encoding) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TrainerError::io(path, e))?;
        let text = match encoding {
            Encoding::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
            Encoding::Utf8 => String::from_utf8(bytes).map_err(|e| {
                let valid = e.utf8_error().valid_up_to();
                let line = 1 + e.as_bytes()[..valid]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                TrainerError::field(path, line, "text", "not valid utf-8")
            })?,
        };
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Non-empty lines with their 1-based numbers, without `\r\n` or `\n`.
    pub(crate) fn lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
            .filter(|(_, l)| !l.trim().is_empty())
    }
}

/// One line split into fields, each known by name for error messages.
pub(crate) struct Record<'a> {
    pub(crate) path: &'a Path,
    pub(crate) line: usize,
    fields: Vec<&'a str>,
    names: &'a [&'a str],
}

impl<'a> Record<'a> {
    /// Splits `text` on `separator`; fewer fields than `names` is an error naming
    /// the first missing one, more is an error naming the count.
    pub(crate) fn split(
        path: &'a Path,
        line: usize,
        text: &'a str,
        separator: &str,
        names: &'a [&'a str],
    ) -> Result<Self> {
        let fields: Vec<&str> = text.split(separator).collect();
        Self::new(path, line, fields, names)
    }

    pub(crate) fn new(
        path: &'a Path,
        line: usize,
        fields: Vec<&'a str>,
        names: &'a [&'a str],
    ) -> Result<Self> {
        if fields.len() < names.len() {
            return Err(TrainerError::MissingField {
                path: path.to_path_buf(),
                line,
                field: names[fields.len()].to_string(),
                found: fields.len(),
                expected: names.len(),
            });
        }
        if fields.len() > names.len() {
            return Err(TrainerError::field(
                path,
                line,
                names[names.len() - 1],
                format!(
                    "{} fields where the format has {}",
                    fields.len(),
                    names.len()
                ),
            ));
        }
        Ok(Self {
            path,
            line,
            fields,
            names,
        })
    }

    /// Field `i`, trimmed.
    pub(crate) fn text(&self, i: usize) -> &'a str {
        self.fields[i].trim()
    }

    /// Field `i`, which must not be empty.
    pub(crate) fn required(&self, i: usize) -> Result<&'a str> {
        let value = self.text(i);
        if value.is_empty() {
            return Err(self.error(i, "empty"));
        }
        Ok(value)
    }

    /// Field `i` parsed as `T`.
    pub(crate) fn parse<T: FromStr>(&self, i: usize) -> Result<T> {
        let value = self.required(i)?;
        value.parse().map_err(|_| {
            self.error(
                i,
                format!("cannot parse {value:?} as {}", short_type_name::<T>()),
            )
        })
    }

    /// The name of field `i`.
    pub(crate) fn name(&self, i: usize) -> &'a str {
        self.names[i]
    }

    /// An error about field `i` of this line.
    pub(crate) fn error(&self, i: usize, reason: impl Into<String>) -> TrainerError {
        TrainerError::field(self.path, self.line, self.names[i], reason)
    }
}

fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_maps_each_byte_to_one_char() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"Mis\xe9rables\r\n\n\xff\n").unwrap();
        let file = TextFile::read(&path, Encoding::Latin1).unwrap();
        let lines: Vec<_> = file.lines().collect();
        assert_eq!(lines, vec![(1, "Misérables"), (3, "ÿ")]);
    }

    #[test]
    fn bad_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv");
        std::fs::write(&path, b"a,b\nc,d\ne,\xe9\n").unwrap();
        let err = TextFile::read(&path, Encoding::Utf8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.csv line 3"), "{err}");
    }
}
