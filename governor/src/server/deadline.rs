//! The caller's gRPC deadline, so that a waiter is answered QUEUE_TIMEOUT with
//! a reason before its caller would see DEADLINE_EXCEEDED.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The caller's `grpc-timeout`, if it sent one.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// How long a request may wait in the queue given the caller's timeout: the
/// timeout less a margin for the answer to travel back (a tenth of it, within
/// 2 ms and 20 ms).
pub fn wait_budget(timeout: Duration) -> Duration {
    let margin = (timeout / 10).clamp(Duration::from_millis(2), Duration::from_millis(20));
    timeout.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&metadata)
    }

    #[test]
    fn reads_every_unit_and_ignores_garbage() {
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("500u"), Some(Duration::from_micros(500)));
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(timeout("5x"), None);
        assert_eq!(timeout("m"), None);
        assert_eq!(timeout("1234567890S"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn leaves_a_margin_for_the_answer() {
        assert_eq!(
            wait_budget(Duration::from_secs(1)),
            Duration::from_millis(980)
        );
        assert_eq!(
            wait_budget(Duration::from_millis(100)),
            Duration::from_millis(90)
        );
        assert_eq!(
            wait_budget(Duration::from_millis(10)),
            Duration::from_millis(8)
        );
        assert_eq!(wait_budget(Duration::from_millis(1)), Duration::ZERO);
    }
}
