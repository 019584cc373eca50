//! Harness for end-to-end tests: starts the real `governor` binary on a free
//! port and hands out gRPC clients connected to it.
//!
//! The binary is taken from `$GOVERNOR_BIN`, or else from the workspace's
//! `target/debug/governor` (build it first: `cargo build -p rate-governor`).
//!
//! ```no_run
//! use governor_integration_tests::GovernorProcess;
//!
//! # async fn demo() {
//! let gov = GovernorProcess::start("[dependencies.payments]\nmax_concurrency = 1\n").await;
//! let mut client = gov.governor_client().await;
//! # let _ = &mut client;
//! # }
//! ```

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use rate_governor_proto::v1::{
    Outcome, ReleaseRequest, governor_admin_client::GovernorAdminClient,
    governor_client::GovernorClient,
};
use tempfile::NamedTempFile;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
    sync::oneshot,
};
use tonic::transport::Channel;

pub use nix::sys::signal::Signal;
pub mod redis;

/// How long [`GovernorProcess::start`] waits for the `governor ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`run_governor`] lets a one-shot command run before it fails the test.
pub const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(20);

/// The governor binary under test: `$GOVERNOR_BIN`, or the workspace's
/// `target/debug/governor`.
///
/// # Panics
///
/// If the file does not exist, with a message that says how to build it.
pub fn governor_bin() -> PathBuf {
    let path = match std::env::var_os("GOVERNOR_BIN") {
        Some(bin) if !bin.is_empty() => PathBuf::from(bin),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/debug/governor"
        )),
    };
    assert!(
        path.is_file(),
        "governor binary not found at {}: build it with `cargo build -p rate-governor` \
         or point GOVERNOR_BIN at one",
        path.display()
    );
    path
}

/// Writes `toml` to a fresh temporary file, deleted when the handle drops.
///
/// # Panics
///
/// On I/O errors.
pub fn write_config(toml: &str) -> NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("governor-test-")
        .suffix(".toml")
        .tempfile()
        .expect("create temporary config file");
    std::io::Write::write_all(&mut file, toml.as_bytes()).expect("write temporary config file");
    file
}

/// Runs the governor binary once with `args` (e.g. `["--check-config", path]`)
/// and returns its exit status and captured output.
///
/// # Panics
///
/// If the binary is missing, cannot be spawned, or runs longer than
/// [`ONE_SHOT_TIMEOUT`].
/// `governor --check-config` on a file holding `toml`: its exit code and
/// what it wrote to stderr.
pub async fn check_config(toml: &str) -> (Option<i32>, String) {
    let file = write_config(toml);
    let output = run_governor(&[
        std::ffi::OsStr::new("--check-config"),
        file.path().as_os_str(),
    ])
    .await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub async fn run_governor<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let bin = governor_bin();
    let child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    tokio::time::timeout(ONE_SHOT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`governor` did not exit within {ONE_SHOT_TIMEOUT:?}"))
        .expect("wait for governor")
}

/// A running governor sidecar, killed when dropped.
#[derive(Debug)]
pub struct GovernorProcess {
    child: Child,
    ready_line: String,
    grpc_addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    config: NamedTempFile,
}

impl GovernorProcess {
    /// Starts the governor with `config_toml` as its config file, listening on
    /// `127.0.0.1:0`, and waits until it reports ready.
    ///
    /// # Panics
    ///
    /// If the binary is missing, exits early, or is not ready within
    /// [`READY_TIMEOUT`]; the message includes its stderr.
    pub async fn start(config_toml: &str) -> Self {
        Self::start_with_args(config_toml, &[] as &[&str]).await
    }

    /// Like [`start`](Self::start), with `extra_args` appended after
    /// `--config FILE --listen 127.0.0.1:0` (e.g. `["--uds", path]`). The
    /// admin listener is on `127.0.0.1:0` unless `extra_args` sets
    /// `--admin-listen`, so that parallel sidecars never meet on its
    /// default port.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_with_args<S: AsRef<std::ffi::OsStr>>(
        config_toml: &str,
        extra_args: &[S],
    ) -> Self {
        Self::start_listening(config_toml, "127.0.0.1:0", extra_args).await
    }

    /// Like [`start_with_args`](Self::start_with_args), with the gRPC
    /// listener on `listen` (`--listen`) instead of `127.0.0.1:0`.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn start_listening<S: AsRef<std::ffi::OsStr>>(
        config_toml: &str,
        listen: &str,
        extra_args: &[S],
    ) -> Self {
        let bin = governor_bin();
        let config = write_config(config_toml);
        let sets_admin = extra_args.iter().any(|a| a.as_ref() == "--admin-listen");
        let admin: &[&str] = if sets_admin {
            &[]
        } else {
            &["--admin-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(&bin)
            .arg("--config")
            .arg(config.path())
            .args(["--listen", listen])
            .args(admin)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_done = collect_lines(child.stderr.take().expect("piped stderr"), {
            let stderr = stderr.clone();
            move |line| stderr.lock().unwrap().push_str(line)
        });

        let stdout = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        collect_lines(child.stdout.take().expect("piped stdout"), {
            let stdout = stdout.clone();
            move |line| {
                stdout.lock().unwrap().push_str(line);
                if line.starts_with("governor ready ") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(line.trim_end().to_owned());
                    }
                }
            }
        });

        let ready_line = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => line,
            outcome => {
                // Stdout closed (the process exited) or the wait timed out:
                // kill it, let stderr drain, and show everything we have.
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), stderr_done).await;
                let why = match outcome {
                    Err(_) => format!("was not ready within {READY_TIMEOUT:?}"),
                    Ok(_) => format!("exited before it was ready ({status:?})"),
                };
                panic!(
                    "governor {why}\n--- stdout ---\n{}--- stderr ---\n{}",
                    stdout.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
        };
        let grpc_addr = ready_field(&ready_line, "grpc")
            .unwrap_or_else(|| panic!("no grpc= in ready line {ready_line:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad grpc= address in {ready_line:?}: {e}"));

        Self {
            child,
            ready_line,
            grpc_addr,
            stdout,
            stderr,
            config,
        }
    }

    /// The gRPC listen address from the ready line.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The gRPC endpoint URI, `http://ADDR`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The Unix socket path from the ready line (`uds=`), if it serves one.
    pub fn uds_path(&self) -> Option<PathBuf> {
        ready_field(&self.ready_line, "uds").map(PathBuf::from)
    }

    /// The health-only listener's address from the ready line (`health=`),
    /// if it serves one.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        ready_field(&self.ready_line, "health").and_then(|a| a.parse().ok())
    }

    /// The admin HTTP address from the ready line (`admin=`), if it serves one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        ready_field(&self.ready_line, "admin").and_then(|a| a.parse().ok())
    }

    /// The whole `governor ready ...` line.
    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// The path of the config file the process was started with.
    pub fn config_path(&self) -> &std::path::Path {
        self.config.path()
    }

    /// The child's process id, `None` once it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A tonic channel connected to the gRPC endpoint, for any client type
    /// (health, reflection, ...).
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .expect("valid endpoint")
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.endpoint()))
    }

    /// A connected `governor.v1.Governor` client.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn governor_client(&self) -> GovernorClient<Channel> {
        GovernorClient::new(self.channel().await)
    }

    /// A connected `governor.v1.GovernorAdmin` client.
    ///
    /// # Panics
    ///
    /// If the connection fails.
    pub async fn admin_client(&self) -> GovernorAdminClient<Channel> {
        GovernorAdminClient::new(self.channel().await)
    }

    /// Sends `sig` (e.g. [`Signal::SIGTERM`]) to the process.
    ///
    /// # Panics
    ///
    /// If the process has already been reaped or the signal cannot be sent.
    pub fn signal(&self, sig: Signal) {
        let pid = self.child.id().expect("governor already exited");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits in i32"));
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("kill({pid}, {sig}): {e}"));
    }

    /// Waits for the process to exit and returns its status.
    ///
    /// # Panics
    ///
    /// If it is still running after `timeout`; the message includes its stderr.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for governor"),
            Err(_) => panic!(
                "governor still running after {timeout:?}\n--- stderr ---\n{}",
                self.stderr_so_far()
            ),
        }
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything the process wrote to stdout so far (the ready line included).
    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
}

impl Drop for GovernorProcess {
    /// Kills the process; if the test is failing, prints its stderr first.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- governor stderr ({}) ---\n{}",
                self.ready_line,
                self.stderr_so_far()
            );
        }
        let _ = self.child.start_kill();
    }
}

/// Reads `reader` line by line on a task, handing each line (with its
/// newline) to `sink`; the returned handle completes at end of stream.
fn collect_lines<R, F>(reader: R, mut sink: F) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    F: FnMut(&str) + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => sink(&String::from_utf8_lossy(&line)),
            }
        }
    })
}

/// The value of `key=VALUE` in the ready line.
fn ready_field<'a>(ready_line: &'a str, key: &str) -> Option<&'a str> {
    ready_line
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// The body of an HTTP/1.1 GET on the admin listener; the answer must be a
/// 200.
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: governor\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// The value of the series `name{labels}` in a Prometheus text exposition.
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Releases `lease_id` with outcome SUCCESS; it must have been live.
pub async fn release(client: &mut GovernorClient<Channel>, lease_id: &str) {
    let released = client
        .release(ReleaseRequest {
            lease_id: lease_id.into(),
            outcome: Outcome::Success as i32,
            latency: None,
        })
        .await
        .expect("Release answers")
        .into_inner();
    assert!(released.released);
}

#[cfg(test)]
mod tests {
    use super::ready_field;

    #[test]
    fn parses_ready_line_fields() {
        let line = "governor ready grpc=127.0.0.1:4321 uds=/tmp/g.sock admin=127.0.0.1:9464";
        assert_eq!(ready_field(line, "grpc"), Some("127.0.0.1:4321"));
        assert_eq!(ready_field(line, "uds"), Some("/tmp/g.sock"));
        assert_eq!(ready_field(line, "admin"), Some("127.0.0.1:9464"));
        assert_eq!(ready_field("governor ready grpc=127.0.0.1:1", "uds"), None);
    }
}
