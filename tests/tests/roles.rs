//! Listeners by role (issue 13), against the real binary over real gRPC:
//! the health-only listener, the control plane's bearer token on a
//! non-loopback listener, SO_PEERCRED on the Unix socket, and the per-peer
//! cap on names callers create.
//!
//! The non-loopback tests bind the data plane on an address of this host
//! that is not loopback (from `hostname -I`, else the source address of a
//! route); the connections still never leave the host.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal, run_governor, write_config};
use rate_governor_proto::v1::{
    AcquireRequest, ListDependenciesRequest, ReleaseRequest,
    governor_admin_client::GovernorAdminClient, governor_client::GovernorClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// An IP address of this host that is not loopback, if it has one.
fn non_loopback_ip() -> Option<IpAddr> {
    let from_hostname = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|word| word.parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified())
        });
    from_hostname.or_else(|| {
        // The source address the kernel would pick for a route out; no
        // packet is sent.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.connect("192.0.2.1:9").ok()?;
        Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback())
    })
}

/// `Some(ip)`, or says why the test cannot run here.
fn external_ip_or_skip(test: &str) -> Option<IpAddr> {
    let ip = non_loopback_ip();
    if ip.is_none() {
        eprintln!("{test}: SKIPPED: this host has no non-loopback address to listen on");
    }
    ip
}

async fn channel_to(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("unix://{}", path.display()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn acquire_request(name: &str) -> AcquireRequest {
    AcquireRequest {
        dependency: name.into(),
        ..Default::default()
    }
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    name: &str,
) -> Result<String, tonic::Status> {
    let response = client.acquire(acquire_request(name)).await?.into_inner();
    assert!(response.granted, "{name}: {response:?}");
    Ok(response.lease_id)
}

async fn release(client: &mut GovernorClient<Channel>, lease_id: String) {
    let response = client
        .release(ReleaseRequest {
            lease_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.released);
}

async fn health(channel: Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status())
}

/// `ListDependencies` with `authorization: <value>` if given.
async fn list_with(
    admin: &mut GovernorAdminClient<Channel>,
    authorization: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = Request::new(ListDependenciesRequest {});
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let response = admin.list_dependencies(request).await?;
    Ok(response
        .into_inner()
        .dependencies
        .into_iter()
        .map(|d| d.name)
        .collect())
}

/// `/metrics` from the admin HTTP listener.
async fn metrics(gov: &GovernorProcess) -> String {
    let addr = gov.admin_addr().expect("admin listener");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `series` (name and labels as exposed), 0 if absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// The probe subcommand against `addr`: its exit code and stdout.
async fn probe(addr: SocketAddr, service: &str) -> (Option<i32>, String) {
    let addr = addr.to_string();
    let output = run_governor(&["probe", "--addr", &addr, "--service", service]).await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    )
}

#[tokio::test]
async fn the_health_listener_serves_health_and_nothing_else() {
    let gov = GovernorProcess::start(
        "[server]\nhealth_listen = \"127.0.0.1:0\"\nshutdown_grace = \"20s\"",
    )
    .await;
    let health_addr = gov.health_addr().expect("health= in the ready line");
    assert_ne!(health_addr, gov.grpc_addr());
    let channel = channel_to(health_addr).await;
    for service in ["", "governor.v1.Governor"] {
        assert_eq!(
            health(channel.clone(), service).await.unwrap(),
            ServingStatus::Serving
        );
    }
    let unknown = health(channel.clone(), "governor.v1.Nope")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    // Neither the data plane nor the control plane.
    let data_plane = GovernorClient::new(channel.clone())
        .acquire(acquire_request("db"))
        .await
        .unwrap_err();
    assert_eq!(data_plane.code(), Code::Unimplemented, "{data_plane:?}");
    let admin = list_with(&mut GovernorAdminClient::new(channel.clone()), None)
        .await
        .unwrap_err();
    assert_eq!(admin.code(), Code::Unimplemented, "{admin:?}");
    assert_eq!(
        probe(health_addr, "").await,
        (Some(0), "SERVING".to_owned())
    );
    assert_eq!(
        probe(health_addr, "governor.v1.Governor").await,
        (Some(0), "SERVING".to_owned())
    );

    // While draining (a permit held keeps it draining), NOT_SERVING there too.
    let mut client = gov.governor_client().await;
    let held = acquire(&mut client, "db").await.unwrap();
    gov.signal(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = health(channel.clone(), "").await.unwrap();
        if status == ServingStatus::NotServing {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        health(channel.clone(), "governor.v1.Governor")
            .await
            .unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        probe(health_addr, "").await,
        (Some(1), "NOT_SERVING".to_owned())
    );
    release(&mut client, held).await;
}

#[tokio::test]
async fn bad_listener_role_settings_exit_64_naming_the_key() {
    let empty_token = tempfile::NamedTempFile::new().unwrap();
    let cases = [
        (
            "[server]\nhealth_listen = \"port 50052\"".to_owned(),
            "server.health_listen",
        ),
        (
            format!(
                "[server]\nadmin_token_file = \"{}\"",
                empty_token.path().display()
            ),
            "server.admin_token_file",
        ),
        (
            "[server]\nadmin_token_file = \"/nonexistent/governor/token\"".to_owned(),
            "server.admin_token_file",
        ),
        (
            "[server]\nuds_allowed_uids = [1000]".to_owned(),
            "server.uds_allowed_uids",
        ),
        (
            "[limits]\nmax_dependencies_per_peer = 0".to_owned(),
            "limits.max_dependencies_per_peer",
        ),
    ];
    for (toml, key) in cases {
        let config = write_config(&toml);
        let output = run_governor(&[
            "--config".as_ref(),
            config.path().as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--admin-listen".as_ref(),
            "off".as_ref(),
        ])
        .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{toml}: {stderr}");
        assert!(stderr.contains(key), "{toml}: {stderr}");
    }
    let output = run_governor(&["--health-listen", "nowhere", "--admin-listen", "off"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--health-listen"), "{stderr}");
}

#[tokio::test]
async fn off_loopback_the_control_plane_needs_the_bearer_token() {
    let Some(ip) = external_ip_or_skip("off_loopback_the_control_plane_needs_the_bearer_token")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "first-Secret-token\n").unwrap();
    let gov = GovernorProcess::start_listening(
        &format!(
            "[server]\nadmin_token_file = \"{}\"\n[dependencies.db]\n",
            token_file.display()
        ),
        &format!("{ip}:0"),
        &[] as &[&str],
    )
    .await;
    assert_eq!(gov.grpc_addr().ip(), ip);
    let channel = channel_to(gov.grpc_addr()).await;
    let mut admin = GovernorAdminClient::new(channel.clone());

    let missing = list_with(&mut admin, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert!(missing.message().contains("authorization"), "{missing:?}");
    let wrong = list_with(&mut admin, Some("Bearer first-Secret-tokeN"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let not_bearer = list_with(&mut admin, Some("Basic first-Secret-token"))
        .await
        .unwrap_err();
    assert_eq!(not_bearer.code(), Code::Unauthenticated);
    assert_eq!(
        list_with(&mut admin, Some("Bearer first-Secret-token"))
            .await
            .unwrap(),
        ["db"]
    );
    // `governor status` with and without the token file.
    let addr = gov.grpc_addr().to_string();
    let token_arg = token_file.to_str().unwrap();
    let output = run_governor(&["status", "--addr", &addr, "--admin-token-file", token_arg]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(
        stdout.lines().any(|line| line.starts_with("db ")),
        "{stdout}"
    );
    let output = run_governor(&["status", "--addr", &addr]).await;
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--admin-token-file"), "{stderr}");

    // The data plane and health need no token.
    let mut client = GovernorClient::new(channel.clone());
    let lease = acquire(&mut client, "db").await.unwrap();
    release(&mut client, lease).await;
    assert_eq!(
        health(channel.clone(), "").await.unwrap(),
        ServingStatus::Serving
    );

    let scraped = metrics(&gov).await;
    assert_eq!(
        sample(
            &scraped,
            "governor_admin_denied_total{reason=\"missing_token\"}"
        ),
        3.0,
        "missing, a non-bearer scheme, and `governor status` without the file\n{scraped}"
    );
    assert_eq!(
        sample(
            &scraped,
            "governor_admin_denied_total{reason=\"wrong_token\"}"
        ),
        1.0
    );
    let stderr = gov.stderr_so_far();
    assert!(stderr.contains("control plane call refused"), "{stderr}");
    assert!(
        stderr.contains(&ip.to_string()),
        "the peer is logged: {stderr}"
    );
    assert!(
        !stderr.contains("Secret-tok"),
        "a token was logged: {stderr}"
    );

    // A rotated Secret and a reload: the old token stops working.
    std::fs::write(&token_file, "second-Secret-token").unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while list_with(&mut admin, Some("Bearer second-Secret-token"))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = list_with(&mut admin, Some("Bearer first-Secret-token"))
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::Unauthenticated);
    // An emptied token file is refused on reload; the running token stays.
    std::fs::write(&token_file, "").unwrap();
    gov.signal(Signal::SIGHUP);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gov.stderr_so_far().contains("config reload refused") {
        assert!(tokio::time::Instant::now() < deadline, "no refusal logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gov.stderr_so_far().contains("server.admin_token_file"));
    assert!(
        list_with(&mut admin, Some("Bearer second-Secret-token"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn off_loopback_without_a_token_file_the_control_plane_is_refused() {
    let Some(ip) =
        external_ip_or_skip("off_loopback_without_a_token_file_the_control_plane_is_refused")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let gov = GovernorProcess::start_listening(
        "[dependencies.db]\n",
        &format!("{ip}:0"),
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    let channel = channel_to(gov.grpc_addr()).await;
    let refused = list_with(
        &mut GovernorAdminClient::new(channel.clone()),
        Some("Bearer x"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("server.admin_token_file"));
    // The data plane is served there, and the control plane on the socket.
    let mut client = GovernorClient::new(channel);
    let lease = acquire(&mut client, "db").await.unwrap();
    release(&mut client, lease).await;
    let unix = unix_channel(&socket).await.unwrap();
    assert_eq!(
        list_with(&mut GovernorAdminClient::new(unix), None)
            .await
            .unwrap(),
        ["db"]
    );
    let scraped = metrics(&gov).await;
    assert_eq!(
        sample(
            &scraped,
            "governor_admin_denied_total{reason=\"no_token_file\"}"
        ),
        1.0
    );
    // `governor status` says why.
    let addr = gov.grpc_addr().to_string();
    let output = run_governor(&["status", "--addr", &addr]).await;
    assert_eq!(output.status.code(), Some(69));
}

#[tokio::test]
async fn control_plane_uds_keeps_it_off_tcp_whatever_the_token() {
    let Some(ip) = external_ip_or_skip("control_plane_uds_keeps_it_off_tcp_whatever_the_token")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok").unwrap();
    let gov = GovernorProcess::start_listening(
        &format!(
            "[server]\ncontrol_plane = \"uds\"\nadmin_token_file = \"{}\"",
            token_file.display()
        ),
        &format!("{ip}:0"),
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    let channel = channel_to(gov.grpc_addr()).await;
    let refused = list_with(&mut GovernorAdminClient::new(channel), Some("Bearer tok"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented);
    let unix = unix_channel(&socket).await.unwrap();
    list_with(&mut GovernorAdminClient::new(unix), None)
        .await
        .unwrap();
}

/// This process's uid and gid, as the kernel reports them for its files.
fn my_ids() -> (u32, u32) {
    let meta = std::fs::metadata("/proc/self").unwrap();
    (meta.uid(), meta.gid())
}

#[tokio::test]
async fn the_unix_socket_refuses_peers_outside_the_allow_lists() {
    let (uid, gid) = my_ids();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let gov = GovernorProcess::start_with_args(
        &format!(
            "[server]\nuds_allowed_uids = [{}]\nuds_allowed_gids = [{}]",
            uid.wrapping_add(1),
            gid.wrapping_add(1)
        ),
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    // The connection opens (the kernel accepts it) and is closed at once:
    // no call gets through.
    let outcome = match unix_channel(&socket).await {
        Ok(channel) => GovernorClient::new(channel)
            .acquire(acquire_request("db"))
            .await
            .map(|_| ()),
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    let refused = outcome.expect_err("a peer outside the allow-lists was served");
    // Closed before any HTTP/2: a transport error, not a gRPC answer.
    assert!(
        matches!(refused.code(), Code::Unavailable | Code::Unknown)
            && refused.message().contains("transport"),
        "{refused:?}"
    );
    // TCP is unaffected.
    acquire(&mut gov.governor_client().await, "db")
        .await
        .unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gov.stderr_so_far().contains("Unix socket peer refused") {
        assert!(tokio::time::Instant::now() < deadline, "refusal not logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stderr = gov.stderr_so_far();
    assert!(
        stderr.contains(&format!("uid={uid}")) && stderr.contains(&format!("gid={gid}")),
        "{stderr}"
    );
    assert!(stderr.contains("pid="), "{stderr}");
    let scraped = metrics(&gov).await;
    assert!(
        sample(&scraped, "governor_uds_peers_refused_total") >= 1.0,
        "{scraped}"
    );
}

#[tokio::test]
async fn the_unix_socket_serves_peers_in_the_allow_lists() {
    let (uid, gid) = my_ids();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    // Admitted by uid (the gid list excludes it), and by gid alone.
    for (uids, gids) in [
        (format!("[{uid}]"), format!("[{}]", gid.wrapping_add(1))),
        ("[]".to_owned(), format!("[{gid}]")),
    ] {
        let gov = GovernorProcess::start_with_args(
            &format!("[server]\nuds_allowed_uids = {uids}\nuds_allowed_gids = {gids}"),
            &["--uds".as_ref(), socket.as_os_str()],
        )
        .await;
        let channel = unix_channel(&socket).await.unwrap();
        let mut client = GovernorClient::new(channel.clone());
        let lease = acquire(&mut client, "db").await.unwrap();
        release(&mut client, lease).await;
        list_with(&mut GovernorAdminClient::new(channel), None)
            .await
            .unwrap();
        assert_eq!(
            sample(&metrics(&gov).await, "governor_uds_peers_refused_total"),
            0.0
        );
        drop(gov);
        // Let the killed process's socket go before the next one binds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Creates `n` names `prefix-i` through `client`; returns their leases.
async fn create_names(client: &mut GovernorClient<Channel>, prefix: &str, n: usize) -> Vec<String> {
    let mut leases = Vec::new();
    for i in 0..n {
        leases.push(acquire(client, &format!("{prefix}-{i}")).await.unwrap());
    }
    leases
}

#[tokio::test]
async fn one_connection_past_its_share_of_names_is_refused_and_others_are_not() {
    let gov = GovernorProcess::start(
        "[limits]\nmax_dependencies_per_peer = 3\n[dependencies.configured]\n",
    )
    .await;
    let mut greedy = gov.governor_client().await;
    let _held = create_names(&mut greedy, "junk", 3).await;
    let refused = acquire(&mut greedy, "junk-3").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().starts_with("dependency:")
            && refused
                .message()
                .contains("limits.max_dependencies_per_peer = 3"),
        "{refused:?}"
    );
    // Its existing and configured names still work.
    acquire(&mut greedy, "junk-0").await.unwrap();
    acquire(&mut greedy, "configured").await.unwrap();
    // Another connection (a local client is counted by connection) is not
    // affected, and the control plane may still create names.
    let mut other = gov.governor_client().await;
    create_names(&mut other, "other", 3).await;
    let mut admin = gov.admin_client().await;
    admin
        .update_dependency(rate_governor_proto::v1::UpdateDependencyRequest {
            name: "by-admin".into(),
            limits: None,
        })
        .await
        .unwrap();
    let names = list_with(&mut admin, None).await.unwrap();
    assert_eq!(names.len(), 1 + 3 + 3 + 1, "{names:?}");
}

#[tokio::test]
async fn a_remote_host_shares_one_share_of_names_across_its_connections() {
    let Some(ip) =
        external_ip_or_skip("a_remote_host_shares_one_share_of_names_across_its_connections")
    else {
        return;
    };
    let gov = GovernorProcess::start_listening(
        "[limits]\nmax_dependencies_per_peer = 2",
        &format!("{ip}:0"),
        &[] as &[&str],
    )
    .await;
    let mut first = GovernorClient::new(channel_to(gov.grpc_addr()).await);
    let _held = create_names(&mut first, "a", 2).await;
    let mut second = GovernorClient::new(channel_to(gov.grpc_addr()).await);
    let refused = acquire(&mut second, "b-0").await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // A local client of the same sidecar is another peer.
    // (The listener is on `ip` only, so the loopback check needs another
    // sidecar; the per-connection case is covered above.)
    acquire(&mut second, "a-1").await.unwrap();
}
