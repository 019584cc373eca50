//! The real `governor` binary over real gRPC: the data plane, the control
//! plane, bad input, health, reflection, reloads and draining.

use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal, run_governor};
use rate_governor_proto::v1::{
    self, AcquireRequest, AcquireResponse, DependencyLimits, GetDependencyRequest,
    ListDependenciesRequest, RejectReason, ReleaseRequest, RenewRequest, UpdateDependencyRequest,
    governor_admin_client::GovernorAdminClient, governor_client::GovernorClient,
};
use tonic::transport::Channel;
use tonic::{Code, Request};

const ONE_SLOT: &str = r#"
[dependencies.db]
max_concurrency = 1
max_queue = 4
max_wait = "5s"
"#;

fn acquire(dependency: &str) -> AcquireRequest {
    AcquireRequest {
        dependency: dependency.into(),
        ..Default::default()
    }
}

fn millis(d: &Option<prost_types::Duration>) -> u128 {
    let d = d.as_ref().expect("duration set");
    Duration::new(d.seconds as u64, d.nanos as u32).as_millis()
}

async fn grant(client: &mut GovernorClient<Channel>, dependency: &str) -> AcquireResponse {
    let response = client
        .acquire(acquire(dependency))
        .await
        .unwrap()
        .into_inner();
    assert!(response.granted, "{response:?}");
    response
}

async fn release(client: &mut GovernorClient<Channel>, lease_id: &str) -> bool {
    let request = ReleaseRequest {
        lease_id: lease_id.into(),
        outcome: v1::Outcome::Success.into(),
        latency: None,
    };
    client.release(request).await.unwrap().into_inner().released
}

async fn status(admin: &mut GovernorAdminClient<Channel>, name: &str) -> v1::DependencyStatus {
    admin
        .get_dependency(GetDependencyRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
}

/// Polls the control plane until `check` holds, for at most five seconds.
async fn eventually(
    admin: &mut GovernorAdminClient<Channel>,
    name: &str,
    check: impl Fn(&v1::DependencyStatus) -> bool,
) -> v1::DependencyStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let current = status(admin, name).await;
        if check(&current) {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn_acquire(
    mut client: GovernorClient<Channel>,
    request: AcquireRequest,
) -> tokio::task::JoinHandle<Result<AcquireResponse, tonic::Status>> {
    tokio::spawn(async move { client.acquire(request).await.map(|r| r.into_inner()) })
}

#[tokio::test]
async fn acquire_renew_release_round_trip() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    let granted = grant(&mut client, "db").await;
    assert_eq!(granted.lease_id.len(), 48);
    assert!(granted.lease_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(millis(&granted.lease_ttl), 30_000);
    assert_eq!(
        (granted.limit, granted.in_flight, granted.queued),
        (1, 1, 0)
    );
    assert_eq!(granted.reason(), RejectReason::Unspecified);

    let renewed = client
        .renew(RenewRequest {
            lease_id: granted.lease_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.renewed);
    assert_eq!(millis(&renewed.lease_ttl), 30_000);

    assert!(release(&mut client, &granted.lease_id).await);
    assert!(
        !release(&mut client, &granted.lease_id).await,
        "release is idempotent"
    );
    let renewed = client
        .renew(RenewRequest {
            lease_id: granted.lease_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!renewed.renewed);

    let mut admin = gov.admin_client().await;
    let db = status(&mut admin, "db").await;
    assert_eq!((db.in_flight, db.granted_total), (0, 1));
}

#[tokio::test]
async fn a_queued_request_is_granted_on_release_and_reports_its_wait() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let held = grant(&mut client, "db").await;
    let waiter = spawn_acquire(client.clone(), acquire("db"));
    eventually(&mut admin, "db", |s| s.queued == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(release(&mut client, &held.lease_id).await);
    let response = waiter.await.unwrap().unwrap();
    assert!(response.granted);
    assert!(millis(&response.queue_wait) >= 50, "{response:?}");
    assert_eq!((response.in_flight, response.queued), (1, 0));
}

#[tokio::test]
async fn rejections_carry_a_reason_and_a_retry_hint() {
    let gov = GovernorProcess::start(
        r#"
        [dependencies.db]
        max_concurrency = 1
        max_queue = 0
        [dependencies.slow]
        max_concurrency = 1
        max_wait = "100ms"
        [dependencies.retries]
        retry_budget = { ratio = 0.0, min_per_second = 0 }
        "#,
    )
    .await;
    let mut client = gov.governor_client().await;
    grant(&mut client, "db").await;
    let full = client.acquire(acquire("db")).await.unwrap().into_inner();
    assert!(!full.granted);
    assert_eq!(full.reason(), RejectReason::QueueFull);
    assert!(millis(&full.retry_after) > 0);
    assert!(full.lease_id.is_empty());

    grant(&mut client, "slow").await;
    let timed_out = client.acquire(acquire("slow")).await.unwrap().into_inner();
    assert_eq!(timed_out.reason(), RejectReason::QueueTimeout);
    assert!(millis(&timed_out.queue_wait) >= 100);

    let retry = AcquireRequest {
        attempt: 1,
        ..acquire("retries")
    };
    let denied = client.acquire(retry).await.unwrap().into_inner();
    assert_eq!(denied.reason(), RejectReason::RetryBudgetExhausted);
    assert!(millis(&denied.retry_after) > 0);
}

#[tokio::test]
async fn a_higher_priority_arrival_sheds_a_lower_waiter() {
    let gov = GovernorProcess::start(
        "[dependencies.db]\nmax_concurrency = 1\nmax_queue = 1\nmax_wait = \"5s\"",
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let held = grant(&mut client, "db").await;
    let sheddable = spawn_acquire(
        client.clone(),
        AcquireRequest {
            priority: v1::Priority::Sheddable.into(),
            ..acquire("db")
        },
    );
    eventually(&mut admin, "db", |s| s.queued == 1).await;
    let critical = spawn_acquire(
        client.clone(),
        AcquireRequest {
            priority: v1::Priority::Critical.into(),
            ..acquire("db")
        },
    );
    let shed = sheddable.await.unwrap().unwrap();
    assert_eq!(shed.reason(), RejectReason::Shed);
    release(&mut client, &held.lease_id).await;
    assert!(critical.await.unwrap().unwrap().granted);
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_wait_with_a_reason() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    grant(&mut client, "db").await;
    let mut request = Request::new(acquire("db"));
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let response = client
        .acquire(request)
        .await
        .expect("answered, not DEADLINE_EXCEEDED")
        .into_inner();
    assert_eq!(response.reason(), RejectReason::QueueTimeout);
    assert!(started.elapsed() < Duration::from_millis(300));
    assert!(millis(&response.queue_wait) >= 250, "{response:?}");
}

#[tokio::test]
async fn a_cancelled_caller_leaves_the_queue_and_leaks_nothing() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let held = grant(&mut client, "db").await;
    let waiter = spawn_acquire(client.clone(), acquire("db"));
    eventually(&mut admin, "db", |s| s.queued == 1).await;
    waiter.abort();
    eventually(&mut admin, "db", |s| s.queued == 0).await;
    assert!(release(&mut client, &held.lease_id).await);
    let db = eventually(&mut admin, "db", |s| s.in_flight == 0).await;
    assert_eq!(
        db.granted_total, 1,
        "the cancelled waiter was never granted"
    );
    grant(&mut client, "db").await;
}

#[tokio::test]
async fn an_unreleased_lease_expires_and_frees_its_slot() {
    let gov =
        GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\nlease_ttl = \"200ms\"")
            .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let lost = grant(&mut client, "db").await;
    assert_eq!(millis(&lost.lease_ttl), 200);
    let started = std::time::Instant::now();
    let db = eventually(&mut admin, "db", |s| s.in_flight == 0).await;
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(db.expired_total, 1);
    assert!(!release(&mut client, &lost.lease_id).await);
    grant(&mut client, "db").await;
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_harms_no_one() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    let held = grant(&mut client, "db").await;

    let negative = prost_types::Duration {
        seconds: -1,
        nanos: 0,
    };
    let absurd = prost_types::Duration {
        seconds: 10 * 365 * 86_400,
        nanos: 0,
    };
    let cases = [
        (acquire(""), "dependency"),
        (acquire(&"x".repeat(129)), "dependency"),
        (acquire("has space"), "dependency"),
        (
            AcquireRequest {
                tenant: "t".repeat(129),
                ..acquire("db")
            },
            "tenant",
        ),
        (
            AcquireRequest {
                priority: 42,
                ..acquire("db")
            },
            "priority",
        ),
        (
            AcquireRequest {
                max_wait: Some(negative),
                ..acquire("db")
            },
            "max_wait",
        ),
        (
            AcquireRequest {
                max_wait: Some(absurd),
                ..acquire("db")
            },
            "max_wait",
        ),
    ];
    for (request, field) in cases {
        let error = client.acquire(request.clone()).await.unwrap_err();
        assert_eq!(
            error.code(),
            Code::InvalidArgument,
            "{request:?}: {error:?}"
        );
        assert!(
            error.message().starts_with(&format!("{field}:")),
            "{error:?}"
        );
    }

    let error = client.release(ReleaseRequest::default()).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("lease_id:"), "{error:?}");
    let error = client
        .release(ReleaseRequest {
            lease_id: held.lease_id.clone(),
            outcome: 99,
            latency: None,
        })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("outcome:"), "{error:?}");
    let error = client
        .renew(RenewRequest {
            lease_id: "a".repeat(1000),
        })
        .await
        .unwrap_err();
    assert!(error.message().starts_with("lease_id:"), "{error:?}");
    // Well-formed but unknown ids are simply not released.
    assert!(!release(&mut client, &"0".repeat(48)).await);
    assert!(!release(&mut client, "garbage").await);

    // An oversized message is refused by the transport's limit.
    let huge = client
        .acquire(acquire(&"y".repeat(64 * 1024)))
        .await
        .unwrap_err();
    assert_ne!(huge.code(), Code::Ok);

    // None of it touched the lease that was held all along.
    let mut admin = gov.admin_client().await;
    let db = status(&mut admin, "db").await;
    assert_eq!((db.in_flight, db.queued), (1, 0));
    assert!(release(&mut client, &held.lease_id).await);
}

#[tokio::test]
async fn unknown_dependencies_and_the_dependency_cap() {
    let gov =
        GovernorProcess::start("[limits]\nallow_unknown_dependencies = false\n[dependencies.db]")
            .await;
    let mut client = gov.governor_client().await;
    let status = client.acquire(acquire("nope")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().starts_with("dependency:"), "{status:?}");
    grant(&mut client, "db").await;

    let capped = GovernorProcess::start("[limits]\nmax_dependencies = 2").await;
    let mut client = capped.governor_client().await;
    grant(&mut client, "a").await;
    grant(&mut client, "b").await;
    let status = client.acquire(acquire("c")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn the_control_plane_inspects_and_changes_limits() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;

    let listed = admin
        .list_dependencies(ListDependenciesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = listed
        .dependencies
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["db"]);
    let db = &listed.dependencies[0];
    assert_eq!(
        (db.max_concurrency, db.max_queue, millis(&db.max_wait)),
        (1, 4, 5000)
    );
    assert_eq!(db.retry_budget_available, 100.0, "reserve of 10/s over 10s");

    let missing = admin
        .get_dependency(GetDependencyRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let held = grant(&mut client, "db").await;
    let waiter = spawn_acquire(client.clone(), acquire("db"));
    eventually(&mut admin, "db", |s| s.queued == 1).await;
    let raised = admin
        .update_dependency(UpdateDependencyRequest {
            name: "db".into(),
            limits: Some(DependencyLimits {
                max_concurrency: Some(2),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.max_concurrency, 2);
    assert!(
        waiter.await.unwrap().unwrap().granted,
        "raising the limit grants the waiter"
    );
    assert!(release(&mut client, &held.lease_id).await);

    let invalid = admin
        .update_dependency(UpdateDependencyRequest {
            name: "db".into(),
            limits: Some(DependencyLimits {
                max_concurrency: Some(0),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert!(
        invalid.message().starts_with("limits.max_concurrency:"),
        "{invalid:?}"
    );
    assert_eq!(
        status(&mut admin, "db").await.max_concurrency,
        2,
        "an invalid update changes nothing"
    );

    let created = admin
        .update_dependency(UpdateDependencyRequest {
            name: "cache".into(),
            limits: Some(DependencyLimits {
                max_queue: Some(3),
                retry_budget: Some(v1::RetryBudget {
                    ratio: 0.5,
                    min_per_second: 1,
                    ttl: Some(prost_types::Duration {
                        seconds: 5,
                        nanos: 0,
                    }),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.max_concurrency, created.max_queue), (64, 3));
    assert_eq!(created.retry_budget.unwrap().ratio, 0.5);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let gov = GovernorProcess::start("[defaults]\n").await;
    let mut health = HealthClient::new(gov.channel().await);
    for service in ["", "governor.v1.Governor"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(
            response.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(gov.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "governor.v1.Governor",
        "governor.v1.GovernorAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }

    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as AlphaRequest,
        server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaMessage,
        server_reflection_response::MessageResponse as AlphaResponse,
    };
    let mut alpha = AlphaClient::new(gov.channel().await);
    let request = AlphaRequest {
        host: String::new(),
        message_request: Some(AlphaMessage::FileContainingSymbol(
            "governor.v1.Governor".into(),
        )),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(AlphaResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn sigterm_drains_waits_for_permits_then_exits() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut gov =
        GovernorProcess::start(&format!("[server]\nshutdown_grace = \"10s\"\n{ONE_SLOT}")).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let held = grant(&mut client, "db").await;
    let waiter = spawn_acquire(client.clone(), acquire("db"));
    eventually(&mut admin, "db", |s| s.queued == 1).await;

    gov.signal(Signal::SIGTERM);
    let drained = waiter.await.unwrap().unwrap();
    assert_eq!(
        drained.reason(),
        RejectReason::ShuttingDown,
        "waiters are answered at once"
    );
    let late = client.acquire(acquire("db")).await.unwrap().into_inner();
    assert_eq!(late.reason(), RejectReason::ShuttingDown);
    let mut health = HealthClient::new(gov.channel().await);
    let check = health
        .check(HealthCheckRequest {
            service: "governor.v1.Governor".into(),
        })
        .await
        .unwrap();
    assert_eq!(check.into_inner().status(), ServingStatus::NotServing);

    // The held permit can still come back; then the process exits cleanly.
    assert!(release(&mut client, &held.lease_id).await);
    let status = gov.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sighup_reloads_limits_and_refuses_a_bad_file() {
    let gov = GovernorProcess::start(ONE_SLOT).await;
    let mut admin = gov.admin_client().await;
    std::fs::write(
        gov.config_path(),
        "[dependencies.db]\nmax_concurrency = 7\n",
    )
    .unwrap();
    gov.signal(Signal::SIGHUP);
    eventually(&mut admin, "db", |s| s.max_concurrency == 7).await;

    std::fs::write(
        gov.config_path(),
        "[dependencies.db]\nmax_concurrency = -3\n",
    )
    .unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !gov.stderr_so_far().contains("config reload refused") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            gov.stderr_so_far()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gov.stderr_so_far().contains("max_concurrency"));
    assert_eq!(
        status(&mut admin, "db").await.max_concurrency,
        7,
        "the running config stays"
    );
}

#[tokio::test]
async fn the_config_file_is_watched_when_asked() {
    let gov = GovernorProcess::start_with_args(ONE_SLOT, &["--watch-config"]).await;
    let mut admin = gov.admin_client().await;
    std::fs::write(
        gov.config_path(),
        "[dependencies.db]\nmax_concurrency = 5\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while status(&mut admin, "db").await.max_concurrency != 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn config_errors_exit_64_naming_the_key() {
    let good =
        governor_integration_tests::write_config("[dependencies.payments]\nmax_concurrency = 8\n");
    let output = run_governor(&["--check-config".as_ref(), good.path().as_os_str()]).await;
    assert!(output.status.success(), "{output:?}");

    let bad = governor_integration_tests::write_config(
        "[dependencies.payments]\nmax_wait = \"forever\"\n",
    );
    let output = run_governor(&["--check-config".as_ref(), bad.path().as_os_str()]).await;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_wait"), "{stderr}");

    let output = run_governor(&["--config".as_ref(), bad.path().as_os_str()]).await;
    assert_eq!(output.status.code(), Some(64));
    let output = run_governor(&["--no-such-flag"]).await;
    assert_eq!(output.status.code(), Some(64));
    let output = run_governor(&["--listen", "nowhere"]).await;
    assert_eq!(output.status.code(), Some(64));
}

#[tokio::test]
async fn a_lease_from_another_process_never_releases_a_slot() {
    let first = GovernorProcess::start(ONE_SLOT).await;
    let mut client = first.governor_client().await;
    let stale = grant(&mut client, "db").await.lease_id;
    drop(first);

    let second = GovernorProcess::start(ONE_SLOT).await;
    let mut client = second.governor_client().await;
    let held = grant(&mut client, "db").await;
    assert!(!release(&mut client, &stale).await);
    let mut admin = second.admin_client().await;
    assert_eq!(status(&mut admin, "db").await.in_flight, 1);
    assert!(release(&mut client, &held.lease_id).await);
}

#[tokio::test]
async fn the_control_plane_can_be_kept_off_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let gov = GovernorProcess::start_with_args(
        "[server]\ncontrol_plane = \"uds\"",
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    let mut admin = gov.admin_client().await;
    let refused = admin
        .list_dependencies(ListDependenciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    // The data plane is still served on TCP.
    grant(&mut gov.governor_client().await, "db").await;

    // "uds" without a socket is a config error naming the key.
    let config = governor_integration_tests::write_config("[server]\ncontrol_plane = \"uds\"");
    let output = run_governor(&["--config".as_ref(), config.path().as_os_str()]).await;
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.control_plane"));
}

#[tokio::test]
async fn a_live_unix_socket_is_never_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let args = ["--uds".as_ref(), socket.as_os_str()];
    let first = GovernorProcess::start_with_args("[defaults]\n", &args).await;
    let config = governor_integration_tests::write_config("[defaults]\n");
    let second = run_governor(&[
        "--config".as_ref(),
        config.path().as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--admin-listen".as_ref(),
        "off".as_ref(),
        "--uds".as_ref(),
        socket.as_os_str(),
    ])
    .await;
    assert_eq!(second.status.code(), Some(69), "{second:?}");
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"));
    assert!(
        socket.exists(),
        "the first governor's socket is still there"
    );
    drop(first);
}
