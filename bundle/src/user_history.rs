//! What each user already has: the items of their interactions in the data a
//! bundle was trained from, which the gateway leaves out of that user's
//! answers by default (TFRS serves with `query_with_exclusions` for this).
//!
//! The file (`user_history.bin`) holds, per user, the sorted item ids as
//! varint gaps: MovieLens 100K's 100,000 ratings take about 150 KB, where
//! the ids as text would take 600 KB. Layout, all integers LEB128 varints:
//!
//! ```text
//! "RSUH" 0x01                         magic and format version
//! users
//! per user, ids ascending:
//!   name length, name (UTF-8)
//!   items, then the first id and each later id's gap to the one before (> 0)
//! ```
//!
//! A bundle's files are checksummed, but the decoder still trusts nothing: a
//! count larger than the bytes left, a gap of 0 or past `u64::MAX`, a name
//! that is not UTF-8 or a user twice is refused with the offset, never a panic
//! or an allocation the file cannot back.

use std::collections::HashMap;
use std::path::Path;

use crate::BundleError;
use crate::varint::{Cursor, VarintError, put_varint};

/// The file's first bytes: magic and format version.
const MAGIC: &[u8; 5] = b"RSUH\x01";

/// The file name the builders write, relative to the bundle.
pub const USER_HISTORY_FILE: &str = "user_history.bin";

/// Each user's items, sorted and unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserHistory {
    users: HashMap<String, Box<[u64]>>,
}

impl UserHistory {
    /// The histories of `pairs` of user and item, in any order, with repeats.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, u64)>) -> Self {
        let mut users: HashMap<String, Vec<u64>> = HashMap::new();
        for (user, item) in pairs {
            users.entry(user).or_default().push(item);
        }
        Self {
            users: users
                .into_iter()
                .map(|(user, mut items)| {
                    items.sort_unstable();
                    items.dedup();
                    (user, items.into_boxed_slice())
                })
                .collect(),
        }
    }

    /// `user`'s items, ascending; empty for a user without history.
    pub fn items(&self, user: &str) -> &[u64] {
        self.users.get(user).map_or(&[], |items| items)
    }

    /// Users with a history.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Items over all users.
    pub fn interactions(&self) -> usize {
        self.users.values().map(|items| items.len()).sum()
    }

    /// The file's bytes; users in id order, so the same histories always make
    /// the same file (and checksum).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut users: Vec<(&String, &Box<[u64]>)> = self.users.iter().collect();
        users.sort_unstable_by(|a, b| a.0.cmp(b.0));
        put_varint(&mut out, users.len() as u64);
        for (user, items) in users {
            put_varint(&mut out, user.len() as u64);
            out.extend_from_slice(user.as_bytes());
            put_varint(&mut out, items.len() as u64);
            let mut previous = 0;
            for (i, item) in items.iter().enumerate() {
                put_varint(&mut out, if i == 0 { *item } else { item - previous });
                previous = *item;
            }
        }
        out
    }

    /// Reads [`Self::encode`]'s bytes; `path` names the file in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, BundleError> {
        if !bytes.starts_with(MAGIC) {
            return Err(BundleError::corrupt(
                path,
                "not a user history file (no RSUH version 1 header)",
            ));
        }
        let mut reader = Reader {
            cursor: Cursor::new(bytes, MAGIC.len()),
            path,
        };
        let count = reader.count("users")?;
        let mut users = HashMap::with_capacity(count);
        for _ in 0..count {
            let at = reader.at();
            let length = reader.count("name length")?;
            let name = match std::str::from_utf8(reader.take(length)?) {
                Ok(name) => name.to_string(),
                Err(_) => return Err(reader.error(at, "a user id that is not UTF-8")),
            };
            let items = reader.count("items")?;
            let mut list: Vec<u64> = Vec::with_capacity(items);
            for _ in 0..items {
                let at = reader.at();
                let value = reader.varint()?;
                let item = match list.last() {
                    None => value,
                    Some(_) if value == 0 => {
                        return Err(reader.error(at, "a gap of 0: ids must ascend"));
                    }
                    Some(previous) => previous
                        .checked_add(value)
                        .ok_or_else(|| reader.error(at, "an id past u64::MAX"))?,
                };
                list.push(item);
            }
            if users.insert(name, list.into_boxed_slice()).is_some() {
                return Err(reader.error(at, "a user listed twice"));
            }
        }
        if !reader.cursor.is_done() {
            return Err(reader.error(reader.at(), "bytes after the last user"));
        }
        Ok(Self { users })
    }

    /// Writes the file at `path`.
    pub fn save(&self, path: &Path) -> Result<(), BundleError> {
        std::fs::write(path, self.encode()).map_err(|e| BundleError::io(path, e))
    }

    /// Reads the file at `path`.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        Self::decode(&bytes, path)
    }
}

/// A [`Cursor`] over the file's bytes whose refusals name the file and the
/// offset.
struct Reader<'a> {
    cursor: Cursor<'a>,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn at(&self) -> usize {
        self.cursor.at()
    }

    fn error(&self, at: usize, what: &str) -> BundleError {
        BundleError::corrupt(self.path, format!("user history at byte {at}: {what}"))
    }

    /// `error` at `at` in the words of this file; `what` names a count.
    fn refused(&self, at: usize, error: VarintError, what: &str) -> BundleError {
        match error {
            VarintError::Truncated => self.error(at, "the file ends inside a number"),
            VarintError::Overflow => self.error(at, "a number past u64::MAX"),
            VarintError::TooMany { count, left } => self.error(
                at,
                &format!("{what} {count}, more than the {left} bytes left"),
            ),
        }
    }

    fn varint(&mut self) -> Result<u64, BundleError> {
        let at = self.at();
        self.cursor
            .varint()
            .map_err(|error| self.refused(at, error, "a number"))
    }

    /// A count of things that each take at least one of the bytes left.
    fn count(&mut self, what: &str) -> Result<usize, BundleError> {
        let at = self.at();
        self.cursor
            .count(1)
            .map_err(|error| self.refused(at, error, what))
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], BundleError> {
        let at = self.at();
        self.cursor
            .take(length)
            .map_err(|_| self.error(at, "the file ends inside a user id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path() -> &'static Path {
        Path::new("user_history.bin")
    }

    #[test]
    fn histories_are_sorted_unique_and_round_trip() {
        let history = UserHistory::from_pairs([
            ("b".to_string(), 7),
            ("a".to_string(), u64::MAX),
            ("a".to_string(), 3),
            ("a".to_string(), 3),
            ("a".to_string(), 0),
        ]);
        assert_eq!(history.items("a"), &[0, 3, u64::MAX]);
        assert_eq!(history.items("b"), &[7]);
        assert!(history.items("nobody").is_empty());
        assert_eq!((history.users(), history.interactions()), (2, 4));
        let bytes = history.encode();
        assert_eq!(UserHistory::decode(&bytes, path()).unwrap(), history);
    }

    #[test]
    fn a_damaged_file_is_refused_by_offset() {
        // The second id's gap (995) takes two bytes.
        let good =
            UserHistory::from_pairs([("u".to_string(), 5), ("u".to_string(), 1_000)]).encode();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"nope".to_vec(), "header"),
            (good[..good.len() - 1].to_vec(), "ends inside a number"),
            ([good.clone(), vec![0]].concat(), "bytes after"),
            // One user claiming a billion items.
            (
                [MAGIC.to_vec(), vec![1, 1, b'u', 0xff, 0xff, 0xff, 0x03]].concat(),
                "more than",
            ),
            // A gap of 0.
            (
                [MAGIC.to_vec(), vec![1, 1, b'u', 2, 5, 0]].concat(),
                "gap of 0",
            ),
            // The same user twice.
            (
                [MAGIC.to_vec(), vec![2, 1, b'u', 0, 1, b'u', 0]].concat(),
                "twice",
            ),
            // Not UTF-8.
            ([MAGIC.to_vec(), vec![1, 1, 0xff, 0]].concat(), "UTF-8"),
            // u64::MAX plus one.
            (
                [
                    MAGIC.to_vec(),
                    vec![1, 1, b'u', 2],
                    vec![0xff; 9],
                    vec![1, 1],
                ]
                .concat(),
                "past u64::MAX",
            ),
        ];
        for (bytes, words) in cases {
            let error = UserHistory::decode(&bytes, path()).unwrap_err().to_string();
            assert!(error.contains(words), "{words}: {error}");
            assert!(error.contains("user_history.bin"), "{error}");
        }
    }

    proptest! {
        #[test]
        fn any_histories_round_trip(
            pairs in prop::collection::vec(("[a-z0-9é]{0,6}", any::<u64>()), 0..200)
        ) {
            let history = UserHistory::from_pairs(pairs);
            prop_assert_eq!(UserHistory::decode(&history.encode(), path()).unwrap(), history);
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_a_panic(
            tail in prop::collection::vec(any::<u8>(), 0..300)
        ) {
            let bytes = [MAGIC.to_vec(), tail].concat();
            let _ = UserHistory::decode(&bytes, path());
        }
    }
}
