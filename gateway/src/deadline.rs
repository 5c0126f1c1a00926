//! The request deadline, from the `grpc-timeout` header the client sends.
//!
//! tonic only enforces server-side timeouts it is configured with; the client's own
//! deadline arrives as a header (`grpc-timeout: 250m`, gRPC over HTTP/2 spec:
//! at most 8 digits and a unit H, M, S, m, u or n), so the gateway reads it to
//! budget the retrieval stage and answer with what arrived before the client gives up.

use std::time::Duration;

/// Parses a `grpc-timeout` value; `None` when it is malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    // ASCII only: slicing by bytes below must not split a character.
    if !value.is_ascii() || value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The time the request may take: the client's deadline, else the policy's
/// default, and never more than its `max_timeout` (a client asking for hours
/// gets that much: it may wait, but its request does not hold a slot for it).
pub fn request_timeout(
    metadata: &tonic::metadata::MetadataMap,
    policy: &crate::RequestPolicy,
) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
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

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S", " 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

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
