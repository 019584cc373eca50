//! One reading of the sidecar: RSS and open fds from /proc, tasks and ledger
//! gauges from its /metrics page over real HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::env::memory_kib;

/// What one sample saw.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started (negative: before it).
    pub t: f64,
    pub rss_kib: u64,
    pub fds: u64,
    /// `governor_runtime_tasks`.
    pub tasks: u64,
    /// Sum of `governor_dependency_in_flight`: live leases.
    pub in_flight: u64,
    /// Sum of `governor_dependency_queued`: waiters.
    pub queued: u64,
    /// `governor_dependencies`.
    pub dependencies: u64,
}

/// Reads /proc for `pid` (before the scrape, so that the scrape's own
/// connection is not counted) and then scrapes `admin`.
pub async fn take(pid: u32, admin: SocketAddr, t: f64) -> Result<Sample, String> {
    let (rss_kib, _) = memory_kib(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("cannot read /proc/{pid}/fd: {e}"))?
        .count() as u64;
    let text = scrape(admin).await?;
    let gauges = Gauges::parse(&text);
    let need = |name: &str, v: Option<f64>| v.ok_or_else(|| format!("/metrics has no {name}"));
    Ok(Sample {
        t,
        rss_kib,
        fds,
        tasks: need("governor_runtime_tasks", gauges.tasks)? as u64,
        in_flight: gauges.in_flight as u64,
        queued: gauges.queued as u64,
        dependencies: need("governor_dependencies", gauges.dependencies)? as u64,
    })
}

/// GET /metrics over HTTP/1.0 (the server closes the connection after it).
pub async fn scrape(admin: SocketAddr) -> Result<String, String> {
    let fetch = async {
        let mut stream = TcpStream::connect(admin).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("GET http://{admin}/metrics took over 10 s"))?
        .map_err(|e| format!("GET http://{admin}/metrics: {e}"))?;
    let text = String::from_utf8_lossy(&body);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{admin}/metrics: no HTTP header"))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(format!(
            "GET http://{admin}/metrics: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    Ok(body.to_owned())
}

/// The gauges a sample needs, from Prometheus text.
#[derive(Debug, Default, PartialEq)]
struct Gauges {
    tasks: Option<f64>,
    dependencies: Option<f64>,
    in_flight: f64,
    queued: f64,
}

impl Gauges {
    fn parse(text: &str) -> Gauges {
        let mut g = Gauges::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "governor_runtime_tasks" => g.tasks = Some(value),
                "governor_dependencies" => g.dependencies = Some(value),
                "governor_dependency_in_flight" => g.in_flight += value,
                "governor_dependency_queued" => g.queued += value,
                _ => {}
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_per_dependency_gauges() {
        let text = "# HELP governor_dependency_in_flight x\n\
                    # TYPE governor_dependency_in_flight gauge\n\
                    governor_dependency_in_flight{dependency=\"a\"} 3\n\
                    governor_dependency_in_flight{dependency=\"b b\"} 4\n\
                    governor_dependency_queued{dependency=\"a\"} 2\n\
                    governor_dependency_queued_total 99\n\
                    governor_dependencies 7\n\
                    governor_runtime_tasks 41\n";
        assert_eq!(
            Gauges::parse(text),
            Gauges {
                tasks: Some(41.0),
                dependencies: Some(7.0),
                in_flight: 7.0,
                queued: 2.0,
            }
        );
        assert_eq!(Gauges::parse("").tasks, None);
    }
}
