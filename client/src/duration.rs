//! Conversions between `std::time::Duration` and `google.protobuf.Duration`.

use std::time::Duration;

/// A std duration as a protobuf one, saturating at the protobuf maximum.
pub(crate) fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: 315_576_000_000,
        nanos: 999_999_999,
    })
}

/// An optional protobuf duration as a std one; absent or negative is zero.
pub(crate) fn from_proto(d: Option<prost_types::Duration>) -> Duration {
    d.and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO)
}
