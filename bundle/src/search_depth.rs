//! How deep one shard's HNSW search must go for a recall target: a table the
//! builder measures on the shard it just built and the manifest keeps.
//!
//! Why: one beam width (`ef`) for every request is too deep for some and too
//! shallow for others. The recall a beam gives depends on how many results are
//! asked (`k`) and on the graph (its size, its data); a cluster of four shards
//! asks each for about a third of `k` (the gateway's per-shard `k'`) from a
//! graph a quarter the size, so the bundle's one `ef` made each shard search
//! far deeper than the recall asked for needs (GloVe-50, four shards: recall@100
//! 0.992 where one shard gave 0.953, at 0.6x its rate). With the table a node
//! picks, per search, the smallest measured beam whose recall at that `k` met
//! the target, as Milvus' and Vespa's users otherwise tune by hand.

use serde::{Deserialize, Serialize};

/// Recall targets the builder measures, in thousandths.
pub const MEASURED_RECALL_PERMILLE: [u16; 4] = [900, 950, 980, 990];

/// One row: the beam that reached each target at this `k`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthRow {
    /// Results asked for.
    pub k: u32,
    /// The beam (`ef`) per target, in the order of [`SearchDepths::recall_permille`];
    /// a target no beam reached holds the narrowest beam on the plateau where
    /// recall stopped growing (`best_permille` says how high it got).
    pub ef: Vec<u32>,
    /// The best mean recall@k any beam reached, in thousandths: a target
    /// above it is out of this graph's reach at any depth.
    #[serde(default)]
    pub best_permille: u16,
}

/// Beams measured on one shard, by `k` (ascending) and recall target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchDepths {
    /// Held-out queries measured: items of the shard kept out of its graph
    /// while it was measured (and inserted after).
    pub queries: u32,
    /// The targets, in thousandths of recall@k, ascending.
    pub recall_permille: Vec<u16>,
    /// One row per measured `k`, ascending.
    pub rows: Vec<DepthRow>,
}

impl SearchDepths {
    /// The beam for `k` results at recall `target` (0..=1): the measured beam of
    /// the lowest target at or above `target` (the highest one's past it),
    /// interpolated linearly between the measured `k` around `k` (scaled with
    /// `k` past the last), rounded up, never below `k`. `None` for a table
    /// without rows or targets (a manifest someone wrote by hand).
    pub fn ef_for(&self, k: usize, target: f32) -> Option<usize> {
        let wanted = (f64::from(target) * 1000.0).ceil();
        let column = self
            .recall_permille
            .iter()
            .position(|permille| f64::from(*permille) >= wanted)
            .unwrap_or(self.recall_permille.len().checked_sub(1)?);
        let ef_at = |row: &DepthRow| row.ef.get(column).map(|ef| f64::from(*ef));
        let above = self.rows.iter().position(|row| row.k as usize >= k);
        let ef = match above {
            Some(0) => ef_at(&self.rows[0])?,
            Some(i) => {
                let (low, high) = (&self.rows[i - 1], &self.rows[i]);
                let (low_ef, high_ef) = (ef_at(low)?, ef_at(high)?);
                let span = f64::from(high.k - low.k).max(1.0);
                let along = (k as f64 - f64::from(low.k)) / span;
                low_ef + (high_ef - low_ef).max(0.0) * along
            }
            None => {
                let last = self.rows.last()?;
                ef_at(last)? * k as f64 / f64::from(last.k.max(1))
            }
        };
        Some((ef.ceil() as usize).max(k))
    }

    /// Checks what a loader relies on: targets and rows ascending, every row
    /// with one beam per target, every beam at least the row's `k`.
    pub fn check(&self) -> Result<(), String> {
        if !self.recall_permille.windows(2).all(|w| w[0] < w[1])
            || self.recall_permille.iter().any(|p| *p == 0 || *p > 1000)
        {
            return Err("recall_permille must ascend within 1..=1000".into());
        }
        if !self.rows.windows(2).all(|w| w[0].k < w[1].k) {
            return Err("rows must ascend by k".into());
        }
        for row in &self.rows {
            if row.ef.len() != self.recall_permille.len() {
                return Err(format!(
                    "row k = {} has {} beams for {} targets",
                    row.k,
                    row.ef.len(),
                    self.recall_permille.len()
                ));
            }
            if row.ef.iter().any(|ef| *ef < row.k) {
                return Err(format!("row k = {} has a beam below k", row.k));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SearchDepths {
        SearchDepths {
            queries: 100,
            recall_permille: vec![900, 950, 990],
            rows: vec![
                DepthRow {
                    k: 10,
                    ef: vec![12, 20, 40],
                    best_permille: 1000,
                },
                DepthRow {
                    k: 100,
                    ef: vec![110, 150, 300],
                    best_permille: 995,
                },
            ],
        }
    }

    #[test]
    fn picks_the_target_at_or_above() {
        let t = table();
        assert_eq!(t.ef_for(10, 0.9), Some(12));
        assert_eq!(t.ef_for(10, 0.91), Some(20));
        assert_eq!(t.ef_for(10, 0.95), Some(20));
        assert_eq!(t.ef_for(10, 0.999), Some(40), "past the last target");
        assert_eq!(t.ef_for(10, 0.5), Some(12));
    }

    #[test]
    fn interpolates_between_rows_and_scales_past_the_last() {
        let t = table();
        // Halfway from k 10 (20) to k 100 (150): 85.
        assert_eq!(t.ef_for(55, 0.95), Some(85));
        assert_eq!(t.ef_for(5, 0.95), Some(20), "below the first row: its beam");
        assert_eq!(t.ef_for(200, 0.95), Some(300), "past the last: scaled");
        assert_eq!(t.ef_for(1, 0.9), Some(12));
    }

    #[test]
    fn never_below_k_and_monotone_in_k() {
        let t = table();
        let mut last = 0;
        for k in 1..400 {
            let ef = t.ef_for(k, 0.95).unwrap();
            assert!(ef >= k && ef >= last, "k {k}: {ef} after {last}");
            last = ef;
        }
    }

    #[test]
    fn empty_tables_answer_none_and_checks_name_the_problem() {
        let mut t = table();
        t.rows.clear();
        assert_eq!(t.ef_for(10, 0.95), None);
        let mut t = table();
        t.recall_permille.clear();
        assert_eq!(t.ef_for(10, 0.95), None);
        assert!(table().check().is_ok());
        let mut t = table();
        t.rows[0].ef.pop();
        assert!(t.check().unwrap_err().contains("beams"));
        let mut t = table();
        t.rows[1].k = 5;
        assert!(t.check().is_err());
        let mut t = table();
        t.rows[0].ef[0] = 3;
        assert!(t.check().unwrap_err().contains("below k"));
    }

    #[test]
    fn round_trips_through_json() {
        let t = table();
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<SearchDepths>(&text).unwrap(), t);
    }
}
