//! The production Redis topologies, each with real servers the test starts itself: a 3-node
//! Redis Cluster with a replica per primary (a manual failover and a `kill -9` of the channel's
//! primary mid-stream), a primary and replica watched by three Sentinels (the primary killed),
//! and a Redis that speaks only TLS and asks for a client certificate. `fulfilld serve` runs as
//! the built binary, two replicas each, against the sandbox.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pipeline::{Rig, ServeProcess};

#[path = "../support/redis_servers.rs"]
pub(crate) mod redis_servers;
use redis_servers::{OwnCluster, Server, base_args, cli, free_port, role, wait_until};

/// Each order Activated, each with a WHMCS order of its own, and every event's job recorded in
/// the store: completed, or (a job handed out again because its first run's end was not stored
/// through the failover) skipped because its Order was already Activated. Returns (events, jobs
/// recorded, WHMCS orders, jobs run twice).
async fn assert_each_once(
    rig: &Rig,
    orders: &[String],
    uuids: &[String],
) -> (usize, usize, usize, usize) {
    rig.assert_exactly_once(orders);
    let store = rig.store().await;
    let (mut recorded, mut again) = (0, 0);
    for uuid in uuids {
        let record = crate::pipeline::wait_record(&store, uuid).await;
        let rerun_of_done = record.outcome == "skipped"
            && record.deliveries > 1
            && record.message.contains("is Activated, not Activating");
        assert!(
            record.outcome == "completed" || rerun_of_done,
            "{uuid}: {record:?}"
        );
        recorded += 1;
        again += usize::from(record.deliveries > 1);
    }
    let whmcs: BTreeSet<String> = orders.iter().map(|o| rig.status(o).1).collect();
    (uuids.len(), recorded, whmcs.len(), again)
}

/// [`Rig::wait_activated`], with the replicas' logs when it fails.
async fn wait_activated(rig: &Rig, orders: &[String], hosts: &[&ServeProcess], limit: Duration) {
    let start = Instant::now();
    while orders.iter().any(|o| rig.status(o).0 != "Activated") {
        if start.elapsed() > limit {
            let pending: Vec<_> = orders
                .iter()
                .filter(|o| rig.status(o).0 != "Activated")
                .collect();
            panic!(
                "{} of {} orders not Activated after {limit:?}: {pending:?}; logs:\n{}",
                pending.len(),
                orders.len(),
                hosts
                    .iter()
                    .map(|h| h.log_text())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_leader(hosts: &[&ServeProcess]) {
    let start = Instant::now();
    loop {
        for host in hosts {
            if let Some(body) = host.health().await
                && body["subscription"]["role"] == "leader"
                && body["subscription"]["connected"] == true
            {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no replica became leader; logs:\n{}",
            hosts
                .iter()
                .map(|h| h.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two `serve` replicas on `rig` (with `settings` added to its environment), one of them leader.
async fn two_replicas(rig: &mut Rig, settings: &[(&str, &str)]) -> (ServeProcess, ServeProcess) {
    for (k, v) in settings {
        rig.env.insert((*k).to_owned(), (*v).to_owned());
    }
    let a = ServeProcess::start(rig, "replica-a", &[]);
    let b = ServeProcess::start(rig, "replica-b", &[]);
    wait_leader(&[&a, &b]).await;
    (a, b)
}

/// Publishes an event for each of `orders`, adding its EventUuid to `uuids`.
fn publish_all(rig: &Rig, orders: &[String], uuids: &mut Vec<String>) {
    for order in orders {
        uuids.push(rig.publish(order).0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_runs_the_pipeline_through_a_failover_and_a_killed_primary() {
    let mut cluster = OwnCluster::start().await;
    let mut rig = Rig::new().await.with_redis(&cluster.url());
    let (a, b) = two_replicas(&mut rig, &[("FULFILLD_REDIS_MODE", "cluster")]).await;

    let orders = rig.orders(1, 30);
    let mut uuids = Vec::new();
    publish_all(&rig, &orders[..10], &mut uuids);
    rig.wait_activated(&orders[..10], Duration::from_secs(60))
        .await;

    // A manual failover of the channel's primary while events arrive.
    let cursor = format!("sf:pe:replay:{}", rig.channel);
    let (primary, replica) = cluster.owner_of(&cursor);
    publish_all(&rig, &orders[10..15], &mut uuids);
    assert!(cli(replica, &["CLUSTER", "FAILOVER"]).contains("OK"));
    wait_until("the replica to take over", Duration::from_secs(30), || {
        role(replica) == "master"
    })
    .await;
    publish_all(&rig, &orders[15..20], &mut uuids);
    rig.wait_activated(&orders[..20], Duration::from_secs(90))
        .await;

    // The new primary killed (-9) while events arrive: the old one, now its replica, takes over
    // once the cluster sees it fail (node timeout 2 s).
    publish_all(&rig, &orders[20..25], &mut uuids);
    cluster.kill9(replica);
    wait_until(
        "the old primary to be promoted",
        Duration::from_secs(60),
        || role(primary) == "master",
    )
    .await;
    cluster.wait_ok().await;
    publish_all(&rig, &orders[25..], &mut uuids);
    wait_activated(&rig, &orders, &[&a, &b], Duration::from_secs(120)).await;
    let (events, jobs, whmcs, again) = assert_each_once(&rig, &orders, &uuids).await;
    assert_eq!((events, jobs, whmcs), (30, 30, 30));
    eprintln!(
        "cluster: {events} events, {jobs} jobs recorded ({again} handed out twice), {whmcs} WHMCS orders"
    );
    // The job keys of the channel stayed in one slot, on the primary serving the cursor.
    assert_eq!(cluster.primary_of(&cursor), primary);
    drop((a, b));
}

/// A primary, its replica and three Sentinels watching them as `mymaster`.
struct OwnSentinel {
    primary: Server,
    replica: Server,
    sentinels: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl OwnSentinel {
    async fn start() -> OwnSentinel {
        let dir = tempfile::tempdir().unwrap();
        let (p, r) = (free_port(), free_port());
        let node = |port: u16| {
            let d = dir.path().join(port.to_string());
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let (pd, rd) = (node(p), node(r));
        let primary = Server::start(&base_args(p, &pd), p, &pd).await;
        let mut args = base_args(r, &rd);
        args.extend(["--replicaof", "127.0.0.1", &p.to_string()].map(str::to_owned));
        let replica = Server::start(&args, r, &rd).await;
        wait_until("the replica to sync", Duration::from_secs(30), || {
            cli(r, &["INFO", "replication"]).contains("master_link_status:up")
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let d = node(port);
            let conf = d.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {p} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    d.display()
                ),
            )
            .unwrap();
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(Server::start(&args, port, &d).await);
        }
        // Each Sentinel knows the replica and the two other Sentinels (hello messages).
        let ports: Vec<u16> = sentinels.iter().map(|s| s.port).collect();
        wait_until(
            "the Sentinels to see each other",
            Duration::from_secs(60),
            || {
                ports.iter().all(|s| {
                    let master = cli(*s, &["SENTINEL", "MASTER", "mymaster"]);
                    let field = |name: &str| {
                        let lines: Vec<&str> = master.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    };
                    field("num-slaves") == "1" && field("num-other-sentinels") == "2"
                })
            },
        )
        .await;
        OwnSentinel {
            primary,
            replica,
            sentinels,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn named_primary(&self) -> Option<u16> {
        let answer = cli(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_sentinel_the_pipeline_follows_the_primary_after_it_is_killed() {
    let mut sentinel = OwnSentinel::start().await;
    let mut rig = Rig::new().await.with_redis(&sentinel.url());
    let settings = [
        ("FULFILLD_REDIS_MODE", "sentinel"),
        ("FULFILLD_REDIS_SENTINEL_MASTER", "mymaster"),
    ];
    let (a, b) = two_replicas(&mut rig, &settings).await;

    let orders = rig.orders(1, 16);
    let mut uuids = Vec::new();
    publish_all(&rig, &orders[..8], &mut uuids);
    rig.wait_activated(&orders[..8], Duration::from_secs(60))
        .await;
    assert_eq!(sentinel.named_primary(), Some(sentinel.primary.port));

    // The primary killed (-9) while events arrive; the Sentinels promote the replica.
    publish_all(&rig, &orders[8..12], &mut uuids);
    sentinel.primary.kill9();
    let replica = sentinel.replica.port;
    wait_until(
        "the Sentinels to promote the replica",
        Duration::from_secs(60),
        || sentinel.named_primary() == Some(replica),
    )
    .await;
    publish_all(&rig, &orders[12..], &mut uuids);
    wait_activated(&rig, &orders, &[&a, &b], Duration::from_secs(120)).await;
    let (events, jobs, whmcs, again) = assert_each_once(&rig, &orders, &uuids).await;
    assert_eq!((events, jobs, whmcs), (16, 16, 16));
    eprintln!(
        "sentinel: {events} events, {jobs} jobs recorded ({again} handed out twice), {whmcs} WHMCS orders"
    );
    let logs = format!("{}{}", a.log_text(), b.log_text());
    assert!(
        logs.contains("lost the Redis primary; asking the Sentinels for it again"),
        "no replica logged finding the primary again:\n{logs}"
    );
    drop((a, b));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn write_pki(dir: &Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fulfilld test Redis CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        "redis",
    );
    let (client_cert, client_key) = leaf(vec!["fulfilld".to_owned()], "fulfilld");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_tls_with_a_client_certificate_the_pipeline_runs_and_bad_trust_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = write_pki(dir.path());
    let port = free_port();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut args = base_args(0, &data);
    let s = |p: &PathBuf| p.display().to_string();
    args.extend([
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        s(&pki.server_cert),
        "--tls-key-file".to_owned(),
        s(&pki.server_key),
        "--tls-ca-cert-file".to_owned(),
        s(&pki.ca),
        "--tls-auth-clients".to_owned(),
        "yes".to_owned(),
    ]);
    let _redis = Server::start(&args, port, &data).await;

    let mut rig = Rig::new()
        .await
        .with_redis(&format!("rediss://127.0.0.1:{port}"));
    rig.env.insert("FULFILLD_REDIS_CA_FILE".into(), s(&pki.ca));
    rig.env.insert(
        "FULFILLD_REDIS_CLIENT_CERT_FILE".into(),
        s(&pki.client_cert),
    );
    rig.env
        .insert("FULFILLD_REDIS_CLIENT_KEY_FILE".into(), s(&pki.client_key));
    let a = ServeProcess::start(&rig, "replica-a", &[]);
    let b = ServeProcess::start(&rig, "replica-b", &[]);
    wait_leader(&[&a, &b]).await;
    let orders = rig.orders(1, 6);
    let uuids: Vec<String> = orders.iter().map(|o| rig.publish(o).0).collect();
    rig.wait_activated(&orders, Duration::from_secs(60)).await;
    let (events, jobs, whmcs, again) = assert_each_once(&rig, &orders, &uuids).await;
    assert_eq!((events, jobs, whmcs), (6, 6, 6));
    eprintln!(
        "tls: {events} events, {jobs} jobs recorded ({again} handed out twice), {whmcs} WHMCS orders"
    );
    drop((a, b));

    // Without the CA the server's certificate is not trusted; without the client certificate
    // the server refuses the handshake. Either way serve stops at once, naming REDIS_URL.
    for (name, unset) in [
        ("no-ca", "FULFILLD_REDIS_CA_FILE"),
        ("no-client-cert", "FULFILLD_REDIS_CLIENT_CERT_FILE"),
    ] {
        let mut env = rig.env.clone();
        env.remove(unset);
        if unset == "FULFILLD_REDIS_CLIENT_CERT_FILE" {
            env.remove("FULFILLD_REDIS_CLIENT_KEY_FILE");
        }
        let output = Command::new(env!("CARGO_BIN_EXE_fulfilld"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {text}");
        assert!(
            text.contains("REDIS_URL: cannot use the Redis store"),
            "{name}: {text}"
        );
    }
}

/// With its only replica gone, a Sentinel primary still takes every write: the host waits
/// 500 ms for a replica once, says so (WARN), and does not wait again for 5 s, so the Orders
/// run at the primary's pace and the WARN comes at most once per 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_replica_the_writes_go_on_with_one_warning_per_five_seconds() {
    let mut sentinel = OwnSentinel::start().await;
    sentinel.replica.kill9();
    let mut rig = Rig::new().await.with_redis(&sentinel.url());
    rig.env
        .insert("FULFILLD_REDIS_MODE".into(), "sentinel".into());
    rig.env
        .insert("FULFILLD_REDIS_SENTINEL_MASTER".into(), "mymaster".into());
    let started = Instant::now();
    let host = ServeProcess::start(&rig, "replica-a", &[]);
    wait_leader(&[&host]).await;
    let orders = rig.orders(1, 8);
    let mut uuids = Vec::new();
    publish_all(&rig, &orders, &mut uuids);
    wait_activated(&rig, &orders, &[&host], Duration::from_secs(120)).await;
    let (events, jobs, whmcs, _) = assert_each_once(&rig, &orders, &uuids).await;
    assert_eq!((events, jobs, whmcs), (8, 8, 8));

    let log = host.log_text();
    let warnings = log
        .matches("no Redis replica confirmed the write within 500 ms")
        .count();
    let allowed = 1 + started.elapsed().as_secs() / 5;
    assert!(
        (1..=allowed as usize).contains(&warnings),
        "{warnings} warnings in {:?} (at most {allowed}):\n{log}",
        started.elapsed()
    );
    // The primary never moved: no failover was asked for.
    assert_eq!(sentinel.named_primary(), Some(sentinel.primary.port));
}
