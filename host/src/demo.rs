//! `fulfilld demo` (`make demo`): the whole pipeline on a bare machine. Starts the sandbox
//! (Salesforce's Pub/Sub API, OAuth and REST; WHMCS), `serve` on the embedded store, publishes a
//! few approved Orders (one whose customer has no payment method, and one event twice) and prints
//! each Order's status as Salesforce sees it change. Ctrl-C stops everything.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;
use crate::domain::random_uuid;
use crate::pipeline::Host;
use crate::sandbox::{ACME_ACCOUNT, NO_CARD_ACCOUNT, ORDER_EVENT_TOPIC, Sandbox, SandboxConfig};

/// Runs the demo until `shutdown` resolves. Its lines on `out` are the story: where things
/// listen, what was published, one line per status change of an Order, the summary; the pipeline's
/// log goes to `log` (set up by the caller), which the first line names.
pub async fn run(
    component: &Path,
    state_dir: &Path,
    log: &Path,
    shutdown: impl Future<Output = ()>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        component.is_file(),
        "no component at {} (run `make components`)",
        component.display()
    );
    if state_dir.exists() {
        std::fs::remove_dir_all(state_dir)
            .with_context(|| format!("cannot clear {}", state_dir.display()))?;
    }
    let sandbox = Sandbox::start(SandboxConfig {
        state_dir: Some(state_dir.join("sandbox")),
        ..SandboxConfig::default()
    })
    .await
    .context("cannot start the sandbox")?;

    let (good, no_card) = {
        let org = sandbox.salesforce().org();
        let mut org = org
            .lock()
            .map_err(|_| anyhow::anyhow!("the fake org is unusable"))?;
        let good = crate::sandbox::add_orders(&mut org, ACME_ACCOUNT, 1, 4)?;
        let no_card = crate::sandbox::add_orders(&mut org, NO_CARD_ACCOUNT, 100, 1)?;
        (good, no_card)
    };

    let mut env: BTreeMap<String, String> = sandbox.env().clone();
    env.insert("FULFILLD_COMPONENT".into(), component.display().to_string());
    env.insert(
        "FULFILLD_STATE_DIR".into(),
        state_dir.join("store").display().to_string(),
    );
    env.insert("FULFILLD_HTTP_ADDR".into(), "127.0.0.1:0".into());
    env.insert("FULFILLD_ENV".into(), "demo".into());
    env.insert("FULFILLD_WORKERS".into(), "2".into());
    // A fresh store has no cursor: start from the first retained event so nothing published
    // while the host connects is missed.
    env.insert("SF_EVENTS_REPLAY".into(), "ALL".into());
    env.remove("REDIS_URL");
    let config = Config::from_lookup(|key| env.get(key).cloned())?;
    let host = Host::from_config(&config).await?;

    writeln!(
        out,
        "sandbox admin API: {}   host: http://{}/health  http://{}/metrics",
        sandbox.admin_url(),
        host.http_addr(),
        host.http_addr()
    )?;
    writeln!(
        out,
        "pipeline log: {} (FULFILLD_LOG=info shows every step on stderr too)",
        log.display()
    )?;

    let bus = sandbox.pubsub().bus();
    let mut labels: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut first_uuid = None;
    for order in good.iter().chain(&no_card) {
        let uuid = random_uuid();
        bus.publish_order(ORDER_EVENT_TOPIC, order, &uuid)?;
        first_uuid.get_or_insert(uuid);
        labels.insert(
            order.clone(),
            if no_card.contains(order) {
                "customer without a payment method"
            } else {
                "approved order"
            },
        );
        writeln!(out, "published OrderProvisionRequested__e for {order}")?;
    }
    if let (Some(uuid), Some(order)) = (first_uuid, good.first()) {
        bus.publish_order(ORDER_EVENT_TOPIC, order, &uuid)?;
        writeln!(
            out,
            "published the event for {order} again (same EventUuid {uuid}): a duplicate"
        )?;
    }
    out.flush()?;

    let org = sandbox.salesforce().org();
    let mut shown: BTreeMap<String, String> = BTreeMap::new();
    let watch = async {
        let mut summarized = false;
        loop {
            let snapshot: Vec<(String, String)> = match org.lock() {
                Ok(org) => labels
                    .keys()
                    .map(|id| (id.clone(), describe(org.get("Order", id))))
                    .collect(),
                Err(_) => Vec::new(),
            };
            for (id, status) in snapshot {
                if shown.get(&id) != Some(&status) {
                    let label = labels.get(&id).copied().unwrap_or("");
                    let _ = writeln!(out, "{id} ({label}): {status}");
                    shown.insert(id, status);
                }
            }
            let done = shown
                .values()
                .filter(|s| s.starts_with("Activated") || s.starts_with("Failed"))
                .count();
            if !summarized && done == labels.len() {
                summarized = true;
                let whmcs = sandbox
                    .whmcs()
                    .whmcs()
                    .lock()
                    .map(|w| w.orders().len())
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "all {} orders settled; WHMCS holds {whmcs} orders (the duplicate event created none). \
                     Publish more with the admin API (docs/sandbox.md); Ctrl-C stops.",
                    labels.len()
                );
            }
            let _ = out.flush();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        () = watch => {}
        () = shutdown => {}
    }
    writeln!(out, "stopping")?;
    host.shutdown().await;
    drop(sandbox);
    Ok(())
}

fn describe(order: Option<&serde_json::Map<String, serde_json::Value>>) -> String {
    let Some(order) = order else {
        return "missing".into();
    };
    let field = |name: &str| order.get(name).and_then(|v| v.as_str()).unwrap_or("");
    match field("Activation_Status__c") {
        "Activated" => format!("Activated (WHMCS order {})", field("WHMCS_Order_ID__c")),
        "Failed" => format!(
            "Failed ({} {})",
            field("Activation_Error_Code__c"),
            field("Activation_Error_Message__c")
        ),
        other => other.to_owned(),
    }
}
