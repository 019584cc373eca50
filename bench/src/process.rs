//! The processes the harness starts: governor sidecars and a redis-server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::env::{Pinning, cpu_seconds, memory_kib};

const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    pub pid: u32,
    stderr_file: PathBuf,
}

impl Process {
    pub fn cpu_seconds(&self, ticks: f64) -> f64 {
        cpu_seconds(self.pid, ticks).unwrap_or(0.0)
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.pid).unwrap_or((0, 0))
    }

    /// The last lines the process wrote to stderr, for error messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_file)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) -> Result<(), String> {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("{} exited with {status}", self.name)),
            Ok(Err(e)) => Err(format!("waiting for {}: {e}", self.name)),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(format!(
                    "{} did not exit within {grace:?} of SIGTERM",
                    self.name
                ))
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A running governor sidecar.
#[derive(Debug)]
pub struct Governor {
    pub process: Process,
    pub grpc: SocketAddr,
    pub uds: PathBuf,
    /// The HTTP admin listener (/metrics), when started with one.
    pub admin: Option<SocketAddr>,
}

impl Governor {
    /// Starts `bin` with `config` on `127.0.0.1:0` and a Unix socket in `dir`,
    /// and waits for its `governor ready` line.
    pub async fn start(
        bin: &Path,
        name: &str,
        config: &str,
        env: &[(&str, String)],
        dir: &Path,
        pinning: &Pinning,
    ) -> Result<Governor, String> {
        Governor::launch(bin, name, config, env, dir, pinning, "off").await
    }

    /// [`Governor::start`] with the HTTP admin listener (/metrics) on
    /// `127.0.0.1:0` too.
    pub async fn start_with_admin(
        bin: &Path,
        name: &str,
        config: &str,
        env: &[(&str, String)],
        dir: &Path,
        pinning: &Pinning,
    ) -> Result<Governor, String> {
        Governor::launch(bin, name, config, env, dir, pinning, "127.0.0.1:0").await
    }

    async fn launch(
        bin: &Path,
        name: &str,
        config: &str,
        env: &[(&str, String)],
        dir: &Path,
        pinning: &Pinning,
        admin_listen: &str,
    ) -> Result<Governor, String> {
        if !bin.is_file() {
            return Err(format!(
                "governor binary {} is missing: build it with `cargo build --release -p rate-governor --bin governor`, or pass --governor-bin / GOVERNOR_BIN",
                bin.display()
            ));
        }
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;
        let uds = dir.join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&uds);
        let stderr_file = dir.join(format!("{name}.stderr"));
        let stderr = std::fs::File::create(&stderr_file).map_err(|e| e.to_string())?;
        let mut command = pinning.command(bin);
        command
            .arg("--config")
            .arg(&config_path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                admin_listen,
                "--uds",
            ])
            .arg(&uds)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let pid = child.id().ok_or("governor exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let process = Process {
            name: name.to_owned(),
            child,
            pid,
            stderr_file,
        };
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("governor ready ") {
                    return Some(line);
                }
            }
            None
        })
        .await;
        let line = match ready {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(format!(
                    "governor {name} exited before it was ready; stderr:\n{}",
                    process.stderr_tail()
                ));
            }
            Err(_) => {
                return Err(format!(
                    "governor {name} was not ready within {READY_TIMEOUT:?}; stderr:\n{}",
                    process.stderr_tail()
                ));
            }
        };
        // Keep draining stdout so the sidecar never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .map(str::to_owned)
        };
        let grpc = field("grpc")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no grpc=ADDR in ready line {line:?}"))?;
        let uds = field("uds")
            .map(PathBuf::from)
            .ok_or_else(|| format!("no uds= in {line:?}"))?;
        let admin = match admin_listen {
            "off" => None,
            _ => Some(
                field("admin")
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| format!("no admin=ADDR in ready line {line:?}"))?,
            ),
        };
        Ok(Governor {
            process,
            grpc,
            uds,
            admin,
        })
    }

    pub async fn tcp_channel(&self) -> Result<Channel, String> {
        tcp_channel(self.grpc).await
    }
}

pub async fn tcp_channel(addr: SocketAddr) -> Result<Channel, String> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

pub async fn uds_channel(path: &Path) -> Result<Channel, String> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("connect unix:{shown}: {e}"))
}

/// A redis-server on a free loopback port and a Unix socket, without persistence.
#[derive(Debug)]
pub struct Redis {
    pub process: Process,
    pub port: u16,
    pub socket: PathBuf,
    pub version: String,
}

impl Redis {
    pub async fn start(program: &str, dir: &Path, pinning: &Pinning) -> Result<Redis, String> {
        let program = find_program(program).ok_or_else(|| {
            format!("{program} not found (Debian: apt-get install -y redis-server)")
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let socket = dir.join("redis.sock");
        let stderr_file = dir.join("redis.log");
        let log = std::fs::File::create(&stderr_file).map_err(|e| e.to_string())?;
        let mut command = pinning.command(&program);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", program.display()))?;
        let pid = child.id().ok_or("redis-server exited at once")?;
        let process = Process {
            name: "redis-server".into(),
            child,
            pid,
            stderr_file,
        };
        let client =
            redis::Client::open(format!("redis://127.0.0.1:{port}/")).map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let version = loop {
            let attempt = async {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await?;
                Ok::<_, redis::RedisError>(info)
            };
            match attempt.await {
                Ok(info) if socket.exists() => {
                    break info
                        .lines()
                        .find_map(|l| l.strip_prefix("redis_version:"))
                        .unwrap_or("unknown")
                        .trim()
                        .to_owned();
                }
                Ok(_) => {}
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(format!(
                        "redis-server not ready within {READY_TIMEOUT:?}: {e}\n{}",
                        process.stderr_tail()
                    ));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Redis {
            process,
            port,
            socket,
            version,
        })
    }
}

/// `program` itself if it is a path, else the first match on PATH.
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}
