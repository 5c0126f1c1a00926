//! Train/test splits: random (TFRS's tutorials) and temporal.
//!
//! TFRS's tutorials split MovieLens 100K with
//! `ratings.shuffle(100_000, seed=42, reshuffle_each_iteration=False)` and take
//! the first 80 000 for training, the next 20 000 for test. We cannot reproduce
//! TensorFlow's shuffle order, so [`random_split`] is our own seeded shuffle
//! (ChaCha8, stable across `rand` releases) followed by the same take/skip: the
//! same kind of split, not the same rows.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Interaction;
use crate::error::{Result, TrainerError};

/// Interactions divided into training and test sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    /// Training interactions.
    pub train: Vec<Interaction>,
    /// Held-out interactions.
    pub test: Vec<Interaction>,
}

/// Shuffles with `seed`, then the first `train_fraction` (rounded) is training,
/// the rest test. The same seed gives the same split.
pub fn random_split(interactions: &[Interaction], train_fraction: f64, seed: u64) -> Result<Split> {
    if !(0.0..=1.0).contains(&train_fraction) {
        return Err(TrainerError::InvalidConfig {
            field: "train_fraction",
            reason: format!("{train_fraction} is not within 0 and 1"),
        });
    }
    let mut order: Vec<usize> = (0..interactions.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let take = (interactions.len() as f64 * train_fraction).round() as usize;
    let pick = |ix: &[usize]| ix.iter().map(|&i| interactions[i].clone()).collect();
    Ok(Split {
        train: pick(&order[..take]),
        test: pick(&order[take..]),
    })
}

/// Each user's last `n` interactions by timestamp (ties: file order) are test,
/// the rest training ("leave last n out"). Users with `n` or fewer interactions
/// stay whole in training, so every test user has history. Both sets keep file order.
pub fn last_n_per_user(interactions: &[Interaction], n: usize) -> Result<Split> {
    let times = timestamps(interactions)?;
    let mut by_user: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, interaction) in interactions.iter().enumerate() {
        by_user.entry(&interaction.user).or_default().push(i);
    }
    let mut is_test = vec![false; interactions.len()];
    for rows in by_user.values_mut() {
        if rows.len() <= n {
            continue;
        }
        rows.sort_by_key(|&i| (times[i], i));
        for &i in &rows[rows.len() - n..] {
            is_test[i] = true;
        }
    }
    Ok(partition(interactions, &is_test))
}

/// Interactions before `cutoff` (seconds) are training, the others test.
pub fn time_cutoff(interactions: &[Interaction], cutoff: i64) -> Result<Split> {
    let times = timestamps(interactions)?;
    let is_test: Vec<bool> = times.iter().map(|&t| t >= cutoff).collect();
    Ok(partition(interactions, &is_test))
}

fn timestamps(interactions: &[Interaction]) -> Result<Vec<i64>> {
    interactions
        .iter()
        .enumerate()
        .map(|(index, i)| i.timestamp.ok_or(TrainerError::MissingTimestamp { index }))
        .collect()
}

fn partition(interactions: &[Interaction], is_test: &[bool]) -> Split {
    let mut split = Split::default();
    for (interaction, &test) in interactions.iter().zip(is_test) {
        if test {
            split.test.push(interaction.clone());
        } else {
            split.train.push(interaction.clone());
        }
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(rows: &[(&str, &str, i64)]) -> Vec<Interaction> {
        rows.iter()
            .map(|&(u, i, t)| Interaction {
                user: u.into(),
                item: i.into(),
                rating: None,
                timestamp: Some(t),
            })
            .collect()
    }

    fn many(n: usize) -> Vec<Interaction> {
        (0..n)
            .map(|i| Interaction {
                user: format!("u{}", i % 7),
                item: format!("i{i}"),
                rating: None,
                timestamp: Some(i as i64),
            })
            .collect()
    }

    #[test]
    fn random_split_is_deterministic_and_covers_everything() {
        let data = many(1000);
        let a = random_split(&data, 0.8, 42).unwrap();
        let b = random_split(&data, 0.8, 42).unwrap();
        let c = random_split(&data, 0.8, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.train, c.train);
        assert_eq!((a.train.len(), a.test.len()), (800, 200));
        let mut all: Vec<_> = a
            .train
            .iter()
            .chain(&a.test)
            .map(|i| i.item.clone())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 1000);
        // A shuffle, not the file order.
        assert_ne!(a.train[..10], data[..10]);
    }

    #[test]
    fn random_split_refuses_bad_fractions() {
        assert!(random_split(&many(3), 1.5, 0).is_err());
    }

    #[test]
    fn last_n_takes_the_latest_per_user() {
        let data = events(&[
            ("a", "1", 30),
            ("a", "2", 10),
            ("b", "3", 5),
            ("a", "4", 20),
            ("b", "5", 6),
            ("c", "6", 1),
        ]);
        let split = last_n_per_user(&data, 1).unwrap();
        let test: Vec<&str> = split.test.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(test, vec!["1", "5"]);
        let train: Vec<&str> = split.train.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(train, vec!["2", "3", "4", "6"]);
    }

    #[test]
    fn cutoff_splits_by_time() {
        let data = events(&[("a", "1", 30), ("a", "2", 10), ("b", "3", 20)]);
        let split = time_cutoff(&data, 20).unwrap();
        assert_eq!(split.train.len(), 1);
        assert_eq!(split.test.len(), 2);
    }

    #[test]
    fn temporal_needs_timestamps() {
        let mut data = events(&[("a", "1", 30), ("a", "2", 10)]);
        data[1].timestamp = None;
        let err = last_n_per_user(&data, 1).unwrap_err().to_string();
        assert!(err.contains("interaction 1"), "{err}");
    }
}
