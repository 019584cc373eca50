//! What the status page shows: per dependency its load and pressure now,
//! and a short history sampled once a second.
//!
//! - `load`: the enforced limit, utilization and pressure (one function each).
//! - `quantile`: wait p99 over an interval from histogram bucket growth.
//! - `board`: the sampler and its bounded history, rendered as `/status.json`.

mod board;
mod load;
mod quantile;

pub use board::{HISTORY_SAMPLES, SAMPLE_INTERVAL, StatusBoard};
pub use load::{ELEVATED_AT, Load, Pressure, enforced_limit, pressure};
pub use quantile::quantile;
