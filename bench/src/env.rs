//! The machine, core pinning and per-process resource usage from /proc.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// What the results were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory,
            kernel,
        }
    }
}

/// Which cores the sidecar (and redis) and the load generator run on.
#[derive(Clone, Debug, Serialize)]
pub struct Pinning {
    /// `taskset -c LIST` for the sidecar processes, when pinned.
    pub server_cpus: Option<String>,
    /// The harness's own cores, when pinned.
    pub load_cpus: Option<String>,
    /// Worker threads of the load generator's runtime.
    pub load_threads: usize,
    /// How the pinning was done, or why it was not.
    pub note: String,
}

impl Pinning {
    /// Pins this process (before any thread exists, so every later thread
    /// inherits it) to all allowed cores but the first, which is left for
    /// the sidecar.
    pub fn apply(disabled: bool) -> Pinning {
        let allowed = allowed_cpus();
        let unpinned = |note: String| Pinning {
            server_cpus: None,
            load_cpus: None,
            load_threads: allowed.len().clamp(1, 4),
            note,
        };
        if disabled {
            return unpinned("not pinned (--no-pin)".into());
        }
        if allowed.len() < 2 {
            return unpinned(format!(
                "not pinned: only {} core(s) allowed, sidecar and load generator share it",
                allowed.len()
            ));
        }
        if !has_taskset() {
            return unpinned("not pinned: `taskset` (util-linux) is not installed".into());
        }
        let server = allowed[0].to_string();
        let load: Vec<String> = allowed[1..].iter().map(|c| c.to_string()).collect();
        let load = load.join(",");
        let pid = std::process::id().to_string();
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &load, &pid])
            .stdout(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Pinning {
                note: format!(
                    "pinned with taskset: sidecar/redis on CPU {server}, load generator on CPU {load}"
                ),
                load_threads: allowed.len() - 1,
                server_cpus: Some(server),
                load_cpus: Some(load),
            },
            other => unpinned(format!("not pinned: taskset failed ({other:?})")),
        }
    }

    /// The command to run `program` on the server cores.
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        match &self.server_cpus {
            Some(cpus) => {
                let mut c = tokio::process::Command::new("taskset");
                c.arg("-c").arg(cpus).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        }
    }
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// This process's allowed CPUs, from /proc/self/status.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .unwrap_or("");
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// Clock ticks per second, for /proc/PID/stat.
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// CPU seconds a process has used so far, all its threads (exited ones
/// too), user and system.
///
/// Read from the process's CPU-time clock (`clock_getcpuclockid`), which
/// counts in nanoseconds; `/proc/PID/stat` counts in clock ticks (10 ms at
/// the usual 100 Hz), and a quick-mode arm uses only about 15 of them a
/// repeat, so a tick either way moved a CPU ratio by several percent. The
/// ticks remain the fallback where the clock cannot be read.
pub fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    cpu_clock_seconds(pid).or_else(|| cpu_tick_seconds(pid, ticks))
}

fn cpu_clock_seconds(pid: u32) -> Option<f64> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    let clock = nix::time::clock_getcpuclockid(pid).ok()?;
    let now = clock.now().ok()?;
    Some(now.tv_sec() as f64 + now.tv_nsec() as f64 * 1e-9)
}

/// utime + stime from `/proc/PID/stat`, in seconds.
fn cpu_tick_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident memory of a process: (VmRSS, VmHWM) in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The 1, 5 and 15 minute load averages from `/proc/loadavg`, as written
/// there ("unknown" when unreadable): other work on a shared machine.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

/// The first line a program prints for `--version`, if it runs.
pub fn version_of(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        let ticks = clock_ticks();
        assert!(cpu_seconds(pid, ticks).is_some_and(|s| s >= 0.0));
        // The two readings of one process agree to within the ticks' grain
        // (and the work done between them).
        let busy = std::time::Instant::now();
        while busy.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        let clock = cpu_clock_seconds(pid).expect("own CPU clock");
        let tick = cpu_tick_seconds(pid, ticks).expect("own /proc stat");
        assert!(clock >= 0.03, "{clock}");
        assert!(
            (clock - tick).abs() < 3.0 / ticks + 0.01,
            "clock {clock} s, ticks {tick} s"
        );
        let (rss, hwm) = memory_kib(pid).expect("own /proc status");
        assert!(rss > 0 && hwm >= rss);
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn formats_the_date() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-01-01 00:00 UTC".len(), "{now}");
        assert!(now.starts_with("20"), "{now}");
    }
}
