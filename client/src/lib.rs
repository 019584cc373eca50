//! Rust client for the governor sidecar.
