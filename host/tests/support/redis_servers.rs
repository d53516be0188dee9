//! `redis-server`s a test or a benchmark starts itself: one server, and a 3-primary Redis Cluster
//! with a replica per primary. Shared by `tests/integration/topology.rs` and `benches/pipeline.rs`
//! (each includes this file with `#[path]`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    pub async fn start(args: &[String], port: u16, dir: &Path) -> Server {
        let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (.ci/run installs it)");
        wait_listening(port).await;
        Server {
            port,
            child: Some(child),
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `redis-cli -p <port> <args>`: its output (stdout).
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli comes with redis-server");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect()
}

/// Waits (up to 10 s) until something listens on `port` of loopback.
pub async fn wait_listening(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `check` every 100 ms; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
pub struct NodeView {
    pub port: u16,
    pub id: String,
    pub flags: String,
    /// The id of the primary a replica follows (`-` for a primary).
    pub primary: String,
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    /// A live primary serving `slot`.
    fn serves(&self, slot: u16) -> bool {
        self.flags.contains("master")
            && !self.flags.contains("fail")
            && self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// A 3-primary, 3-replica Redis Cluster on loopback (node timeout 2 s, append-only files on).
pub struct OwnCluster {
    nodes: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    pub async fn start() -> OwnCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut args = base_args(port, &node_dir);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(str::to_owned),
            );
            nodes.push(Server::start(&args, port, &node_dir).await);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = OwnCluster { nodes, _dir: dir };
        cluster.wait_ok().await;
        cluster
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// Seeds for the host: the three first nodes.
    pub fn url(&self) -> String {
        self.nodes[..3]
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every live node says the cluster is ok and agrees on who serves every slot.
    pub async fn wait_ok(&self) {
        let ports = self.ports();
        wait_until("the cluster to be ok", Duration::from_secs(60), || {
            ports
                .iter()
                .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        })
        .await;
    }

    /// `CLUSTER NODES` of a live node, one [`NodeView`] per node.
    pub fn nodes_view(&self) -> Vec<NodeView> {
        let port = self.ports()[0];
        cli(port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let parts: Vec<&str> = line.split_whitespace().collect();
                if parts.len() < 8 {
                    return None;
                }
                let node_port: u16 = parts[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let slots = parts[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some(NodeView {
                    port: node_port,
                    id: parts[0].to_owned(),
                    flags: parts[2].to_owned(),
                    primary: parts[3].to_owned(),
                    slots,
                })
            })
            .collect()
    }

    /// The primary serving `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        let slot: u16 = cli(self.ports()[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let view = self.nodes_view();
        view.iter()
            .find(|n| n.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {view:?}"))
            .port
    }

    /// The primary serving `key`'s slot and its replica (ports).
    pub fn owner_of(&self, key: &str) -> (u16, u16) {
        let slot: u16 = cli(self.ports()[0], &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let view = self.nodes_view();
        let primary = view
            .iter()
            .find(|n| n.serves(slot))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {view:?}"));
        let replica = view
            .iter()
            .find(|n| n.flags.contains("slave") && n.primary == primary.id)
            .unwrap_or_else(|| panic!("the primary of slot {slot} has no replica: {view:?}"));
        (primary.port, replica.port)
    }

    pub fn kill9(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill9();
        }
    }
}

/// `ROLE` of the server on `port`: `master`, `slave`, or empty when it does not answer.
pub fn role(port: u16) -> String {
    cli(port, &["ROLE"]).lines().next().unwrap_or("").to_owned()
}
