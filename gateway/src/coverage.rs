//! Coverage reasons: the one place that turns a stage and a failure into the
//! `DegradedReason` clients read, and decides when an answer is degraded.

use recsys_proto::v1::{Coverage, DegradedReason, Stage};

/// A reason of `stage` (and `shard`, for retrieval) with `reason`'s text.
#[allow(deprecated)] // `stage`, the string, is still filled for older clients.
pub fn degraded(
    stage: Stage,
    shard: Option<u32>,
    reason: impl std::fmt::Display,
) -> DegradedReason {
    DegradedReason {
        stage: stage.name().into(),
        stage_kind: stage.into(),
        shard,
        reason: reason.to_string(),
    }
}

/// Marks the coverage degraded when anything fell short.
pub fn finish(mut coverage: Coverage) -> Coverage {
    coverage.degraded =
        !coverage.reasons.is_empty() || coverage.shards_answered < coverage.shards_asked;
    coverage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(deprecated)]
    fn both_stage_fields_say_the_same() {
        let reason = degraded(Stage::Ranking, None, "deadline exceeded");
        assert_eq!(reason.stage, "ranking");
        assert_eq!(reason.stage_kind(), Stage::Ranking);
        assert_eq!(reason.reason, "deadline exceeded");
        let shard = degraded(Stage::Retrieval, Some(3), "unavailable: gone");
        assert_eq!((shard.stage.as_str(), shard.shard), ("retrieval", Some(3)));
    }
}
