//! The real binary against a careless or hostile neighbour (issue 13): a
//! flood of junk dependency names, oversized and doubled request messages,
//! a truncated config file. Loopback only, and bounded.

use std::net::SocketAddr;
use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal, run_governor, write_config};
use rate_governor_proto::v1::{
    self, AcquireRequest, DependencyLimits, GetDependencyRequest, ListDependenciesRequest,
    ReleaseRequest, UpdateDependencyRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tonic::Code;
use tonic::codegen::{Bytes, http};
use tonic::transport::Channel;

/// Waits for `done` up to `within`, polling; says what it waited for.
async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn names(admin: &mut GovernorAdminClient<Channel>) -> Vec<String> {
    admin
        .list_dependencies(ListDependenciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .dependencies
        .into_iter()
        .map(|d| d.name)
        .collect()
}

/// `/metrics` from the admin listener.
async fn metrics(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    name: &str,
) -> Result<v1::AcquireResponse, tonic::Status> {
    client
        .acquire(AcquireRequest {
            dependency: name.into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn release(client: &mut GovernorClient<Channel>, lease_id: String) {
    let released = client
        .release(ReleaseRequest {
            lease_id,
            outcome: v1::Outcome::Success.into(),
            latency: None,
        })
        .await
        .unwrap()
        .into_inner()
        .released;
    assert!(released);
}

#[tokio::test]
async fn a_flood_of_junk_names_locks_nobody_out_and_is_gone_after_idle_ttl() {
    let gov = GovernorProcess::start(
        r#"
[defaults]
lease_ttl = "1s"
[limits]
max_dependencies = 64
idle_ttl = "1s"
[dependencies.payments]
max_concurrency = 4
"#,
    )
    .await;
    let mut client = gov.governor_client().await;
    let mut admin = gov.admin_client().await;

    // 40 junk names whose holders vanish (their leases expire), then 2000
    // more from eight flooding callers that release at once.
    for i in 0..40 {
        let granted = acquire(&mut client, &format!("held-{i}")).await.unwrap();
        assert!(granted.granted);
    }
    let floods: Vec<_> = (0..8)
        .map(|caller| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for i in 0..250 {
                    match acquire(&mut client, &format!("junk-{caller}-{i}")).await {
                        Ok(answer) if answer.granted => release(&mut client, answer.lease_id).await,
                        Ok(answer) => panic!("not granted: {answer:?}"),
                        Err(status) => {
                            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for flood in floods {
        refused += flood.await.unwrap();
    }
    // Idle junk made room for the next junk: with at most 41 + 8 places in
    // use at any time, nothing was refused.
    assert_eq!(refused, 0, "{refused} of 2000 junk names refused");
    let listed = names(&mut admin).await;
    assert!(listed.len() <= 64, "{} dependencies", listed.len());
    assert!(listed.iter().any(|n| n == "payments"));

    // The configured name still works, and the control plane can add one.
    let answer = acquire(&mut client, "payments").await.unwrap();
    assert!(answer.granted, "{answer:?}");
    release(&mut client, answer.lease_id).await;
    let created = admin
        .update_dependency(UpdateDependencyRequest {
            name: "search".into(),
            limits: Some(DependencyLimits {
                max_concurrency: Some(3),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.max_concurrency, 3);

    // After the leases expire and a second of idleness, only the configured
    // ones are left, in ListDependencies and in /metrics.
    eventually("the junk to be evicted", Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move { names(&mut admin).await == ["payments", "search"] }
    })
    .await;
    let text = metrics(gov.admin_addr().unwrap()).await;
    assert!(text.contains("dependency=\"payments\""), "{text}");
    for junk in ["junk-", "held-"] {
        assert!(
            !text.contains(&format!("dependency=\"{junk}")),
            "series of evicted {junk}* left in /metrics"
        );
    }
    assert!(text.contains("governor_dependencies 2"), "{text}");
    let search = admin
        .get_dependency(GetDependencyRequest {
            name: "search".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(search.max_concurrency, 3, "control-plane settings stay");
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted() {
    let gov = GovernorProcess::start("[server]\nmax_message_bytes = 4096\n").await;
    let mut client = gov.governor_client().await;
    let huge = acquire(&mut client, &"y".repeat(8 * 1024))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    assert!(huge.message().contains("max_message_bytes"), "{huge:?}");
    let mut admin = gov.admin_client().await;
    let huge = admin
        .get_dependency(GetDependencyRequest {
            name: "z".repeat(5000),
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    // Just under the limit is decoded (and refused for its content).
    let big = acquire(&mut client, &"y".repeat(4000)).await.unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument, "{big:?}");
}

/// A protobuf AcquireRequest for `dependency`, length-prefixed as gRPC sends it.
fn acquire_frame(dependency: &str) -> Vec<u8> {
    let mut message = vec![0x0a, dependency.len() as u8];
    message.extend_from_slice(dependency.as_bytes());
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend(message);
    frame
}

/// Sends `body` as one Acquire over a raw HTTP/2 connection; returns the
/// grpc-status and grpc-message, from the headers or the trailers.
async fn raw_acquire(addr: SocketAddr, body: Vec<u8>) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/governor.v1.Governor/Acquire"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(request, false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    let header =
        |map: &http::HeaderMap, name: &str| map.get(name).map(|v| v.to_str().unwrap().to_owned());
    let headers = response.headers().clone();
    if let Some(status) = header(&headers, "grpc-status") {
        return (status, header(&headers, "grpc-message").unwrap_or_default());
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    (
        header(&trailers, "grpc-status").expect("grpc-status"),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_unary_call_with_two_request_messages_is_refused() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\n").await;
    // One message over the same raw client: served (the client is right).
    let (status, message) = raw_acquire(gov.grpc_addr(), acquire_frame("db")).await;
    assert_eq!(status, "0", "{message}");
    // Two on one stream: refused, and nothing granted.
    let mut two = acquire_frame("db");
    two.extend(acquire_frame("db"));
    let (status, message) = raw_acquire(gov.grpc_addr(), two).await;
    assert_eq!(status, (Code::Internal as i32).to_string(), "{message}");
    assert!(message.contains("unary"), "{message}");
    let mut admin = gov.admin_client().await;
    let db = admin
        .get_dependency(GetDependencyRequest { name: "db".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((db.granted_total, db.in_flight), (1, 1));
}

#[tokio::test]
async fn an_empty_config_file_is_refused_at_start_and_on_reload() {
    let empty = write_config("");
    let output = run_governor(&[
        "--config".as_ref(),
        empty.path().as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ])
    .await;
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the file is empty"), "{stderr}");

    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 7\n").await;
    let mut admin = gov.admin_client().await;
    let reload_errors = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("governor_config_reloads_total{result=\"error\"}"))
            .map_or(0.0, |l| {
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()
            })
    };
    let before = reload_errors(&metrics(gov.admin_addr().unwrap()).await);
    for (round, text) in ["", "# [dependencies.db]\n# max_concurrency = 1\n"]
        .iter()
        .enumerate()
    {
        std::fs::write(gov.config_path(), text).unwrap();
        gov.signal(Signal::SIGHUP);
        let addr = gov.admin_addr().unwrap();
        eventually(
            "the refused reload to be counted",
            Duration::from_secs(10),
            || async move { reload_errors(&metrics(addr).await) >= before + round as f64 + 1.0 },
        )
        .await;
        let db = admin
            .get_dependency(GetDependencyRequest { name: "db".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(db.max_concurrency, 7, "the running config stays");
    }
    let stderr = gov.stderr_so_far();
    assert!(stderr.contains("config reload refused"), "{stderr}");
    assert!(stderr.contains("the file is empty"), "{stderr}");
    assert!(stderr.contains("has no section"), "{stderr}");
}
