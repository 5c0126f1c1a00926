//! The request deadline, from the `grpc-timeout` header the client sends
//! (parsed by `recsys_server::deadline`): the gateway reads it to budget the
//! retrieval stage and answer with what arrived before the client gives up.

use std::time::Duration;

/// The time the request may take: the client's deadline, else the policy's
/// default, and never more than its `max_timeout` (a client asking for hours
/// gets that much: it may wait, but its request does not hold a slot for it).
pub fn request_timeout(
    metadata: &tonic::metadata::MetadataMap,
    policy: &crate::RequestPolicy,
) -> Duration {
    recsys_server::deadline::metadata_timeout(metadata)
        .unwrap_or(policy.default_timeout)
        .min(policy.max_timeout)
}

/// When each stage must be done, measured from the request's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Shards that have not answered by then become coverage reasons.
    pub retrieval: Duration,
    /// Ranking that has not answered by then falls back to retrieval order.
    pub ranking: Duration,
}

/// Share of the usable time retrieval gets when a ranking stage follows.
const RETRIEVAL_SHARE_WITH_RANKING: f64 = 0.6;

/// Splits `timeout`: a reserve to merge and answer (a tenth, at least 1 ms and at
/// most 20 ms) comes off the end, so a slow shard or ranker turns into a degraded
/// answer rather than a `DEADLINE_EXCEEDED` at the client; with ranking,
/// retrieval gets 60 % of the rest.
pub fn plan(timeout: Duration, with_ranking: bool) -> Budget {
    let reserve = (timeout / 10).clamp(Duration::from_millis(1), Duration::from_millis(20));
    let usable = timeout.saturating_sub(reserve);
    let retrieval = if with_ranking {
        usable.mul_f64(RETRIEVAL_SHARE_WITH_RANKING)
    } else {
        usable
    };
    Budget {
        retrieval,
        ranking: usable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use recsys_server::deadline::parse_grpc_timeout;

    #[test]
    fn budget_keeps_a_reserve_and_splits_for_ranking() {
        let ms = Duration::from_millis;
        let both = |retrieval, ranking| Budget { retrieval, ranking };
        assert_eq!(plan(ms(100), false), both(ms(90), ms(90)));
        assert_eq!(plan(ms(100), true), both(ms(54), ms(90)));
        assert_eq!(plan(Duration::from_secs(10), false).retrieval, ms(9_980));
        assert_eq!(
            plan(Duration::from_micros(500), true).ranking,
            Duration::ZERO
        );
    }

    #[test]
    fn long_deadlines_are_clamped() {
        let policy = crate::RequestPolicy::default();
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(request_timeout(&metadata, &policy), policy.default_timeout);
        metadata.insert("grpc-timeout", "99999999H".parse().unwrap());
        assert_eq!(request_timeout(&metadata, &policy), Duration::from_secs(30));
        metadata.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            request_timeout(&metadata, &policy),
            Duration::from_millis(250)
        );
    }

    proptest! {
        #[test]
        fn never_panics(value in "\\PC{0,12}") {
            let _ = parse_grpc_timeout(&value);
        }

        /// Whatever the header, the timeout is at most the cap, and the budget
        /// built from it fits inside it.
        #[test]
        fn every_timeout_is_capped(digits in 0u64..100_000_000, unit in "[HMSmun]") {
            let policy = crate::RequestPolicy::default();
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-timeout", format!("{digits}{unit}").parse().unwrap());
            let timeout = request_timeout(&metadata, &policy);
            prop_assert!(timeout <= policy.max_timeout);
            let budget = plan(timeout, true);
            prop_assert!(budget.retrieval <= budget.ranking && budget.ranking <= timeout);
        }
    }
}
