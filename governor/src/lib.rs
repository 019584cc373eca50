//! governor: a sidecar that governs concurrency, queueing and retries towards
//! downstream dependencies.
//!
//! Services ask it over gRPC for a permit before calling a dependency and give
//! the permit back afterwards. Per dependency it keeps a concurrency limit, a
//! bounded priority queue with deadlines, and a retry budget; when the
//! dependency is saturated it queues briefly or rejects at once, with a reason
//! and a retry-after hint.
//!
//! - [`ledger`]: the permit ledger, free of any transport.
//! - [`config`]: the TOML configuration, validated into ledger types.
//! - [`server`]: the gRPC data plane and control plane over the ledger.
//! - [`app`]: the process: listeners, signals, reloads and draining.

pub mod app;
pub mod config;
pub mod fleet;
pub mod ledger;
pub mod server;
pub mod telemetry;
