//! Process metrics under their standard names (those of the official
//! Prometheus clients), read from Linux's `/proc/self` on every scrape. On
//! other systems, or when a file cannot be read, the affected metrics are
//! left out rather than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of the times in `/proc/*/stat`. Linux reports them
/// in USER_HZ, which is 100 on every architecture it supports (the Go
/// client's procfs makes the same assumption).
const USER_HZ: f64 = 100.0;

/// Writes the `process_*` metrics of this process.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of the process's figures.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reading {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

impl Reading {
    pub(crate) fn now() -> Reading {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let stat = read("/proc/self/stat").and_then(|text| parse_stat(&text));
        let status = read("/proc/self/status");
        let kib = |key| status.as_deref().and_then(|s| status_kib(s, key));
        let boot_time = read("/proc/stat").and_then(|text| boot_time(&text));
        Reading {
            cpu_seconds: stat.map(|s| s.cpu_ticks as f64 / USER_HZ),
            resident_bytes: kib("VmRSS:").map(|k| k * 1024.0),
            virtual_bytes: kib("VmSize:").map(|k| k * 1024.0),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as f64),
            max_fds: read("/proc/self/limits").and_then(|text| max_open_files(&text)),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot + s.start_ticks as f64 / USER_HZ),
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reading = Reading::now();
        if let Some(seconds) = reading.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                counter.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                reading.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                reading.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                reading.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                reading.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                reading.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        // Scrapes are served on the runtime; outside one (a unit test) the
        // series is left out. A count that only grows is a task leak.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let gauge = ConstGauge::new(handle.metrics().num_alive_tasks() as i64);
            gauge.encode(encoder.encode_descriptor(
                "governor_runtime_tasks",
                "Tasks alive on the sidecar's tokio runtime.",
                None,
                gauge.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
}

/// utime + stime and starttime from `/proc/PID/stat` (fields 14, 15 and 22).
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first one after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
    })
}

/// A `Key:   123 kB` line of `/proc/PID/status`, in KiB.
fn status_kib(text: &str, key: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` of `/proc/stat`: when the system booted, in Unix seconds.
fn boot_time(text: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with("btime "))?;
    line["btime ".len()..].trim().parse().ok()
}

/// The soft limit of "Max open files" in `/proc/PID/limits`.
fn max_open_files(text: &str) -> Option<f64> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return None;
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_past_a_command_name_with_spaces() {
        let line = "4242 (gov (x) y) S 1 4242 4242 0 -1 4194560 1200 0 3 0 \
                    250 75 0 0 20 0 9 0 123456 31457280 2048 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 325,
                start_ticks: 123456
            })
        );
        assert_eq!(parse_stat("4242 (gov) S 1"), None);
    }

    #[test]
    fn parses_status_limits_and_boot_time() {
        let status = "Name:\tgovernor\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(2048.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(123456.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764580000\n"),
            Some(1764580000.0)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let reading = Reading::now();
        assert!(reading.resident_bytes.unwrap() > 0.0);
        assert!(reading.virtual_bytes.unwrap() >= reading.resident_bytes.unwrap());
        assert!(reading.open_fds.unwrap() >= 3.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = reading.start_time_seconds.unwrap();
        // The test process started within the last day, and not in the future
        // (USER_HZ rounding is 10 ms; btime is whole seconds).
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started} vs {now}"
        );
        assert!(reading.cpu_seconds.is_some());
    }

    fn runtime_tasks(collector: ProcessCollector) -> Option<i64> {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("governor_runtime_tasks "))
            .map(|v| v.parse().unwrap())
    }

    #[tokio::test(flavor = "current_thread")]
    async fn counts_the_tasks_alive_on_the_runtime() {
        let before = runtime_tasks(ProcessCollector).unwrap();
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(std::future::pending::<()>()))
            .collect();
        assert_eq!(runtime_tasks(ProcessCollector), Some(before + 3));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(runtime_tasks(ProcessCollector), Some(before));
    }

    #[test]
    fn leaves_the_task_count_out_outside_a_runtime() {
        assert_eq!(runtime_tasks(ProcessCollector), None);
    }
}
