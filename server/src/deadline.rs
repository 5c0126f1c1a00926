//! The caller's deadline, from the `grpc-timeout` header.
//!
//! tonic only enforces server-side timeouts it is configured with, and drops a
//! handler whose client deadline passed with `CANCELLED "Timeout expired"`; the
//! deadline itself arrives as a header (`grpc-timeout: 250m`, gRPC over HTTP/2
//! spec: at most 8 digits and a unit H, M, S, m, u or n). Every server reads it
//! here: the gateway to budget its stages, the nodes to drop work whose caller has
//! given up before they start it, admission control ([`crate::admission`]) to
//! answer `DEADLINE_EXCEEDED` when the deadline is what ran out.

use std::time::Duration;

/// The header gRPC clients put their deadline in.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

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

/// The caller's timeout in an HTTP request's headers, if it sent a valid one.
pub fn header_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(GRPC_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// The caller's timeout in a gRPC request's metadata, if it sent a valid one.
pub fn metadata_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    metadata
        .get(GRPC_TIMEOUT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

/// The instant `timeout` from now, or `None` when it is too far away to represent
/// (a deadline of centuries is no deadline).
pub fn deadline_after(timeout: Duration) -> Option<std::time::Instant> {
    std::time::Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for bad in [
            "",
            "m",
            "10",
            "10x",
            "-1m",
            "123456789m",
            "1.5S",
            " 1S",
            "é1S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_headers_and_metadata() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(header_timeout(&headers), None);
        headers.insert(GRPC_TIMEOUT_HEADER, http::HeaderValue::from_static("5m"));
        assert_eq!(header_timeout(&headers), Some(Duration::from_millis(5)));
        let metadata = tonic::metadata::MetadataMap::from_headers(headers);
        assert_eq!(metadata_timeout(&metadata), Some(Duration::from_millis(5)));
        assert_eq!(deadline_after(Duration::MAX), None);
    }

    #[test]
    fn never_panics_on_any_short_string() {
        // Every ASCII pair and a few longer shapes (the gateway's proptest covers more).
        for a in 0u8..128 {
            for b in 0u8..128 {
                let _ = parse_grpc_timeout(&String::from_utf8_lossy(&[a, b]));
            }
        }
        let _ = parse_grpc_timeout("99999999H");
    }
}
