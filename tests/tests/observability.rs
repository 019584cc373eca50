//! What operators see of the real binary: the admin listener on by default,
//! the metrics format negotiated from `Accept` (exemplars in OpenMetrics),
//! utilization and process metrics, `/status.json` and the page, and
//! `governor status` against a running sidecar.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use governor_integration_tests::{GovernorProcess, Signal, governor_bin, run_governor};
use rate_governor_proto::v1::{
    AcquireRequest, AcquireResponse, Outcome, ReleaseRequest, governor_client::GovernorClient,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

/// An HTTP/1.1 answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: governor\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

async fn acquire(
    client: &mut GovernorClient<Channel>,
    dependency: &str,
    traceparent: Option<&str>,
) -> AcquireResponse {
    let mut request = tonic::Request::new(AcquireRequest {
        dependency: dependency.into(),
        ..Default::default()
    });
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    client.acquire(request).await.unwrap().into_inner()
}

async fn release(client: &mut GovernorClient<Channel>, lease_id: &str) {
    let released = client
        .release(ReleaseRequest {
            lease_id: lease_id.into(),
            outcome: Outcome::Success.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .released;
    assert!(released);
}

/// The value of the first sample line starting with `series`.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| line.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line[series.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn with_no_admin_flag_the_admin_listener_is_on_9464() {
    // Only --listen: the admin listener comes from the embedded default.
    // Another sidecar on this machine may hold 9464; then the failure must
    // say so, naming the key.
    let config = governor_integration_tests::write_config("[defaults]\n");
    let mut child = tokio::process::Command::new(governor_bin())
        .arg("--config")
        .arg(config.path())
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("a ready line or an exit")
        .unwrap();
    match first {
        Some(line) => {
            assert!(line.ends_with(" admin=127.0.0.1:9464"), "{line}");
            let answer = get("127.0.0.1:9464".parse().unwrap(), "/healthz", None).await;
            assert_eq!(answer.status, 200);
            child.start_kill().unwrap();
        }
        None => {
            let status = child.wait().await.unwrap();
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .await
                .unwrap();
            assert_eq!(status.code(), Some(69), "{stderr}");
            assert!(
                stderr.contains("server.admin_listen: cannot listen on 127.0.0.1:9464"),
                "{stderr}"
            );
        }
    }

    // "off" turns it off, from the command line and from the file.
    let gov = GovernorProcess::start_with_args("[defaults]\n", &["--admin-listen", "off"]).await;
    assert_eq!(gov.admin_addr(), None, "{}", gov.ready_line());
    let output = run_governor(&["--print-default-config"]).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("admin_listen = \"127.0.0.1:9464\""), "{text}");
}

#[tokio::test]
async fn metrics_are_plain_text_unless_openmetrics_is_asked_for_with_exemplars() {
    // Spans go nowhere (nothing listens on the discard port); sampling
    // happens all the same.
    let gov = GovernorProcess::start(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\n\
         [dependencies.db]\nmax_concurrency = 4",
    )
    .await;
    let admin = gov.admin_addr().unwrap();
    let mut client = gov.governor_client().await;

    // An unsampled caller first: it leaves no exemplar.
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let grant = acquire(
        &mut client,
        "db",
        Some(&format!("00-{unsampled}-b7ad6b7169203331-00")),
    )
    .await;
    release(&mut client, &grant.lease_id).await;
    let openmetrics =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3";
    let answer = get(admin, "/metrics", Some(openmetrics)).await;
    assert!(!answer.body.contains("trace_id"), "{}", answer.body);

    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let grant = acquire(
        &mut client,
        "db",
        Some(&format!("00-{sampled}-00f067aa0ba902b7-01")),
    )
    .await;
    release(&mut client, &grant.lease_id).await;

    let answer = get(admin, "/metrics", Some(openmetrics)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = &answer.body;
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE governor_acquire counter"), "{om}");
    let exemplar = format!("# {{trace_id=\"{sampled}\"}}");
    for histogram in [
        "governor_queue_wait_seconds_bucket",
        "governor_permit_hold_seconds_bucket",
    ] {
        assert!(
            om.lines()
                .any(|line| line.starts_with(histogram) && line.contains(&exemplar)),
            "no exemplar {exemplar} on {histogram}:\n{om}"
        );
    }
    assert!(!answer.body.contains(&grant.lease_id));

    // No Accept (curl, scripts): the 0.0.4 text format.
    for accept in [None, Some("text/plain"), Some("*/*")] {
        let answer = get(admin, "/metrics", accept).await;
        assert_eq!(
            answer.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        let text = &answer.body;
        assert!(
            !text.contains("# EOF") && !text.contains("trace_id"),
            "{text}"
        );
        assert!(!text.contains("_created"), "{text}");
        assert!(
            text.contains("# TYPE governor_acquire_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert_eq!(
            sample(
                text,
                "governor_acquire_total{dependency=\"db\",result=\"granted\",reason=\"none\"}"
            ),
            2.0
        );
        assert_eq!(
            sample(text, "governor_queue_wait_seconds_count{dependency=\"db\"}"),
            2.0
        );
    }
}

#[tokio::test]
async fn utilization_and_process_metrics_are_exported() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 4").await;
    let admin = gov.admin_addr().unwrap();
    let mut client = gov.governor_client().await;
    let held = acquire(&mut client, "db", None).await;
    assert!(held.granted);
    let text = get(admin, "/metrics", None).await.body;
    assert_eq!(
        sample(&text, "governor_dependency_utilization{dependency=\"db\"}"),
        0.25
    );
    assert_eq!(
        sample(&text, "governor_dependency_limit{dependency=\"db\"}"),
        4.0
    );

    let pid = gov.pid().unwrap();
    let rss = sample(&text, "process_resident_memory_bytes");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    // The same order of magnitude as the kernel says now (it moves a little).
    assert!(
        rss > kib * 1024.0 / 2.0 && rss < kib * 1024.0 * 2.0,
        "{rss} vs {kib} KiB"
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as f64;
    let open = sample(&text, "process_open_fds");
    assert!((open - fds).abs() <= 4.0, "{open} vs {fds}");
    assert!(sample(&text, "process_max_fds") >= open);
    assert!(sample(&text, "process_virtual_memory_bytes") >= rss);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
}

#[tokio::test]
async fn status_json_and_the_page_show_a_dependency_without_lease_ids() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 2\nmax_queue = 0").await;
    let admin = gov.admin_addr().unwrap();
    let mut client = gov.governor_client().await;
    let a = acquire(&mut client, "db", None).await;
    let b = acquire(&mut client, "db", None).await;
    let rejected = acquire(&mut client, "db", None).await;
    assert!(a.granted && b.granted && !rejected.granted);

    let answer = get(admin, "/status.json", None).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    let db = json["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "db")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(db["limit"], 2);
    assert_eq!(db["in_flight"], 2);
    assert_eq!(db["utilization"], 1.0);
    assert_eq!(db["rejected_total"], 1);
    // Rejected just now.
    assert_eq!(db["pressure"], "overloaded");
    assert_eq!(json["history_samples"], 180);
    for lease in [&a.lease_id, &b.lease_id] {
        assert!(!answer.body.contains(lease.as_str()));
    }

    let page = get(admin, "/", None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.headers["content-security-policy"].contains("default-src 'none'"));
    assert!(page.body.contains("status.json"));
    assert_eq!(get(admin, "/nope", None).await.status, 404);
}

/// The words of the table row of `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|words| words.first() == Some(&name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"))
}

#[tokio::test]
async fn governor_status_prints_the_table_over_tcp_and_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let gov = GovernorProcess::start_with_args(
        "[dependencies.db]\nmax_concurrency = 4\nmax_queue = 8",
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    let mut client = gov.governor_client().await;
    let _held = acquire(&mut client, "db", None).await;

    let addr = gov.grpc_addr().to_string();
    let output = run_governor(&["status", "--addr", &addr]).await;
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    // NAME LIMIT MAX IN-FLIGHT UTIL QUEUED MAX-QUEUE GRANTED REJECTED EXPIRED RETRY-BUDGET ALGORITHM
    assert_eq!(
        &row(&table, "db")[..10],
        ["db", "4", "4", "1", "25%", "0", "8", "1", "0", "0"]
    );
    assert_eq!(row(&table, "db").last(), Some(&"static"));

    let output = run_governor(&["status".as_ref(), "--uds".as_ref(), socket.as_os_str()]).await;
    assert!(output.status.success(), "{output:?}");
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(row(&table, "db")[3], "1");

    // Nobody there: exit 69, saying where it looked.
    let nobody = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let free = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let output = run_governor(&["status", "--addr", &free, "--timeout", "2s"]).await;
    assert_eq!(output.status.code(), Some(69), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("governor status: {free}: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn governor_status_says_when_the_control_plane_is_kept_off_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("governor.sock");
    let gov = GovernorProcess::start_with_args(
        "[server]\ncontrol_plane = \"uds\"",
        &["--uds".as_ref(), socket.as_os_str()],
    )
    .await;
    let output = run_governor(&["status", "--addr", &gov.grpc_addr().to_string()]).await;
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.control_plane") && stderr.contains("--uds"),
        "{stderr}"
    );
    let output = run_governor(&["status".as_ref(), "--uds".as_ref(), socket.as_os_str()]).await;
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn governor_status_watch_refreshes_until_interrupted() {
    let gov = GovernorProcess::start("[dependencies.db]\nmax_concurrency = 1\nmax_queue = 0").await;
    let mut client = gov.governor_client().await;
    let held = acquire(&mut client, "db", None).await;
    assert!(held.granted);

    let mut watch = tokio::process::Command::new(governor_bin())
        .args(["status", "--watch", "--addr", &gov.grpc_addr().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The first frame has nothing to compare with.
    let first = next_db_row(&mut lines).await;
    assert!(first.ends_with("-   -"), "{first}");
    // Rejections between frames show in the next one, overloaded for the
    // second after them. A frame that a loaded machine delays past that
    // second may show them as saturated already: then they are sent again.
    let mut sent = 0;
    let mut rejected_at = std::time::Instant::now();
    let mut reject = async |sent: &mut u32, at: &mut std::time::Instant| {
        *at = std::time::Instant::now();
        for _ in 0..3 {
            assert!(!acquire(&mut client, "db", None).await.granted);
        }
        *sent += 3;
    };
    reject(&mut sent, &mut rejected_at).await;
    let mut seen = Vec::new();
    loop {
        let row = next_db_row(&mut lines).await;
        let words: Vec<String> = row.split_whitespace().map(str::to_owned).collect();
        seen.push(row);
        // NAME LIMIT MAX IN-FLIGHT UTIL QUEUED MAX-QUEUE GRANTED REJECTED ... REJ/S PRESSURE
        if words[8] == sent.to_string() && words[13] == "overloaded" {
            assert!(words[12].parse::<f64>().unwrap() > 0.0, "{seen:?}");
            break;
        }
        assert!(seen.len() < 8, "the rejections never showed: {seen:?}");
        if words[8] == sent.to_string() && rejected_at.elapsed() >= Duration::from_secs(1) {
            reject(&mut sent, &mut rejected_at).await;
        }
    }
    let pid = nix::unistd::Pid::from_raw(watch.id().unwrap() as i32);
    nix::sys::signal::kill(pid, Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), watch.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The next table row of `db` that `governor status --watch` prints.
async fn next_db_row(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a frame every second")
            .unwrap()
            .expect("still running");
        if line.starts_with("db ") {
            return line;
        }
    }
}
