//! Arbitrary bytes as the request message of every RPC, through the real
//! service handlers (`GovernorService`, `AdminService`) on a fresh ledger.
//!
//! What must hold, beyond "never panics":
//! - every INVALID_ARGUMENT names a field of the request (`field: problem`);
//! - an independent check of the wire-level rules (names, tenant, enums,
//!   durations, lease ids) agrees with the handler: a request this check
//!   finds invalid is refused naming one of the fields it found bad, and one
//!   it finds valid is not refused as invalid (for UpdateDependency the
//!   ranges belong to the ledger: there a refusal must name a limits field
//!   and a success must show the values asked for);
//! - a decoded message re-encodes to bytes that decode and re-encode to the
//!   same bytes.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use rate_governor::ledger::{Ledger, LedgerConfig};
use rate_governor::server::{AdminService, GovernorService, Undelivered};
use rate_governor::telemetry::Telemetry;
use rate_governor_proto::v1::{
    self, governor_admin_server::GovernorAdmin, governor_server::Governor,
};
use tonic::{Code, Request, Status};

/// Fields whose name an INVALID_ARGUMENT may start with, per RPC.
const ACQUIRE_FIELDS: &[&str] = &["dependency", "tenant", "route", "priority", "max_wait"];
const RELEASE_FIELDS: &[&str] = &["lease_id", "outcome", "latency"];
const RENEW_FIELDS: &[&str] = &["lease_id"];
const GET_FIELDS: &[&str] = &["name"];
const UPDATE_FIELDS: &[&str] = &[
    "name",
    "limits.max_concurrency",
    "limits.max_queue",
    "limits.max_wait",
    "limits.lease_ttl",
    "limits.retry_budget.ratio",
    "limits.retry_budget.min_per_second",
    "limits.retry_budget.ttl",
    "limits.adaptive.",
    "limits.elevated_at",
    "limits.degrade_at",
    "limits.rate.",
    "limits.tenant_rate.",
    "limits.fairness.",
    "limits.fleet.",
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
    })
}

/// The field an INVALID_ARGUMENT names: the text before the first ": ".
fn named_field(status: &Status) -> &str {
    status.message().split(": ").next().unwrap_or("")
}

fn assert_names_a_field(rpc: &str, status: &Status, fields: &[&str]) {
    if status.code() != Code::InvalidArgument {
        return;
    }
    let field = named_field(status);
    assert!(
        fields
            .iter()
            .any(|known| field == *known || (known.ends_with('.') && field.starts_with(known))),
        "{rpc}: INVALID_ARGUMENT names no field of the request: {:?}",
        status.message()
    );
}

/// The independent reading of a request: the fields it finds bad.
fn bad_name(name: &str) -> bool {
    name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

fn bad_duration(d: &prost_types::Duration, max: Duration) -> bool {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return true;
    }
    Duration::new(d.seconds as u64, d.nanos as u32) > max
}

fn bad_lease_id(id: &str) -> bool {
    id.is_empty() || id.len() > 128
}

fn acquire_problems(m: &v1::AcquireRequest) -> Vec<&'static str> {
    let mut bad = Vec::new();
    if bad_name(&m.dependency) {
        bad.push("dependency");
    }
    if m.tenant.len() > 128 || m.tenant.chars().any(char::is_control) {
        bad.push("tenant");
    }
    if m.route.len() > 128 || m.route.chars().any(char::is_control) {
        bad.push("route");
    }
    if v1::Priority::try_from(m.priority).is_err() {
        bad.push("priority");
    }
    if m.max_wait
        .as_ref()
        .is_some_and(|d| bad_duration(d, Duration::from_secs(3600)))
    {
        bad.push("max_wait");
    }
    bad
}

fn release_problems(m: &v1::ReleaseRequest) -> Vec<&'static str> {
    let mut bad = Vec::new();
    if bad_lease_id(&m.lease_id) {
        bad.push("lease_id");
    }
    if v1::Outcome::try_from(m.outcome).is_err() {
        bad.push("outcome");
    }
    if m.latency
        .as_ref()
        .is_some_and(|d| bad_duration(d, Duration::from_secs(24 * 3600)))
    {
        bad.push("latency");
    }
    bad
}

/// Checks a handler's answer against the fields found bad.
fn check_verdict<T>(rpc: &str, result: &Result<T, Status>, bad: &[&str], fields: &[&str]) {
    match result {
        Err(status) => {
            assert_names_a_field(rpc, status, fields);
            if status.code() == Code::InvalidArgument {
                let field = named_field(status);
                assert!(
                    bad.contains(&field),
                    "{rpc}: refused {field:?} ({:?}), but the independent check found {bad:?} bad",
                    status.message()
                );
            }
        }
        Ok(_) => assert!(bad.is_empty(), "{rpc}: accepted a request with bad {bad:?}"),
    }
    if !bad.is_empty() {
        let status = result.as_ref().err().expect("checked above");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{rpc}: bad {bad:?} answered {status:?}"
        );
    }
}

/// Compared as bytes: a NaN double decodes to a NaN, which is not equal to itself.
fn round_trips<M: Message + Default>(message: &M) {
    let bytes = message.encode_to_vec();
    let again = M::decode(bytes.as_slice()).expect("our own encoding decodes");
    assert_eq!(
        again.encode_to_vec(),
        bytes,
        "encode(decode(encode(m))) != encode(m)"
    );
}

/// The `grpc-timeout` header: the first bytes of the input, up to a NUL.
fn split_timeout(data: &[u8]) -> (Option<&str>, &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) if at <= 12 => (std::str::from_utf8(&data[..at]).ok(), &data[at + 1..]),
        _ => (None, data),
    }
}

fn with_timeout<T>(message: T, timeout: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = timeout.and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert("grpc-timeout", value);
    }
    request
}

async fn run(data: &[u8]) {
    let (timeout, body) = split_timeout(data);
    let ledger = Arc::new(Ledger::new(LedgerConfig::default()));
    let telemetry = Telemetry::start(None).expect("telemetry without tracing starts");
    let governor = GovernorService::new(ledger.clone(), telemetry);
    let admin = AdminService::new(ledger.clone());

    if let Ok(message) = v1::UpdateDependencyRequest::decode(body) {
        round_trips(&message);
        let result = admin.update_dependency(Request::new(message.clone())).await;
        if let Err(status) = &result {
            assert_names_a_field("UpdateDependency", status, UPDATE_FIELDS);
            // A fleet-wide limit needs a fleet store, which this ledger lacks.
            let sets_fleet = message
                .limits
                .as_ref()
                .and_then(|l| l.fleet.as_ref())
                .is_some_and(|f| f.max_concurrency > 0);
            if status.code() == Code::FailedPrecondition {
                assert!(
                    sets_fleet,
                    "FAILED_PRECONDITION without a fleet limit: {status:?}"
                );
                assert!(status.message().starts_with("limits.fleet"), "{status:?}");
            } else {
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "UpdateDependency on an empty ledger: {status:?}"
                );
            }
        }
        if bad_name(&message.name) {
            let status = result.as_ref().err().expect("a bad name is refused");
            assert_eq!(named_field(status), "name");
        }
        if let Ok(response) = &result {
            let status = response.get_ref();
            assert_eq!(status.name, message.name);
            let limits = message.limits.as_ref();
            if let Some(max) = limits.and_then(|l| l.max_concurrency) {
                assert_eq!(status.max_concurrency, max);
            }
            if let Some(max) = limits.and_then(|l| l.max_queue) {
                assert_eq!(status.max_queue, max);
            }
            if let Some(ttl) = limits.and_then(|l| l.lease_ttl) {
                assert_eq!(status.lease_ttl, Some(ttl), "lease_ttl as asked");
            }
            if let Some(share) = limits.and_then(|l| l.elevated_at) {
                assert_eq!(status.elevated_at, share, "elevated_at as asked");
            }
            match limits.map(|l| l.degrade_at()) {
                None | Some(v1::DegradeAt::Unspecified) => {}
                Some(asked) => assert_eq!(status.degrade_at(), asked, "degrade_at as asked"),
            }
            assert!(ledger.contains(&message.name));
        } else {
            // A refused update leaves nothing behind.
            assert_eq!(ledger.dependency_count(), 0);
        }
    }

    let mut granted = None;
    if let Ok(message) = v1::AcquireRequest::decode(body) {
        round_trips(&message);
        let bad = acquire_problems(&message);
        let result = governor
            .acquire(with_timeout(message.clone(), timeout))
            .await;
        check_verdict("Acquire", &result, &bad, ACQUIRE_FIELDS);
        if let Ok(response) = result {
            // Over the transport the guard is told once the answer left;
            // here it is in hand, so it was delivered.
            if let Some(guard) = response.extensions().get::<Undelivered>() {
                guard.delivered();
            }
            let response = response.into_inner();
            if response.granted {
                assert!(!response.lease_id.is_empty());
                assert!(response.in_flight >= 1 && response.in_flight <= response.limit);
                granted = Some(response.lease_id);
            } else {
                assert!(response.lease_id.is_empty(), "a rejection carries no lease");
            }
        }
    }

    if let Ok(message) = v1::RenewRequest::decode(body) {
        round_trips(&message);
        let bad: Vec<_> = bad_lease_id(&message.lease_id)
            .then_some("lease_id")
            .into_iter()
            .collect();
        let result = governor.renew(Request::new(message.clone())).await;
        check_verdict("Renew", &result, &bad, RENEW_FIELDS);
        if let Ok(response) = result {
            // Arbitrary bytes are not the lease just granted.
            let live = granted.as_deref() == Some(message.lease_id.as_str());
            assert_eq!(response.get_ref().renewed, live);
        }
    }

    if let Ok(message) = v1::ReleaseRequest::decode(body) {
        round_trips(&message);
        let bad = release_problems(&message);
        let result = governor.release(Request::new(message.clone())).await;
        check_verdict("Release", &result, &bad, RELEASE_FIELDS);
        if let Ok(response) = result {
            let live = granted.as_deref() == Some(message.lease_id.as_str());
            assert_eq!(response.get_ref().released, live);
            if live {
                granted = None;
            }
        }
        // The lease granted above, released with this message's report.
        if let Some(lease_id) = granted.take() {
            let report = v1::ReleaseRequest {
                lease_id,
                ..message
            };
            let bad = release_problems(&report);
            let result = governor.release(Request::new(report)).await;
            check_verdict("Release", &result, &bad, RELEASE_FIELDS);
            if let Ok(response) = result {
                assert!(response.get_ref().released, "the live lease is released");
                assert_eq!(ledger.leases(), 0);
            }
        }
    }

    if let Ok(message) = v1::GetDependencyRequest::decode(body) {
        round_trips(&message);
        let bad: Vec<_> = bad_name(&message.name)
            .then_some("name")
            .into_iter()
            .collect();
        let result = admin.get_dependency(Request::new(message.clone())).await;
        match &result {
            Err(status) if status.code() == Code::NotFound => {
                assert!(bad.is_empty());
                assert!(!ledger.contains(&message.name));
            }
            _ => check_verdict("GetDependency", &result, &bad, GET_FIELDS),
        }
    }

    if let Ok(message) = v1::ListDependenciesRequest::decode(body) {
        round_trips(&message);
        let response = admin
            .list_dependencies(Request::new(message))
            .await
            .expect("ListDependencies always answers");
        assert_eq!(
            response.get_ref().dependencies.len(),
            ledger.dependency_count()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(run(data));
});
