//! The caller's deadline, from the `grpc-timeout` header, bounded by the gateway's own.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's own deadline, if it set one.
pub fn caller_deadline(metadata: &MetadataMap) -> Option<Duration> {
    metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
}

/// How long a call may take: the caller's `grpc-timeout` when set and shorter, else `default`.
///
/// The budget ends a little before the caller's deadline (a tenth of it, at most 100 ms) so
/// the gateway answers DEADLINE_EXCEEDED itself rather than racing tonic's own timer, which
/// would end the call as CANCELLED.
pub fn call_budget(metadata: &MetadataMap, default: Duration) -> Duration {
    metadata.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout).map_or(default, |caller| {
        let margin = (caller / 10).min(Duration::from_millis(100));
        (caller - margin).min(default)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("100n"), Some(Duration::from_nanos(100)));
        for bad in ["", "S", "5", "5x", "-5S", "123456789S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let mut md = MetadataMap::new();
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_secs(60));
        md.insert("grpc-timeout", "500m".parse().unwrap());
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_millis(450), "ends a tenth early");
        md.insert("grpc-timeout", "2H".parse().unwrap());
        assert_eq!(call_budget(&md, Duration::from_secs(60)), Duration::from_secs(60));
    }
}
