//! Ranker variants (issue 20, part 3): a bundle may carry, beside its ranker,
//! further rankers under `rankers/{name}/`, and the traffic share each gets.
//! The gateway assigns each user to one variant by a seeded hash of the user id
//! ([`Shares::assign`]): the same user gets the same variant on every request
//! and from every gateway, as long as the shares stay; a share that grows only
//! takes users from the variants after it in name order, never reshuffles
//! everyone.
//!
//! The bundle's own ranker is the variant [`DEFAULT_VARIANT`]. Shares are
//! weights, normalized to sum to 1; a variant without a share gets no
//! traffic, and a bundle without shares sends everything to the default.

use std::collections::BTreeMap;
use std::path::Path;

use crate::layout::RankerFiles;
use crate::manifest::Manifest;

/// The name of a bundle's own ranker among its variants.
pub const DEFAULT_VARIANT: &str = "default";

/// The bundle subdirectory the variants' ranker directories live in.
pub const VARIANTS_DIR: &str = "rankers";

/// Longest variant name, in bytes.
pub const MAX_VARIANT_NAME_BYTES: usize = 64;

/// Where variant `name`'s ranker directory is, relative to the bundle.
pub fn variant_dir(name: &str) -> String {
    format!("{VARIANTS_DIR}/{name}")
}

/// A variant name: 1 to 64 of `a-z 0-9 _ -` (it is a directory name, a metric
/// label and a field of every answer); `default` is the bundle's own ranker.
pub fn check_variant_name(name: &str) -> Result<(), String> {
    let fits = !name.is_empty()
        && name.len() <= MAX_VARIANT_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !fits {
        return Err(format!(
            "variant name {name:?}: 1 to {MAX_VARIANT_NAME_BYTES} of a-z, 0-9, _ and -"
        ));
    }
    if name == DEFAULT_VARIANT {
        return Err(format!(
            "variant name {name:?} is the bundle's own ranker's"
        ));
    }
    Ok(())
}

/// Traffic shares of a bundle's variants, normalized; the assignment of users.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares {
    /// Variants with a positive share, in name order, with the cumulative
    /// share up to and including each (the last is 1).
    cumulative: Vec<(String, f64)>,
    /// Seeds the hash, so two experiments can split users independently.
    salt: String,
}

/// The salt when none is given.
pub const DEFAULT_SALT: &str = "recsys";

impl Default for Shares {
    /// Everything to the default ranker.
    fn default() -> Self {
        Self {
            cumulative: vec![(DEFAULT_VARIANT.to_string(), 1.0)],
            salt: DEFAULT_SALT.to_string(),
        }
    }
}

impl Shares {
    /// Shares from weights by variant name (each finite and at least 0, some
    /// positive), each name one of `known`; `salt` seeds the assignment.
    pub fn new(
        weights: &BTreeMap<String, f64>,
        known: &[&str],
        salt: &str,
    ) -> Result<Self, String> {
        if weights.is_empty() {
            return Ok(Self {
                salt: salt.to_string(),
                ..Self::default()
            });
        }
        for (name, &weight) in weights {
            if !known.contains(&name.as_str()) {
                return Err(format!(
                    "shares name variant {name:?}, the bundle has {}",
                    known.join(", ")
                ));
            }
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!(
                    "share of {name:?} is {weight}, a share is a finite number at least 0"
                ));
            }
        }
        let total: f64 = weights.values().sum();
        if total <= 0.0 {
            return Err("every share is 0: no variant would get traffic".into());
        }
        let mut running = 0.0;
        let mut cumulative: Vec<(String, f64)> = weights
            .iter()
            .filter(|(_, w)| **w > 0.0)
            .map(|(name, w)| {
                running += w / total;
                (name.clone(), running)
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            last.1 = 1.0;
        }
        Ok(Self {
            cumulative,
            salt: salt.to_string(),
        })
    }

    /// Parses a shares file ([`parse_weights`]) for a bundle of the `known`
    /// variants.
    pub fn parse(text: &str, known: &[&str]) -> Result<Self, String> {
        let (weights, salt) = parse_weights(text)?;
        Self::new(&weights, known, &salt)
    }

    /// The variant `user_id` is assigned to: where the hash of the salt and
    /// the id falls among the cumulative shares.
    pub fn assign(&self, user_id: &str) -> &str {
        let point = unit_hash(&self.salt, user_id);
        self.cumulative
            .iter()
            .find(|(_, upto)| point < *upto)
            .or(self.cumulative.last())
            .map_or(DEFAULT_VARIANT, |(name, _)| name.as_str())
    }

    /// Each variant with traffic and its normalized share, in name order.
    pub fn shares(&self) -> Vec<(&str, f64)> {
        let mut before = 0.0;
        self.cumulative
            .iter()
            .map(|(name, upto)| {
                let share = upto - before;
                before = *upto;
                (name.as_str(), share)
            })
            .collect()
    }
}

/// A shares file's content: a JSON object of variant name to weight, and an
/// optional `"salt"` string, e.g. `{"default": 0.9, "dcn-v3": 0.1}`; the
/// weights by name and the salt ([`DEFAULT_SALT`] when none), unchecked.
pub fn parse_weights(text: &str) -> Result<(BTreeMap<String, f64>, String), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value
        .as_object()
        .ok_or("a shares file is a JSON object of variant name to weight")?;
    let mut weights = BTreeMap::new();
    let mut salt = DEFAULT_SALT.to_string();
    for (key, value) in object {
        if key == "salt" {
            salt = value.as_str().ok_or("salt: a string")?.to_string();
            continue;
        }
        let weight = value
            .as_f64()
            .ok_or_else(|| format!("share of {key:?}: a number"))?;
        weights.insert(key.clone(), weight);
    }
    Ok((weights, salt))
}

/// A point in [0, 1) from `salt` and `id`: FNV-1a over both (a 0xff byte
/// between, which UTF-8 never holds), then MurmurHash3's 64-bit finalizer so
/// that ids differing in a last character spread over the whole range. Written
/// out rather than taken from `std::hash`, whose algorithm may change between
/// Rust releases: gateways built by different compilers must agree.
fn unit_hash(salt: &str, id: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in salt.as_bytes().iter().chain(&[0xff]).chain(id.as_bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

impl Manifest {
    /// The variants a gateway may assign: the default when the bundle has a
    /// ranker, then the named ones.
    pub fn variant_names(&self) -> Vec<&str> {
        self.ranker
            .as_ref()
            .map(|_| DEFAULT_VARIANT)
            .into_iter()
            .chain(self.ranker_variants.keys().map(String::as_str))
            .collect()
    }

    /// Variant `name`'s ranker files (the default's for [`DEFAULT_VARIANT`]).
    pub fn variant_files(&self, dir: &Path, name: &str) -> Option<RankerFiles> {
        if name == DEFAULT_VARIANT {
            return self.ranker_files(dir);
        }
        self.ranker_variants.get(name).map(|spec| spec.files(dir))
    }

    /// The shares the manifest records ([`Manifest::ranker_shares`]).
    pub fn shares(&self) -> Result<Shares, String> {
        Shares::new(&self.ranker_shares, &self.variant_names(), DEFAULT_SALT)
    }

    /// Checks the variants' names, that variants come with a default ranker,
    /// and the shares.
    pub(crate) fn check_variants(&self) -> Result<(), String> {
        if !self.ranker_variants.is_empty() && self.ranker.is_none() {
            return Err(
                "ranker_variants without a ranker: the default variant is the bundle's ranker"
                    .into(),
            );
        }
        for name in self.ranker_variants.keys() {
            check_variant_name(name).map_err(|e| format!("ranker_variants: {e}"))?;
        }
        self.shares()
            .map(|_| ())
            .map_err(|e| format!("ranker_shares: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(pairs: &[(&str, f64)]) -> Shares {
        let weights = pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect();
        let known: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        Shares::new(&weights, &known, DEFAULT_SALT).unwrap()
    }

    fn counts(shares: &Shares, users: usize) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for u in 0..users {
            *counts
                .entry(shares.assign(&format!("u{u}")).to_string())
                .or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn ten_thousand_users_split_close_to_the_shares_and_stay_put() {
        let s = shares(&[("default", 0.7), ("b", 0.2), ("c", 0.1)]);
        let counts = counts(&s, 10_000);
        // Binomial standard deviations: 46, 40 and 30 users.
        for (name, share) in [("default", 0.7), ("b", 0.2), ("c", 0.1)] {
            let got = counts[name] as f64 / 10_000.0;
            assert!((got - share).abs() < 0.02, "{name}: {got} for {share}");
        }
        // Stable: the same answer again, from an equal value built anew.
        let again = shares(&[("c", 0.1), ("b", 0.2), ("default", 0.7)]);
        for u in 0..10_000 {
            let id = format!("u{u}");
            assert_eq!(s.assign(&id), again.assign(&id));
        }
    }

    #[test]
    fn a_growing_share_takes_users_only_from_the_variants_after_it() {
        let before = shares(&[("a", 0.1), ("b", 0.9)]);
        let after = shares(&[("a", 0.3), ("b", 0.7)]);
        for u in 0..10_000 {
            let id = format!("u{u}");
            if before.assign(&id) == "a" {
                assert_eq!(after.assign(&id), "a", "{id} left a growing variant");
            }
        }
    }

    #[test]
    fn the_salt_splits_users_independently() {
        let weights = BTreeMap::from([("a".to_string(), 1.0), ("b".to_string(), 1.0)]);
        let one = Shares::new(&weights, &["a", "b"], "one").unwrap();
        let two = Shares::new(&weights, &["a", "b"], "two").unwrap();
        let same = (0..10_000)
            .filter(|u| one.assign(&format!("u{u}")) == two.assign(&format!("u{u}")))
            .count();
        assert!((4_700..5_300).contains(&same), "{same}");
    }

    #[test]
    fn shares_files_parse_and_bad_ones_say_why() {
        let known = ["default", "b"];
        let s = Shares::parse(r#"{"default": 3, "b": 1, "salt": "exp-7"}"#, &known).unwrap();
        assert_eq!(s.shares(), vec![("b", 0.25), ("default", 0.75)]);
        for (text, needle) in [
            (r#"{"zzz": 1}"#, "the bundle has default, b"),
            (r#"{"b": -1}"#, "at least 0"),
            (r#"{"b": 0, "default": 0}"#, "every share is 0"),
            (r#"{"b": "x"}"#, "a number"),
            ("[1]", "JSON object"),
            ("{", "not JSON"),
        ] {
            let error = Shares::parse(text, &known).unwrap_err();
            assert!(error.contains(needle), "{text}: {error}");
        }
        assert_eq!(
            Shares::parse("{}", &known).unwrap().assign("anyone"),
            "default"
        );
    }

    #[test]
    fn names_are_directory_names_and_not_the_default() {
        assert!(check_variant_name("dcn-v3_2").is_ok());
        for bad in ["", "Default", "a/b", "..", "default", &"x".repeat(65)] {
            assert!(check_variant_name(bad).is_err(), "{bad}");
        }
    }
}
