//! Helpers shared by the benches that drive a whole host (`pipeline`, `swap`): settings, the
//! built components, the shared Redis, clocks and percentiles.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The setting `name` from the environment, or `default` when unset or unparsable.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The shared Redis the benches use (`FULFILLD_TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("FULFILLD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Path of a built component, e.g. `fulfillment.wasm` (`make components` builds them all into
/// `target/wasm32-wasip2/component`, or `FULFILLD_COMPONENT_DIR`).
pub fn component(file: &str) -> PathBuf {
    let dir = std::env::var("FULFILLD_COMPONENT_DIR").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/component"),
        PathBuf::from,
    );
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "no component at {} (run `make components`)",
        path.display()
    );
    path
}

/// Wall-clock time, µs since the Unix epoch.
pub fn now_us() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// The `p`th percentile (nearest rank) of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn redis_reachable(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(Ok(mut con)) = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .is_ok()
}

/// Removes everything a run wrote to the shared Redis: its namespace and its channel's cursor.
pub async fn redis_cleanup(url: &str, namespace: &str, channel: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{namespace}:*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut con)
                .await
                .unwrap();
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let _: i64 = redis::cmd("UNLINK")
        .arg(fulfilld::store::cursor_key(channel))
        .query_async(&mut con)
        .await
        .unwrap();
}
