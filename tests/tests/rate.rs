//! Rate limits (issue 10, "Rate limits") against the real binary over real
//! gRPC: a burst then the rate, a wait that reaches its token granted when
//! it comes, a token beyond the wait refused at once with
//! REJECT_REASON_RATE_LIMITED and its retry-after, the reason label on
//! /metrics, GetDependency and UpdateDependency, a reload, and config
//! errors that exit 64 naming the key.

use std::time::Duration;

use governor_integration_tests::{
    GovernorProcess, Signal, admin_get as get, check_config, release, series,
};
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, DependencyLimits, DependencyStatus, GetDependencyRequest,
    RateLimit, RejectReason, UpdateDependencyRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient,
};
use tokio::time::Instant;
use tonic::transport::Channel;

const CONFIG: &str = r#"
[dependencies.api]
max_concurrency = 100
max_queue = 64
max_wait = "5s"
rate = { per_second = 4, burst = 5 }
"#;

fn request(max_wait: Duration) -> AcquireRequest {
    AcquireRequest {
        dependency: "api".into(),
        max_wait: Some(max_wait.try_into().unwrap()),
        ..Default::default()
    }
}

async fn acquire(client: &mut GovernorClient<Channel>, max_wait: Duration) -> AcquireResponse {
    client
        .acquire(request(max_wait))
        .await
        .expect("Acquire answers")
        .into_inner()
}

fn duration(d: &Option<prost_types::Duration>) -> Duration {
    d.map(|d| Duration::try_from(d).unwrap())
        .unwrap_or_default()
}

async fn status(admin: &mut GovernorAdminClient<Channel>) -> DependencyStatus {
    admin
        .get_dependency(GetDependencyRequest { name: "api".into() })
        .await
        .expect("GetDependency answers")
        .into_inner()
}

#[tokio::test]
async fn a_burst_then_the_rate_delayed_within_the_wait_refused_beyond_it() {
    let gov = GovernorProcess::start(CONFIG).await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let configured = status(&mut admin).await.rate.expect("the rate is shown");
    assert_eq!((configured.per_second, configured.burst), (4.0, 5));

    // The burst: five at once, without waiting. (Released as they come:
    // only the rate binds here.)
    for _ in 0..5 {
        let granted = acquire(&mut client, Duration::ZERO).await;
        assert!(granted.granted, "{granted:?}");
        release(&mut client, &granted.lease_id).await;
    }
    // The bucket is empty: a caller that will not wait is told when the
    // next token comes (one every 250 ms: slow enough that a loaded CI
    // machine's scheduling cannot blur the steps below).
    let refused = acquire(&mut client, Duration::ZERO).await;
    assert!(!refused.granted);
    assert_eq!(refused.reason(), RejectReason::RateLimited, "{refused:?}");
    let retry_after = duration(&refused.retry_after);
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_millis(250),
        "{retry_after:?}"
    );
    // A token beyond the wait: refused at once, with the time until it.
    // Three waiters take the next three tokens first (750 ms of them).
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let mut client = client.clone();
        waiters.push(tokio::spawn(async move {
            acquire(&mut client, Duration::from_secs(5)).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status(&mut admin).await;
        if now.queued + now.in_flight >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the waiters did not queue");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let predicted = acquire(&mut client, Duration::from_millis(100)).await;
    assert_eq!(
        predicted.reason(),
        RejectReason::RateLimited,
        "{predicted:?}"
    );
    assert!(
        duration(&predicted.retry_after) > Duration::from_millis(100),
        "{predicted:?}"
    );
    // The waiters are granted as their tokens come, each after a wait.
    for waiter in waiters {
        let granted = waiter.await.unwrap();
        assert!(granted.granted, "{granted:?}");
        assert!(
            duration(&granted.queue_wait) > Duration::ZERO,
            "{granted:?}"
        );
        release(&mut client, &granted.lease_id).await;
    }

    // Hammered for a second and a half: never more than the rate allows
    // (measured from the first ask to the last answer, which spans at
    // least the server's first and last grant), and not far below it.
    let started = Instant::now();
    let mut granted = 0u32;
    while started.elapsed() < Duration::from_millis(1500) {
        let answer = acquire(&mut client, Duration::ZERO).await;
        if answer.granted {
            granted += 1;
            release(&mut client, &answer.lease_id).await;
        } else {
            assert_eq!(answer.reason(), RejectReason::RateLimited, "{answer:?}");
        }
    }
    let span = started.elapsed().as_secs_f64();
    let bound = (4.0 * span).ceil() as u32 + 5;
    assert!(granted <= bound, "{granted} grants in {span:.2} s");
    assert!(granted >= 3, "{granted} grants in {span:.2} s");

    let metrics = get(gov.admin_addr().unwrap(), "/metrics").await;
    let rejected = series(
        &metrics,
        "governor_acquire_total{dependency=\"api\",result=\"rejected\",reason=\"rate_limited\"}",
    );
    assert!(
        matches!(rejected, Some(n) if n >= 2.0),
        "{rejected:?} in\n{metrics}"
    );
    let after = status(&mut admin).await;
    assert_eq!((after.in_flight, after.queued), (0, 0), "{after:?}");
}

#[tokio::test]
async fn the_control_plane_and_a_reload_change_the_rate() {
    let gov = GovernorProcess::start(CONFIG).await;
    let mut admin = gov.admin_client().await;
    let update = |rate: RateLimit| UpdateDependencyRequest {
        name: "api".into(),
        limits: Some(DependencyLimits {
            rate: Some(rate),
            ..Default::default()
        }),
    };
    let changed = admin
        .update_dependency(update(RateLimit {
            per_second: 1000.0,
            burst: 0,
        }))
        .await
        .expect("UpdateDependency answers")
        .into_inner();
    let rate = changed.rate.expect("a rate");
    assert_eq!(
        (rate.per_second, rate.burst),
        (1000.0, 1),
        "burst 0 means 1"
    );

    // Other fields leave it as it is; a bad one names its field and
    // changes nothing.
    let kept = admin
        .update_dependency(UpdateDependencyRequest {
            name: "api".into(),
            limits: Some(DependencyLimits {
                max_queue: Some(8),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kept.rate.map(|r| r.per_second), Some(1000.0));
    for (rate, field) in [
        (
            RateLimit {
                per_second: -1.0,
                burst: 1,
            },
            "limits.rate.per_second:",
        ),
        (
            RateLimit {
                per_second: f64::NAN,
                burst: 1,
            },
            "limits.rate.per_second:",
        ),
        (
            RateLimit {
                per_second: 10.0,
                burst: 2_000_000,
            },
            "limits.rate.burst:",
        ),
    ] {
        let refused = admin.update_dependency(update(rate)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().starts_with(field), "{refused:?}");
    }
    assert_eq!(status(&mut admin).await.rate.map(|r| r.burst), Some(1));

    // per_second = 0 removes it.
    let removed = admin
        .update_dependency(update(RateLimit {
            per_second: 0.0,
            burst: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.rate, None);

    // A reload of the config file sets it again, as the file says.
    let reloaded = CONFIG.replace("per_second = 4, burst = 5", "per_second = 7, burst = 3");
    std::fs::write(gov.config_path(), reloaded).unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rate = status(&mut admin).await.rate;
        if rate.as_ref().map(|r| (r.per_second, r.burst)) == Some((7.0, 3)) {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied: {rate:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bad_rate_settings_exit_64_naming_the_key() {
    for (toml, message) in [
        (
            "[dependencies.api]\nrate = { per_second = -5 }",
            "dependencies.api.rate.per_second: must be a number in [0.001, 1000000], got -5",
        ),
        (
            "[defaults]\nrate = { per_second = 5, burst = 0 }",
            "defaults.rate.burst: must be between 1 and 1000000, got 0",
        ),
        (
            "[dependencies.api]\nrate = { per_second = 5, brust = 2 }",
            "unknown field `brust`",
        ),
    ] {
        let (code, stderr) = check_config(toml).await;
        assert_eq!(code, Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(message), "{message:?} not in {stderr}");
    }
}

#[tokio::test]
async fn each_tenant_is_held_to_its_own_rate() {
    let gov = GovernorProcess::start(
        r#"
[dependencies.shared]
max_concurrency = 100
tenant_rate = { per_second = 2, burst = 2 }
"#,
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;
    let ask = |tenant: &str, max_wait: Duration| AcquireRequest {
        dependency: "shared".into(),
        tenant: tenant.into(),
        max_wait: Some(max_wait.try_into().unwrap()),
        ..Default::default()
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let granted = client
            .acquire(ask("noisy", Duration::ZERO))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.granted, "{granted:?}");
        held.push(granted.lease_id);
    }
    let refused = client
        .acquire(ask("noisy", Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.reason(), RejectReason::RateLimited, "{refused:?}");
    assert!(duration(&refused.retry_after) <= Duration::from_millis(500));
    // Another tenant, and a caller that names none, are not held back.
    for tenant in ["quiet", ""] {
        let granted = client
            .acquire(ask(tenant, Duration::ZERO))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.granted, "{tenant:?}: {granted:?}");
        held.push(granted.lease_id);
    }
    // Within its wait, the noisy tenant's next request waits for its token.
    let delayed = client
        .acquire(ask("noisy", Duration::from_secs(2)))
        .await
        .unwrap()
        .into_inner();
    assert!(delayed.granted, "{delayed:?}");
    assert!(
        duration(&delayed.queue_wait) > Duration::ZERO,
        "{delayed:?}"
    );
    held.push(delayed.lease_id);

    let status = admin
        .get_dependency(GetDependencyRequest {
            name: "shared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rate = status.tenant_rate.expect("the tenant rate is shown");
    assert_eq!((rate.per_second, rate.burst), (2.0, 2));
    assert_eq!(status.rate, None);
    assert!(status.rated_tenants >= 1, "{status:?}");
    assert_eq!(status.delayed, 0);
    for lease in &held {
        release(&mut client, lease).await;
    }

    // Turned off at runtime: the noisy tenant is through at once.
    admin
        .update_dependency(UpdateDependencyRequest {
            name: "shared".into(),
            limits: Some(DependencyLimits {
                tenant_rate: Some(RateLimit {
                    per_second: 0.0,
                    burst: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    for _ in 0..5 {
        let granted = client
            .acquire(ask("noisy", Duration::ZERO))
            .await
            .unwrap()
            .into_inner();
        assert!(granted.granted, "{granted:?}");
        release(&mut client, &granted.lease_id).await;
    }
}
