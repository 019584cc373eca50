//! Real `redis-server` processes for the fleet tests: one standalone server
//! ([`RedisServer`]) or a three-node Redis Cluster ([`RedisCluster`]), each
//! on free loopback ports, without persistence, killed when dropped.
//!
//! Driven with the `redis-server` and `redis-cli` binaries on the PATH
//! (`scripts/test.sh` installs them).

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a server gets to answer PING, and a cluster to report
/// `cluster_state:ok` on every node.
pub const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `redis-cli` invocation may run.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound and released: another process could
/// take it in between, which the tests accept).
///
/// # Panics
///
/// If no port can be bound.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

/// `redis-cli -p PORT ARGS...`: its stdout, or `None` if it could not run,
/// failed or timed out.
pub async fn cli(port: u16, args: &[&str]) -> Option<String> {
    let run = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CLI_TIMEOUT, run).await {
        Ok(Ok(output)) if output.status.success() => {
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        }
        _ => None,
    }
}

/// Spawns `redis-server` on `port` with `extra` arguments, its files in
/// `dir`.
fn spawn_server(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn redis-server (is it on the PATH? scripts/test.sh installs it)")
}

/// Waits until `redis-cli -p port ping` answers PONG.
async fn wait_pong(port: u16, child: &mut Child) {
    let deadline = Instant::now() + REDIS_READY_TIMEOUT;
    loop {
        if cli(port, &["ping"])
            .await
            .is_some_and(|o| o.trim() == "PONG")
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("redis-server on port {port} exited before answering PING: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer PING within {REDIS_READY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs `child` and waits until it is gone (its port is free again).
async fn kill_child(child: &mut Child) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// One standalone `redis-server` on a free port, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server --port P --save "" --appendonly no --bind
    /// 127.0.0.1 --dir <tempdir>` on a free port and waits for PONG.
    ///
    /// # Panics
    ///
    /// If it cannot start or does not answer within [`REDIS_READY_TIMEOUT`].
    pub async fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("temporary directory for redis-server");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut child = spawn_server(self.port, self.dir.path(), &[]);
        wait_pong(self.port, &mut child).await;
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server.
    pub async fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port, args).await
    }

    /// SIGKILLs the server (no shutdown, no save) and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child).await;
        }
    }

    /// Whether a server process is running (started and not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server if it runs and starts a new, empty one on the same
    /// port (what a Redis restarted without persistence looks like).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub async fn restart_empty(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

/// A Redis Cluster of three masters without replicas, killed when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    ports: Vec<u16>,
    children: Vec<Child>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled yes` nodes on free ports (each with a
    /// free cluster bus port of its own), joins them with `redis-cli
    /// --cluster create ... --cluster-replicas 0 --cluster-yes` and waits
    /// until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    ///
    /// If a node does not start, the cluster cannot be created, or it is not
    /// ok within [`REDIS_READY_TIMEOUT`].
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temporary directory for the cluster");
        let mut ports = Vec::new();
        let mut bus_ports = Vec::new();
        // Distinct ports: hold every listener until all are picked.
        let mut held = Vec::new();
        while ports.len() < 3 {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            let port = listener.local_addr().unwrap().port();
            held.push(listener);
            let bus = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            bus_ports.push(bus.local_addr().unwrap().port());
            held.push(bus);
            ports.push(port);
        }
        drop(held);
        let mut children = Vec::new();
        for (&port, &bus) in ports.iter().zip(&bus_ports) {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let extra = [
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                conf.display().to_string(),
                "--cluster-node-timeout".to_owned(),
                "2000".to_owned(),
                "--cluster-port".to_owned(),
                bus.to_string(),
            ];
            let mut child = spawn_server(port, dir.path(), &extra);
            wait_pong(port, &mut child).await;
            children.push(child);
        }
        let cluster = RedisCluster {
            ports,
            children,
            _dir: dir,
        };
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(nodes.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        assert!(
            cli(cluster.ports[0], &create).await.is_some(),
            "redis-cli --cluster create {nodes:?} failed"
        );
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        for &port in &cluster.ports {
            loop {
                let info = cli(port, &["cluster", "info"]).await.unwrap_or_default();
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {port} not ok within {REDIS_READY_TIMEOUT:?}:\n{info}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        cluster
    }

    /// The nodes' client ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// `redis://127.0.0.1:P` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Panics
    ///
    /// If the node does not answer with a number.
    pub async fn keyslot(&self, key: &str) -> u16 {
        let out = cli(self.ports[0], &["cluster", "keyslot", key])
            .await
            .expect("CLUSTER KEYSLOT answers");
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("CLUSTER KEYSLOT {key}: {out:?}: {e}"))
    }

    /// The client port of the node that serves `slot`, from each node's own
    /// line (`myself`) of `CLUSTER NODES`.
    ///
    /// # Panics
    ///
    /// If no node claims it.
    pub async fn owner_of(&self, slot: u16) -> u16 {
        for &port in &self.ports {
            let nodes = cli(port, &["cluster", "nodes"]).await.unwrap_or_default();
            let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
                continue;
            };
            // "<id> <addr> <flags> <master> <ping> <pong> <epoch> <state> <slots>..."
            let serves = me.split_whitespace().skip(8).any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                match (from.parse::<u16>(), to.parse::<u16>()) {
                    (Ok(from), Ok(to)) => (from..=to).contains(&slot),
                    _ => false,
                }
            });
            if serves {
                return port;
            }
        }
        panic!("no cluster node serves slot {slot}")
    }

    /// The client port of the node that holds `key`.
    pub async fn node_of(&self, key: &str) -> u16 {
        let slot = self.keyslot(key).await;
        self.owner_of(slot).await
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}
