//! What the gateway re-checks in every node answer before it uses it.
//!
//! A node registers itself in etcd, so an answer is only as trustworthy as
//! whoever could write there. A search answer must hold as many scores as ids,
//! no id twice, no excluded id, only ids that hash to the shard asked, only
//! finite scores, and the bundle version the request is answered by; a ranking
//! answer one finite score per candidate and (when it names one) that version;
//! an item's vector (similar items) that version, and when found a finite
//! vector of the version's dimensions.
//! An answer that fails is not used (the shard or ranking stage falls short,
//! with the reason in coverage, and the call is retried on another replica)
//! and is counted in
//! `recsys_gateway_refused_answers_total` by check.
//!
//! Failures that no request can cause (duplicates, excluded or foreign ids,
//! another version, arrays that disagree) also quarantine the node
//! ([`NodeFailure::breaks_guarantee`], `node_channels::QUARANTINE`). A
//! non-finite score does not: extreme but valid inputs against a model with
//! large weights may overflow, and quarantining for it would let one caller
//! take nodes out of routing.

use recsys_bundle::attributes::{ItemAttributes, RowFilter};
use recsys_bundle::shard_of;
use recsys_proto::v1::{GetItemVectorResponse, RankResponse, SearchResponse};
use rustc_hash::FxHashSet;

use crate::fanout::ShardTarget;
use crate::node_failure::NodeFailure;

/// What a shard's answer is checked against.
#[derive(Debug, Clone, Copy)]
pub struct SearchExpectation<'a> {
    /// The shard asked, out of how many.
    pub target: ShardTarget,
    /// The ids the request excluded on this shard.
    pub excluded: &'a [u64],
    /// The bundle version the gateway serves.
    pub version: &'a str,
    /// With vectors asked for: their dimensions.
    pub vectors: Option<usize>,
    /// The request's filter: every item must match it.
    pub filter: Option<(&'a ItemAttributes, &'a RowFilter)>,
}

/// Checks a shard's answer; see the module doc.
pub fn check_search(
    response: &SearchResponse,
    expected: &SearchExpectation<'_>,
) -> Result<(), NodeFailure> {
    let ShardTarget { shard, shard_count } = expected.target;
    if response.item_ids.len() != response.scores.len() {
        return Err(NodeFailure::Malformed(format!(
            "{} ids and {} scores",
            response.item_ids.len(),
            response.scores.len()
        )));
    }
    check_version(&response.bundle_version, expected.version)?;
    if let Some(stray) = response
        .item_ids
        .iter()
        .find(|id| shard_of(**id, shard_count) != shard)
    {
        return Err(NodeFailure::ForeignItem {
            item: *stray,
            belongs_to: shard_of(*stray, shard_count),
            shard_count,
        });
    }
    if let Some(position) = response.scores.iter().position(|s| !s.is_finite()) {
        return Err(NodeFailure::NonFiniteScore {
            item: response.item_ids[position],
            score: response.scores[position],
        });
    }
    let mut seen = FxHashSet::with_capacity_and_hasher(response.item_ids.len(), Default::default());
    if let Some(twice) = response.item_ids.iter().find(|id| !seen.insert(**id)) {
        return Err(NodeFailure::DuplicateItem(*twice));
    }
    if !expected.excluded.is_empty()
        && let Some(excluded) = expected.excluded.iter().find(|id| seen.contains(id))
    {
        return Err(NodeFailure::ExcludedItem(*excluded));
    }
    if let Some((attributes, filter)) = expected.filter
        && let Some(stray) = response
            .item_ids
            .iter()
            .find(|id| !attributes.matches_id(filter, **id))
    {
        return Err(NodeFailure::Malformed(format!(
            "item {stray} does not match the filter"
        )));
    }
    if let Some(dimensions) = expected.vectors {
        let wanted = response.item_ids.len() * dimensions;
        if response.vectors.len() != wanted {
            return Err(NodeFailure::Malformed(format!(
                "{} vector values for {} items of {dimensions} dimensions",
                response.vectors.len(),
                response.item_ids.len()
            )));
        }
        if response.vectors.iter().any(|v| !v.is_finite()) {
            return Err(NodeFailure::Malformed(
                "a vector value is not finite".into(),
            ));
        }
    }
    Ok(())
}

/// Checks the answer to a similar-items lookup of `item` (`similar_items`):
/// of `version`, and a found vector `dimensions` long and finite, since it
/// becomes every shard's query.
pub fn check_item_vector(
    response: &GetItemVectorResponse,
    item: u64,
    version: &str,
    dimensions: usize,
) -> Result<(), NodeFailure> {
    check_version(&response.bundle_version, version)?;
    if response.found
        && (response.vector.len() != dimensions
            || response.vector.iter().any(|value| !value.is_finite()))
    {
        return Err(NodeFailure::Malformed(format!(
            "item {item}'s vector has {} values (expected {dimensions}) or a non-finite one",
            response.vector.len()
        )));
    }
    Ok(())
}

/// An answer's bundle version must be the one the gateway serves.
fn check_version(answered: &str, serving: &str) -> Result<(), NodeFailure> {
    if answered == serving {
        return Ok(());
    }
    Err(NodeFailure::WrongVersion {
        answered: answered.chars().take(64).collect(),
        serving: serving.to_string(),
    })
}

/// Checks a ranking answer for `candidates` candidates.
/// A ranking answer also names the bundle version that scored, which must be
/// the request's `version` (nodes before rollouts name none).
pub fn check_rank(
    response: &RankResponse,
    candidates: usize,
    version: &str,
) -> Result<(), NodeFailure> {
    if !response.bundle_version.is_empty() {
        check_version(&response.bundle_version, version)?;
    }
    if response.scores.len() != candidates {
        return Err(NodeFailure::Malformed(format!(
            "{} scores for {candidates} candidates",
            response.scores.len()
        )));
    }
    if let Some(position) = response.scores.iter().position(|s| !s.is_finite()) {
        return Err(NodeFailure::NonFiniteRankScore {
            position,
            score: response.scores[position],
        });
    }
    // Head scores are shown, not ordered by: a count that does not match is a
    // broken answer, a non-finite value is passed on as it is.
    if response.head_scores.len() != candidates * response.heads.len() {
        return Err(NodeFailure::Malformed(format!(
            "{} head scores for {candidates} candidates and {} heads",
            response.head_scores.len(),
            response.heads.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ONE_SHARD: ShardTarget = ShardTarget {
        shard: 0,
        shard_count: 1,
    };

    fn answer(ids: Vec<u64>, scores: Vec<f32>) -> SearchResponse {
        SearchResponse {
            item_ids: ids,
            scores,
            bundle_version: "v1".into(),
            ..Default::default()
        }
    }

    fn check(response: &SearchResponse, excluded: &[u64]) -> Result<(), NodeFailure> {
        let expected = SearchExpectation {
            target: ONE_SHARD,
            excluded,
            version: "v1",
            vectors: None,
            filter: None,
        };
        check_search(response, &expected)
    }

    #[test]
    fn every_check_names_what_it_found() {
        let message =
            |r: SearchResponse, excluded: &[u64]| check(&r, excluded).unwrap_err().to_string();
        assert_eq!(
            message(answer(vec![1, 2], vec![0.5]), &[]),
            "malformed answer: 2 ids and 1 scores"
        );
        assert_eq!(
            message(answer(vec![1, 2], vec![f32::INFINITY, 0.1]), &[]),
            "answer holds a non-finite score: item 1 scored inf"
        );
        assert_eq!(
            message(answer(vec![1, 2, 1], vec![0.3, 0.2, 0.1]), &[]),
            "answer holds item 1 twice"
        );
        assert_eq!(
            message(answer(vec![1, 2], vec![0.3, 0.2]), &[7, 2]),
            "answer holds item 2, which the request excluded"
        );
        let mut other = answer(vec![1], vec![0.3]);
        other.bundle_version = "v0".into();
        assert_eq!(
            message(other, &[]),
            "answer is of bundle version \"v0\", the gateway serves \"v1\""
        );
        assert!(check(&answer(vec![1, 2], vec![0.3, 0.2]), &[3]).is_ok());
    }

    #[test]
    fn only_what_no_request_causes_quarantines() {
        let failure = |r: SearchResponse, excluded: &[u64]| check(&r, excluded).unwrap_err();
        assert!(failure(answer(vec![1, 1], vec![0.3, 0.2]), &[]).breaks_guarantee());
        assert!(failure(answer(vec![1], vec![0.3]), &[1]).breaks_guarantee());
        assert!(!failure(answer(vec![1], vec![f32::NAN]), &[]).breaks_guarantee());
        let ranked = RankResponse {
            scores: vec![0.1, f32::NEG_INFINITY],
            ..Default::default()
        };
        let error = check_rank(&ranked, 2, "v").unwrap_err();
        assert!(!error.breaks_guarantee());
        assert_eq!(
            error.to_string(),
            "ranking answer holds a non-finite score: candidate 1 scored -inf"
        );
        assert!(check_rank(&ranked, 3, "v").unwrap_err().breaks_guarantee());
        let other = RankResponse {
            scores: vec![0.1, 0.2],
            bundle_version: "v0".into(),
            ..Default::default()
        };
        assert!(check_rank(&other, 2, "v").unwrap_err().breaks_guarantee());
        assert!(check_rank(&other, 2, "v0").is_ok());
    }

    /// An item's vector of another version, or one that could not be a
    /// query, is refused (and so asked of another replica).
    #[test]
    fn item_vectors_of_another_version_or_unusable_are_refused() {
        let answer = |version: &str, found: bool, vector: Vec<f32>| GetItemVectorResponse {
            found,
            vector,
            bundle_version: version.into(),
            log_revision: 0,
        };
        let check = |response: GetItemVectorResponse| check_item_vector(&response, 7, "v2", 3);
        assert!(check(answer("v2", true, vec![0.1, 0.2, 0.3])).is_ok());
        assert!(check(answer("v2", false, vec![])).is_ok());
        assert!(matches!(
            check(answer("v1", true, vec![0.1, 0.2, 0.3])),
            Err(NodeFailure::WrongVersion { .. })
        ));
        assert!(matches!(
            check(answer("v2", true, vec![0.1, 0.2])),
            Err(NodeFailure::Malformed(_))
        ));
        assert!(matches!(
            check(answer("v2", true, vec![0.1, f32::NAN, 0.3])),
            Err(NodeFailure::Malformed(_))
        ));
    }

    #[test]
    fn items_of_another_shard_are_refused() {
        let target = ShardTarget {
            shard: 1,
            shard_count: 4,
        };
        let foreign = (0..100u64).find(|id| shard_of(*id, 4) != 1).unwrap();
        let own = (0..100u64).find(|id| shard_of(*id, 4) == 1).unwrap();
        let expected = SearchExpectation {
            target,
            excluded: &[],
            version: "v1",
            vectors: None,
            filter: None,
        };
        assert!(check_search(&answer(vec![own], vec![0.5]), &expected).is_ok());
        let err = check_search(&answer(vec![own, foreign], vec![0.5, 0.4]), &expected).unwrap_err();
        assert!(matches!(err, NodeFailure::ForeignItem { item, .. } if item == foreign));
        assert!(err.to_string().contains("another shard"), "{err}");
    }

    proptest! {
        /// An accepted answer is one the merge can trust: parallel arrays,
        /// unique ids, none excluded, every score finite.
        #[test]
        fn accepted_answers_keep_every_invariant(
            ids in proptest::collection::vec(0u64..64, 0..32),
            scores in proptest::collection::vec(prop_oneof![any::<f32>(), -1.0f32..1.0], 0..32),
            excluded in proptest::collection::vec(0u64..64, 0..8),
        ) {
            let response = answer(ids.clone(), scores.clone());
            if check(&response, &excluded).is_ok() {
                prop_assert_eq!(ids.len(), scores.len());
                prop_assert!(scores.iter().all(|s| s.is_finite()));
                let unique: FxHashSet<_> = ids.iter().collect();
                prop_assert_eq!(unique.len(), ids.len());
                prop_assert!(ids.iter().all(|id| !excluded.contains(id)));
            }
        }
    }
}
