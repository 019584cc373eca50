//! What the ledger keeps of a fleet-wide limit: the fleet task's last word
//! (its mode and numbers, for the status) and the demand it reads back.
//!
//! The share itself is decided elsewhere (`crate::fleet`, in the background,
//! against the fleet store); here it is only a term of the enforced limit
//! (`Limiter::set_fleet`), so admission never waits on the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Where this sidecar's fleet share comes from right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FleetMode {
    /// No answer from the store yet: nothing is granted (or, once a first
    /// call failed, the fallback share).
    Starting,
    /// A share leased from the store, valid until it lapses.
    Share,
    /// The store came back empty (or older than this sidecar saw): no new
    /// shares until every share that may still be in use has lapsed; a
    /// share this sidecar still held is kept, else the fallback share.
    Learning,
    /// The store is unreachable and the share lapsed: the fallback share.
    Fallback,
}

impl FleetMode {
    pub const ALL: [FleetMode; 4] = [
        FleetMode::Starting,
        FleetMode::Share,
        FleetMode::Learning,
        FleetMode::Fallback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FleetMode::Starting => "starting",
            FleetMode::Share => "share",
            FleetMode::Learning => "learning",
            FleetMode::Fallback => "fallback",
        }
    }
}

/// A dependency's fleet share as the fleet task last set it.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetStatus {
    pub mode: FleetMode,
    /// The fleet-wide limit in force: the lowest any live sidecar in the
    /// store is configured with (this sidecar's own before an answer).
    pub max_concurrency: u32,
    /// The share the store records for this sidecar.
    pub share: u32,
    /// What the fair rule gives this sidecar now (it may hold more until it
    /// gives the rest back, or less until the rest is free).
    pub target: u32,
    /// The term admission enforces: `min(share, target)` in share mode.
    pub enforced: u32,
    /// The demand last reported to the store.
    pub demand: u32,
    pub fallback_share: u32,
    /// Sidecars with a live share in the store, this one included.
    pub instances: u32,
    /// Until when the share may be used (already a safety margin before the
    /// store lets it lapse).
    pub valid_until: Option<Instant>,
    /// Until when the store learns (no new shares).
    pub learning_until: Option<Instant>,
    pub store_calls_total: u64,
    pub store_errors_total: u64,
    /// The last store call's round trip.
    pub store_latency: Option<Duration>,
    /// The last store error, if the last call failed.
    pub last_error: Option<Arc<str>>,
}

impl FleetStatus {
    /// A fleet limit just set, before any store answer: nothing granted.
    pub fn starting(max_concurrency: u32, fallback_share: u32) -> FleetStatus {
        FleetStatus {
            mode: FleetMode::Starting,
            max_concurrency,
            share: 0,
            target: 0,
            enforced: 0,
            demand: 0,
            fallback_share,
            instances: 0,
            valid_until: None,
            learning_until: None,
            store_calls_total: 0,
            store_errors_total: 0,
            store_latency: None,
            last_error: None,
        }
    }
}

/// What the fleet task reads of a dependency before each store call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FleetReading {
    pub in_flight: u32,
    /// The local limit (ceiling and adaptive limit, not the fleet term):
    /// more than this is never asked for.
    pub local_limit: u32,
    /// `min(local_limit, peak of in_flight + queued + the arrival)` since
    /// the last reading, or what is in flight and queued now if more.
    pub demand: u32,
}
