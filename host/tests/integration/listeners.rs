//! The host's two listeners (`/health` + `/metrics`, and the admin API) over real sockets: a
//! client that never finishes its request headers is disconnected, connections beyond a
//! listener's limit are closed until others go, and an admin request that outlasts
//! `FULFILLD_ADMIN_REQUEST_TIMEOUT_MS` is answered 408. No assertion is about timing: the short
//! limits are settings, and waits only bound how long a broken host can hang a test.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::pipeline::Rig;

const TOKEN: &str = "admin-token-for-the-listener-tests";

/// Longest any single step may hang before the test fails (not a measured limit).
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends `bytes` on a new connection, then reads until the server closes it; what it answered.
async fn send_and_read(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server that closed the connection at once may make the write fail: that is an answer.
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream).await
}

async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    match tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await {
        Ok(_) => answer, // EOF, or reset by the server: either way closed
        Err(_) => panic!(
            "the server kept the connection open; it sent {:?}",
            String::from_utf8_lossy(&answer)
        ),
    }
}

/// A complete GET of `path` that asks the server to close the connection after answering.
fn get_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Polls `path` until it answers 200.
async fn wait_answered(addr: SocketAddr, path: &str) {
    let start = Instant::now();
    loop {
        let answer = send_and_read(addr, &get_request(addr, path)).await;
        if answer.starts_with(b"HTTP/1.1 200") {
            return;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{addr}{path} never answered 200; last: {:?}",
            String::from_utf8_lossy(&answer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn host(rig: &Rig, extra: &[(&str, &str)]) -> fulfilld::pipeline::Host {
    let registry_dir = rig._dir.path().join("registry").display().to_string();
    let mut settings = vec![
        ("FULFILLD_REGISTRY_DIR", registry_dir.as_str()),
        ("FULFILLD_ADMIN_TOKEN", TOKEN),
    ];
    settings.extend_from_slice(extra);
    rig.host(&settings).await
}

/// Slowloris on both listeners: half a request line, or nothing at all, and the connection is
/// closed without an answer once FULFILLD_HEADER_READ_TIMEOUT_MS passes; other clients are
/// answered meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let rig = Rig::new().await;
    let host = host(&rig, &[("FULFILLD_HEADER_READ_TIMEOUT_MS", "300")]).await;
    let admin = host.admin_addr().unwrap();
    for (addr, path) in [(host.http_addr(), "/metrics"), (admin, "/admin/components")] {
        let mut half_line = TcpStream::connect(addr).await.unwrap();
        half_line.write_all(b"GET /health HT").await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half_headers = TcpStream::connect(addr).await.unwrap();
        half_headers
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .await
            .unwrap();
        // While they dawdle, others are served.
        wait_answered(addr, path).await;
        for stream in [&mut half_line, &mut silent, &mut half_headers] {
            let answer = read_until_closed(stream).await;
            assert!(answer.is_empty(), "{addr}: {answer:?}");
        }
        // Kept alive after an answer, then idle: closed the same way.
        let kept_alive =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        let answer = send_and_read(addr, kept_alive.as_bytes()).await;
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{addr}: {answer:?}");
        // HTTP/1.1 only: an HTTP/2 preface is not answered.
        let answer = send_and_read(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        assert!(answer.is_empty(), "{addr}: {answer:?}");
        wait_answered(addr, path).await;
    }
    host.shutdown().await;
}

/// A flood of idle connections fills a listener's connection limit: one more connection is
/// closed without an answer, the other listener is not affected, and once the idle ones go the
/// listener answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_are_closed_until_the_idle_ones_go() {
    let rig = Rig::new().await;
    // The idle connections must outlive the test's steps: the longest header deadline allowed.
    let host = host(
        &rig,
        &[
            ("FULFILLD_HTTP_MAX_CONNECTIONS", "4"),
            ("FULFILLD_ADMIN_MAX_CONNECTIONS", "2"),
            ("FULFILLD_HEADER_READ_TIMEOUT_MS", "300000"),
        ],
    )
    .await;
    let health = (host.http_addr(), "/metrics", 4);
    let admin = (host.admin_addr().unwrap(), "/admin/components", 2);
    for ((addr, path, limit), (other, other_path, _)) in [(health, admin), (admin, health)] {
        // (No request on `addr` just before: a connection the client saw closed may hold its
        // slot a moment longer, and would take one of the idle ones' places.)
        let mut idle = Vec::new();
        for _ in 0..limit {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Connections are accepted in order: this one comes after every idle one.
        let answer = send_and_read(addr, &get_request(addr, path)).await;
        assert!(
            answer.is_empty(),
            "{addr}: answered beyond the limit: {:?}",
            String::from_utf8_lossy(&answer)
        );
        wait_answered(other, other_path).await;
        drop(idle);
        wait_answered(addr, path).await;
    }
    host.shutdown().await;
}

/// An admin request whose body stops arriving is answered 408 once
/// FULFILLD_ADMIN_REQUEST_TIMEOUT_MS passes, and frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_request_that_outlasts_the_request_timeout_is_answered_408() {
    let rig = Rig::new().await;
    let host = host(&rig, &[("FULFILLD_ADMIN_REQUEST_TIMEOUT_MS", "1000")]).await;
    let admin = host.admin_addr().unwrap();
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let head = format!(
        "POST /admin/components HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/wasm\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n\0asm"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("the request took longer than 1000 ms (FULFILLD_ADMIN_REQUEST_TIMEOUT_MS)"),
        "{answer}"
    );
    assert!(!answer.contains(TOKEN), "{answer}");
    wait_answered(admin, "/admin/components").await;
    host.shutdown().await;
}
