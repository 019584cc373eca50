//! `governor status`: the dependencies of a running sidecar as a table, read
//! from its control plane (`ListDependencies`), once or every second.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rate_governor_proto::v1::governor_admin_client::GovernorAdminClient;
use rate_governor_proto::v1::{self, DependencyStatus, ListDependenciesRequest};
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::{Channel, Endpoint, Uri};

use super::EXIT_UNAVAILABLE;
use crate::config::AdminToken;
use crate::telemetry::status::{Load, Pressure, pressure};

/// Where the sidecar's control plane is.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Prints the table once (exit 0, or 69 when the sidecar cannot be asked),
/// or with `watch` every second until SIGINT or SIGTERM (exit 0).
pub async fn status(
    target: Target,
    token: Option<AdminToken>,
    watch: bool,
    timeout: Duration,
) -> ExitCode {
    let token = token.as_ref();
    if !watch {
        return match fetch(&target, token, timeout).await {
            Ok(dependencies) => {
                print!("{}", table(&dependencies, None));
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("governor status: {target}: {error}");
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        };
    }
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("governor status: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let clear = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous: Option<(Vec<DependencyStatus>, Instant)> = None;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return ExitCode::SUCCESS,
            _ = terminate.recv() => return ExitCode::SUCCESS,
            _ = tick.tick() => {}
        }
        let fetched = tokio::select! {
            _ = interrupt.recv() => return ExitCode::SUCCESS,
            _ = terminate.recv() => return ExitCode::SUCCESS,
            fetched = fetch(&target, token, timeout) => fetched,
        };
        let now = Instant::now();
        let mut frame = String::new();
        if clear {
            frame.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            frame,
            "Every 1s: governor status {target}    {}",
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        match fetched {
            Ok(dependencies) => {
                let before = previous
                    .as_ref()
                    .map(|(d, at)| (d.as_slice(), now.duration_since(*at)));
                frame.push_str(&table(&dependencies, Some(before)));
                previous = Some((dependencies, now));
            }
            // Keep watching: the sidecar may be restarting.
            Err(error) => {
                let _ = writeln!(frame, "cannot ask the sidecar: {error}");
                previous = None;
            }
        }
        if !clear {
            frame.push('\n');
        }
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing left to do.
            return ExitCode::SUCCESS;
        }
    }
}

async fn fetch(
    target: &Target,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<Vec<DependencyStatus>, String> {
    let ask = async {
        let channel = connect(target, timeout).await?;
        let mut request = tonic::Request::new(ListDependenciesRequest {});
        if let Some(token) = token {
            let value = format!("Bearer {}", token.reveal()).parse().map_err(|_| {
                "--admin-token-file: the token is not a valid header value".to_owned()
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = GovernorAdminClient::new(channel)
            .list_dependencies(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => "the control plane is not served on this \
                    listener (server.control_plane is \"uds\" or \"off\"); try --uds PATH"
                    .to_owned(),
                tonic::Code::Unauthenticated => format!(
                    "refused without the right bearer token ({}); pass --admin-token-file FILE \
                     with the content of the sidecar's server.admin_token_file",
                    status.message()
                ),
                _ => format!("{}: {}", status.code(), status.message()),
            })?;
        Ok(response.into_inner().dependencies)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

async fn connect(target: &Target, timeout: Duration) -> Result<Channel, String> {
    let describe = |e: tonic::transport::Error| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                let _ = write!(text, ": {cause_text}");
            }
            source = cause.source();
        }
        text
    };
    match target {
        Target::Tcp(addr) => Endpoint::from_shared(format!("http://{addr}"))
            .map_err(describe)?
            .connect_timeout(timeout)
            .connect()
            .await
            .map_err(describe),
        Target::Unix(path) => {
            let path = path.clone();
            // The authority is "localhost": HTTP/2 servers refuse a path there.
            Endpoint::from_static("http://localhost")
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(describe)
        }
    }
}

/// The limit the sidecar enforces, as the control plane reports it (an
/// older sidecar, without the field, enforces max_concurrency).
fn limit_of(status: &DependencyStatus) -> u32 {
    if status.limit == 0 {
        status.max_concurrency
    } else {
        status.limit
    }
}

/// How the limit is set: "static", or the algorithm ("gradient", ... with
/// "/shadow" when it only reports).
fn algorithm_of(status: &DependencyStatus) -> String {
    use rate_governor_proto::v1::LimitAlgorithm;
    let name = match status.limit_algorithm() {
        LimitAlgorithm::Gradient => "gradient",
        LimitAlgorithm::Vegas => "vegas",
        LimitAlgorithm::Aimd => "aimd",
        LimitAlgorithm::Static | LimitAlgorithm::Unspecified => return "static".to_owned(),
    };
    match status.adaptive.as_ref().and_then(|a| a.shadow) {
        Some(true) => format!("{name}/shadow({})", status.adaptive_limit),
        _ => name.to_owned(),
    }
}

/// The sidecar's own pressure, from `GetDependency`; `None` from a sidecar
/// that predates the field, whose pressure the table then estimates.
fn reported_pressure(status: &DependencyStatus) -> Option<Pressure> {
    match v1::Pressure::try_from(status.pressure).ok()? {
        v1::Pressure::Unspecified => None,
        v1::Pressure::None => Some(Pressure::None),
        v1::Pressure::Elevated => Some(Pressure::Elevated),
        v1::Pressure::Saturated => Some(Pressure::Saturated),
        v1::Pressure::Overloaded => Some(Pressure::Overloaded),
    }
}

/// The table. With `watch`, two more columns, rejections per second and
/// pressure, from the growth since the previous reading (`None` for the
/// first: shown as "-").
fn table(
    dependencies: &[DependencyStatus],
    watch: Option<Option<(&[DependencyStatus], Duration)>>,
) -> String {
    let mut header = vec![
        "NAME",
        "LIMIT",
        "MAX",
        "IN-FLIGHT",
        "UTIL",
        "QUEUED",
        "MAX-QUEUE",
        "GRANTED",
        "REJECTED",
        "EXPIRED",
        "RETRY-BUDGET",
        "ALGORITHM",
    ];
    if watch.is_some() {
        header.extend(["REJ/S", "PRESSURE"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in dependencies {
        let load = Load {
            limit: limit_of(d),
            in_flight: d.in_flight,
            queued: d.queued,
        };
        let mut row = vec![
            d.name.clone(),
            load.limit.to_string(),
            d.max_concurrency.to_string(),
            d.in_flight.to_string(),
            format!("{:.0}%", load.utilization() * 100.0),
            d.queued.to_string(),
            d.max_queue.to_string(),
            d.granted_total.to_string(),
            d.rejected_total.to_string(),
            d.expired_total.to_string(),
            format!("{:.1}", d.retry_budget_available),
            algorithm_of(d),
        ];
        if let Some(before) = watch {
            let growth = before.map(|(previous, elapsed)| {
                let earlier = previous.iter().find(|p| p.name == d.name);
                // A restarted sidecar counts from zero again: no negative rates.
                let rejected = d
                    .rejected_total
                    .saturating_sub(earlier.map_or(0, |p| p.rejected_total));
                (rejected, elapsed)
            });
            match growth {
                Some((rejected, elapsed)) => {
                    let per_second = rejected as f64 / elapsed.as_secs_f64().max(1e-3);
                    row.push(format!("{per_second:.1}"));
                    let told = reported_pressure(d);
                    let shown = told.unwrap_or_else(|| pressure(load, rejected > 0));
                    row.push(shown.as_str().to_owned());
                }
                None => row.extend(["-".to_owned(), "-".to_owned()]),
            }
        }
        rows.push(row);
    }
    let mut out = aligned(&rows, &["NAME", "PRESSURE"]);
    if dependencies.is_empty() {
        out.push_str("(no dependencies yet: one appears with its first Acquire)\n");
    }
    out.push_str(&tenants(dependencies));
    out.push_str(&fleet(dependencies));
    out
}

/// The fleet shares of the dependencies with a fleet-wide limit, after a
/// blank line; nothing without any.
fn fleet(dependencies: &[DependencyStatus]) -> String {
    let header = [
        "DEPENDENCY",
        "FLEET",
        "MODE",
        "SHARE",
        "TARGET",
        "ENFORCED",
        "DEMAND",
        "PODS",
        "ERRORS",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in dependencies {
        let Some(f) = &d.fleet else { continue };
        let mode = match f.mode() {
            v1::FleetMode::Starting => "starting",
            v1::FleetMode::Share => "share",
            v1::FleetMode::Learning => "learning",
            v1::FleetMode::Fallback => "fallback",
            v1::FleetMode::Unspecified => "-",
        };
        rows.push(vec![
            d.name.clone(),
            f.max_concurrency.to_string(),
            mode.to_owned(),
            f.share.to_string(),
            f.target.to_string(),
            f.enforced.to_string(),
            f.demand.to_string(),
            f.instances.to_string(),
            f.store_errors_total.to_string(),
        ]);
    }
    if rows.len() == 1 {
        return String::new();
    }
    format!("\n{}", aligned(&rows, &["DEPENDENCY", "MODE"]))
}

/// The tenants of the dependencies with fair shares (named ones, then the
/// most loaded), after a blank line; nothing without any.
fn tenants(dependencies: &[DependencyStatus]) -> String {
    let header = [
        "DEPENDENCY",
        "TENANT",
        "WEIGHT",
        "IN-FLIGHT",
        "QUEUED",
        "SHARE",
        "GRANTED",
        "REJECTED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for d in dependencies {
        for t in &d.tenants {
            let name = match (t.overflow, t.tenant.is_empty()) {
                (true, _) => "(overflow)".to_owned(),
                (false, true) => "(none)".to_owned(),
                (false, false) => t.tenant.clone(),
            };
            rows.push(vec![
                d.name.clone(),
                name,
                t.weight.to_string(),
                t.in_flight.to_string(),
                t.queued.to_string(),
                format!("{:.1}", t.share),
                t.granted_total.to_string(),
                t.rejected_total.to_string(),
            ]);
        }
    }
    if rows.len() == 1 {
        return String::new();
    }
    format!("\n{}", aligned(&rows, &["DEPENDENCY", "TENANT"]))
}

/// `rows` (the first is the header) in aligned columns: the columns headed
/// `left` to the left, numbers to the right.
fn aligned(rows: &[Vec<String>], left: &[&str]) -> String {
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, value) in row.iter().enumerate() {
            let pad = widths[c] - value.chars().count();
            if c > 0 {
                line.push_str("   ");
            }
            if left.contains(&rows[0][c].as_str()) {
                line.push_str(value);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(value);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dependency(
        name: &str,
        limit: u32,
        in_flight: u32,
        queued: u32,
        rejected: u64,
    ) -> DependencyStatus {
        DependencyStatus {
            name: name.to_owned(),
            max_concurrency: limit,
            in_flight,
            queued,
            max_queue: 16,
            granted_total: 42,
            rejected_total: rejected,
            retry_budget_available: 12.5,
            ..Default::default()
        }
    }

    #[test]
    fn prints_aligned_columns() {
        let text = table(
            &[
                dependency("db", 8, 2, 0, 3),
                dependency("payments-api", 64, 64, 5, 0),
            ],
            None,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME           LIMIT"), "{text}");
        let db: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            db,
            [
                "db", "8", "8", "2", "25%", "0", "16", "42", "3", "0", "12.5", "static"
            ]
        );
        let payments: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(payments[4], "100%");
        // Right-aligned numbers end in the same column.
        let end = |line: &str, word: &str| line.find(word).unwrap() + word.len();
        assert_eq!(end(lines[0], "LIMIT"), end(lines[2], "64"));
        assert!(!text.contains("PRESSURE"));
    }

    #[test]
    fn watch_adds_rates_and_pressure_from_the_previous_reading() {
        let before = [dependency("db", 8, 2, 0, 3)];
        let now = [dependency("db", 8, 8, 1, 13), dependency("new", 4, 1, 0, 0)];
        let first = table(&now, Some(None));
        assert!(first.lines().nth(1).unwrap().ends_with("-   -"), "{first}");
        let text = table(&now, Some(Some((&before, Duration::from_secs(2)))));
        let db: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&db[12..], ["5.0", "overloaded"]);
        let new: Vec<&str> = text.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(&new[12..], ["0.0", "none"]);
    }

    #[test]
    fn watch_shows_the_sidecars_own_pressure_when_it_reports_one() {
        let before = [dependency("db", 8, 2, 0, 3)];
        // Rejections grew, which the estimate reads as overloaded; the
        // sidecar says saturated (say, retry budget rejections only).
        let now = [DependencyStatus {
            pressure: v1::Pressure::Saturated.into(),
            ..dependency("db", 8, 8, 1, 13)
        }];
        let text = table(&now, Some(Some((&before, Duration::from_secs(2)))));
        let db: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&db[12..], ["5.0", "saturated"]);
    }

    #[test]
    fn says_so_when_there_is_nothing() {
        assert!(table(&[], None).contains("no dependencies yet"));
    }

    #[test]
    fn an_adaptive_limit_shows_its_algorithm_and_ceiling() {
        use rate_governor_proto::v1::{AdaptiveLimit, LimitAlgorithm};
        let mut adaptive = DependencyStatus {
            limit: 12,
            adaptive_limit: 12,
            limit_algorithm: LimitAlgorithm::Gradient.into(),
            adaptive: Some(AdaptiveLimit {
                shadow: Some(false),
                ..Default::default()
            }),
            ..dependency("search", 200, 6, 0, 0)
        };
        let row = |d: &DependencyStatus| -> Vec<String> {
            let text = table(std::slice::from_ref(d), None);
            text.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        let cells = row(&adaptive);
        assert_eq!(
            (&cells[1][..], &cells[2][..], &cells[4][..]),
            ("12", "200", "50%")
        );
        assert_eq!(cells.last().unwrap(), "gradient");
        adaptive.limit = 200;
        adaptive.adaptive = Some(AdaptiveLimit {
            shadow: Some(true),
            ..Default::default()
        });
        assert_eq!(row(&adaptive).last().unwrap(), "gradient/shadow(12)");
    }

    #[test]
    fn lists_the_fleet_shares_of_dependencies_with_a_fleet_limit() {
        let mut shared = dependency("payments", 8, 8, 5, 0);
        shared.fleet = Some(v1::FleetStatus {
            mode: v1::FleetMode::Fallback.into(),
            max_concurrency: 200,
            share: 0,
            target: 0,
            enforced: 4,
            demand: 9,
            instances: 3,
            store_errors_total: 7,
            ..Default::default()
        });
        let out = table(&[shared, dependency("db", 4, 4, 1, 0)], None);
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("DEPENDENCY"))
            .expect("a fleet table");
        assert_eq!(lines[at - 1], "");
        let row: Vec<&str> = lines[at + 1].split_whitespace().collect();
        assert_eq!(
            row,
            ["payments", "200", "fallback", "0", "0", "4", "9", "3", "7"]
        );
        assert_eq!(lines.len(), at + 2, "only dependencies with a fleet limit");
    }

    #[test]
    fn lists_the_tenants_of_dependencies_with_fair_shares() {
        let mut fair = dependency("payments", 8, 8, 5, 0);
        fair.tenants = vec![
            v1::TenantStatus {
                tenant: "checkout".into(),
                named: true,
                weight: 4,
                in_flight: 4,
                queued: 2,
                share: 6.4,
                granted_total: 120,
                rejected_total: 3,
                ..Default::default()
            },
            v1::TenantStatus {
                overflow: true,
                weight: 1,
                in_flight: 1,
                share: 1.0,
                ..Default::default()
            },
        ];
        let plain = dependency("db", 4, 4, 1, 0);
        let out = table(&[fair, plain.clone()], None);
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("DEPENDENCY"))
            .expect("a tenant table");
        assert_eq!(lines[at - 1], "", "after a blank line");
        let checkout: Vec<&str> = lines[at + 1].split_whitespace().collect();
        assert_eq!(
            checkout,
            ["payments", "checkout", "4", "4", "2", "6.4", "120", "3"]
        );
        assert!(lines[at + 2].contains("(overflow)"));
        assert_eq!(lines.len(), at + 3);
        // Without fair shares anywhere, no tenant table.
        assert!(!table(&[plain], None).contains("TENANT"));
    }
}
