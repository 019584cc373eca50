//! How loaded a dependency is: the enforced limit, utilization and pressure,
//! each computed in one place so that the metrics, the status page and
//! `governor status` cannot disagree.

use crate::ledger::DependencyStatus;

pub use crate::ledger::{ELEVATED_AT, Pressure};

/// The concurrency limit the ledger enforces right now: `max_concurrency`,
/// or less while an adaptive limit holds it lower.
pub fn enforced_limit(status: &DependencyStatus) -> u32 {
    status.limit.enforced
}

/// The load figures pressure is judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub limit: u32,
    pub in_flight: u32,
    pub queued: u32,
}

impl Load {
    pub fn of(status: &DependencyStatus) -> Load {
        Load {
            limit: enforced_limit(status),
            in_flight: status.in_flight,
            queued: status.queued,
        }
    }

    /// `in_flight / limit`; above 1 while a lowered limit waits for held
    /// permits to come back.
    pub fn utilization(&self) -> f64 {
        if self.limit == 0 {
            return 0.0;
        }
        f64::from(self.in_flight) / f64::from(self.limit)
    }
}

/// An estimate of the pressure from the control plane's figures, for
/// `governor status` against a sidecar too old to report its own in
/// `GetDependency`: judged on the load it shows, the built-in
/// [`ELEVATED_AT`] and whether the rejected count grew. The sidecar's own
/// pressure (on every answer, in `GetDependency`, the metrics and the status
/// page) is decided in the ledger under the decision's lock
/// ([`crate::ledger::DependencyStatus::pressure`]).
pub fn pressure(load: Load, rejected_recently: bool) -> Pressure {
    if rejected_recently {
        Pressure::Overloaded
    } else if load.queued > 0 || load.in_flight >= load.limit {
        Pressure::Saturated
    } else if load.utilization() >= ELEVATED_AT {
        Pressure::Elevated
    } else {
        Pressure::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(limit: u32, in_flight: u32, queued: u32) -> Load {
        Load {
            limit,
            in_flight,
            queued,
        }
    }

    #[test]
    fn pressure_follows_the_thresholds() {
        assert_eq!(pressure(load(10, 0, 0), false), Pressure::None);
        assert_eq!(pressure(load(10, 6, 0), false), Pressure::None);
        assert_eq!(pressure(load(10, 7, 0), false), Pressure::Elevated);
        assert_eq!(pressure(load(10, 9, 0), false), Pressure::Elevated);
        assert_eq!(pressure(load(10, 10, 0), false), Pressure::Saturated);
        // A lowered limit with more held than it allows.
        assert_eq!(pressure(load(4, 6, 0), false), Pressure::Saturated);
        // Someone waits: saturated even with permits free (a waiter whose
        // slot is being handed over).
        assert_eq!(pressure(load(10, 1, 1), false), Pressure::Saturated);
        assert_eq!(pressure(load(10, 0, 0), true), Pressure::Overloaded);
        assert_eq!(pressure(load(10, 10, 5), true), Pressure::Overloaded);
    }

    #[test]
    fn utilization_is_in_flight_over_the_limit() {
        assert_eq!(load(8, 2, 0).utilization(), 0.25);
        assert_eq!(load(4, 6, 0).utilization(), 1.5);
        assert_eq!(load(0, 0, 0).utilization(), 0.0);
    }
}
