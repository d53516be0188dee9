//! Every setting the host reads, with its default and meaning: what `fulfilld serve --help`
//! prints. A unit test keeps it complete: each setting name `config.rs` reads is listed here.

/// One setting: its environment variable, its default (`-` when it has none) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn s(name: &'static str, default: &'static str, meaning: &'static str) -> Setting {
    Setting {
        name,
        default,
        meaning,
    }
}

/// The settings, grouped as the runbook groups them.
pub const SETTINGS: &[(&str, &[Setting])] = &[
    (
        "Salesforce",
        &[
            s(
                "SF_LOGIN_URL",
                "-",
                "OAuth login URL (https://login.salesforce.com, a My Domain or the sandbox's); required",
            ),
            s(
                "SF_CLIENT_ID",
                "-",
                "the connected app's consumer key; required",
            ),
            s(
                "SF_USERNAME",
                "-",
                "the integration user the JWT is issued for; required",
            ),
            s(
                "SF_PRIVATE_KEY_PATH",
                "-",
                "PEM private key signing the JWT bearer assertion; required",
            ),
            s(
                "SF_AUDIENCE",
                "from SF_LOGIN_URL",
                "the JWT audience (login or test.salesforce.com)",
            ),
            s("SF_API_VERSION", "v66.0", "REST API version"),
            s(
                "SF_CA_FILE",
                "-",
                "extra CA (PEM) trusted for the org's login and REST",
            ),
            s(
                "SF_EVENTS_ENABLED",
                "true",
                "read the Pub/Sub channel (false: a workers-only replica)",
            ),
            s(
                "SF_PROVISION_EVENT_CHANNEL",
                "/event/OrderProvisionRequested__e",
                "the platform event channel",
            ),
            s(
                "SF_EVENTS_REPLAY",
                "LATEST",
                "where a channel without a stored cursor starts: LATEST or ALL",
            ),
            s(
                "SF_PUBSUB_ENDPOINT",
                "https://api.pubsub.salesforce.com:7443",
                "the Pub/Sub API",
            ),
            s(
                "SF_PUBSUB_CA_FILE",
                "-",
                "extra CA (PEM) trusted for the Pub/Sub API",
            ),
            s(
                "SF_PUBSUB_IDLE_TIMEOUT_MS",
                "300000",
                "a stream silent this long (no event, no keepalive) is replaced",
            ),
            s(
                "PORTAL_PRICEBOOK_ID",
                "-",
                "the price book the component maps from (exposed to it)",
            ),
        ],
    ),
    (
        "WHMCS",
        &[
            s(
                "WHMCS_URL",
                "-",
                "the WHMCS root (its API is <url>/includes/api.php); required",
            ),
            s(
                "WHMCS_IDENTIFIER",
                "-",
                "API credential identifier; required",
            ),
            s("WHMCS_SECRET", "-", "API credential secret; required"),
            s(
                "WHMCS_ACCESS_KEY",
                "-",
                "API access key, when WHMCS restricts API access by IP",
            ),
        ],
    ),
    (
        "Store",
        &[
            s(
                "REDIS_URL",
                "-",
                "redis[s]://[user:password@]host:port[/db] (several, comma-separated, in cluster and sentinel mode); unset: the embedded store",
            ),
            s(
                "FULFILLD_REDIS_NAMESPACE",
                "fulfilld",
                "prefix of the host's Redis keys",
            ),
            s(
                "FULFILLD_REDIS_MODE",
                "standalone",
                "standalone | cluster (REDIS_URL lists nodes) | sentinel (REDIS_URL lists Sentinels)",
            ),
            s(
                "FULFILLD_REDIS_SENTINEL_MASTER",
                "-",
                "sentinel mode: the name the Sentinels know the primary by; required there",
            ),
            s(
                "FULFILLD_REDIS_CA_FILE",
                "-",
                "rediss://: PEM CA certificate(s) to trust instead of the system's roots",
            ),
            s(
                "FULFILLD_REDIS_CLIENT_CERT_FILE",
                "-",
                "rediss://: PEM client certificate, for servers that require one",
            ),
            s(
                "FULFILLD_REDIS_CLIENT_KEY_FILE",
                "-",
                "rediss://: PEM key of the client certificate",
            ),
            s(
                "FULFILLD_STATE_DIR",
                "fulfilld-state",
                "directory of the embedded store (fulfilld.redb)",
            ),
        ],
    ),
    (
        "Pipeline",
        &[
            s(
                "FULFILLD_REPLICA_ID",
                "<hostname>-<pid>-<random>",
                "this process's name in leases, consumer groups and the journal",
            ),
            s(
                "FULFILLD_ENV",
                "production",
                "the environment name /health reports",
            ),
            s(
                "FULFILLD_WORKERS",
                "4",
                "jobs run at once by this replica (0: ingest only)",
            ),
            s(
                "FULFILLD_LEASE_TTL_MS",
                "15000",
                "how long the subscriber lease lasts unless renewed",
            ),
            s(
                "FULFILLD_JOB_RECLAIM_MS",
                "60000",
                "a job whose worker stopped reporting this long is handed out again",
            ),
            s(
                "FULFILLD_MAX_DELIVERIES",
                "5",
                "a job handed out more often is dead-lettered",
            ),
            s(
                "FULFILLD_QUEUE_STALL_MS",
                "600000",
                "/health is degraded when jobs wait and no worker moved for this long",
            ),
            s(
                "FULFILLD_SHUTDOWN_GRACE_MS",
                "30000",
                "how long shutdown waits for jobs in flight",
            ),
            s(
                "FULFILLD_JOURNAL_RETENTION_HOURS",
                "168",
                "how long a job's journal is kept after its last step",
            ),
            s(
                "FULFILLD_JOURNAL_CAPTURE",
                "false",
                "keep each call's request and answer in the journal (redacted); `orders export` needs it",
            ),
        ],
    ),
    (
        "Component and sandbox",
        &[
            s(
                "FULFILLD_COMPONENT",
                "-",
                "the component .wasm to run (the registry's active version wins)",
            ),
            s(
                "FULFILLD_POLICY_FILE",
                "built-in",
                "capability policy (TOML): writes, WHMCS actions, queries, redaction",
            ),
            s(
                "FULFILLD_CONFIG_<KEY>",
                "-",
                "config value <KEY> exposed to the component",
            ),
            s(
                "FULFILLD_CPU_DEADLINE_MS",
                "2000",
                "CPU time a job's component code may use",
            ),
            s(
                "FULFILLD_JOB_DEADLINE_MS",
                "300000",
                "wall-clock time a job may take",
            ),
            s(
                "FULFILLD_MEMORY_CAP_MB",
                "64",
                "linear memory a job may grow to",
            ),
            s(
                "FULFILLD_MAX_HOST_CALLS",
                "1000",
                "host calls one job may make",
            ),
            s(
                "FULFILLD_CALL_TIMEOUT_MS",
                "30000",
                "longest one host call may take",
            ),
            s(
                "FULFILLD_MAX_INSTANCES",
                "64",
                "component instances alive at once",
            ),
            s(
                "FULFILLD_HOLD_TTL_MS",
                "70000",
                "how long a component's named hold lasts unless renewed",
            ),
            s(
                "FULFILLD_COMPONENT_TEXT_MAX_BYTES",
                "4096",
                "longest message or text a component hands the host",
            ),
            s(
                "FULFILLD_HOST_RESULT_MAX_BYTES",
                "16777216",
                "largest answer handed to a component",
            ),
        ],
    ),
    (
        "Deploys and registry",
        &[
            s(
                "FULFILLD_REGISTRY_DIR",
                "-",
                "the component registry (versions, active one, compiled cache); unset: no swaps",
            ),
            s(
                "FULFILLD_DEPLOY_DIR",
                "-",
                "a directory watched for .wasm files to deploy and activate",
            ),
            s(
                "FULFILLD_COMPONENT_POLL_MS",
                "1000",
                "how often the deploy directory and the shared active version are read",
            ),
            s(
                "FULFILLD_COMPONENT_MAX_BYTES",
                "16777216",
                "the largest component a deploy accepts",
            ),
            s(
                "FULFILLD_COMPONENT_PUBLIC_KEY",
                "-",
                "ed25519 public key (PEM) deploys are verified with",
            ),
            s(
                "FULFILLD_REQUIRE_SIGNED",
                "false",
                "refuse deploys without a valid signature",
            ),
        ],
    ),
    (
        "Listeners",
        &[
            s(
                "FULFILLD_HTTP_ADDR",
                "127.0.0.1:8080",
                "/health, /livez, /readyz, /metrics",
            ),
            s(
                "FULFILLD_ADMIN_ADDR",
                "127.0.0.1:8081",
                "the admin API and the console",
            ),
            s(
                "FULFILLD_ADMIN_TOKEN",
                "-",
                "bearer token of the admin API (>= 16 characters); unset: admin API and console off",
            ),
            s(
                "FULFILLD_HTTP_MAX_CONNECTIONS",
                "256",
                "connections open at once on FULFILLD_HTTP_ADDR",
            ),
            s(
                "FULFILLD_ADMIN_MAX_CONNECTIONS",
                "64",
                "connections open at once on FULFILLD_ADMIN_ADDR",
            ),
            s(
                "FULFILLD_HEADER_READ_TIMEOUT_MS",
                "10000",
                "how long a client may take to send its request headers",
            ),
            s(
                "FULFILLD_ADMIN_REQUEST_TIMEOUT_MS",
                "120000",
                "longest an admin request may take",
            ),
        ],
    ),
    (
        "Logs and traces",
        &[
            s(
                "FULFILLD_LOG",
                "info",
                "log filter (RUST_LOG syntax; RUST_LOG also works)",
            ),
            s(
                "FULFILLD_LOG_FORMAT",
                "text",
                "json: one JSON object per line",
            ),
            s(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "-",
                "OTLP collector base URL; set, traces are exported (one per Order)",
            ),
            s(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "-",
                "the full traces URL, used as is; wins over OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
            s(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "http/protobuf",
                "http/protobuf or grpc",
            ),
            s(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                "http/protobuf",
                "the same for traces; wins",
            ),
            s(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "10000",
                "milliseconds one export may take",
            ),
            s(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "10000",
                "the same for traces; wins",
            ),
            s(
                "OTEL_SERVICE_NAME",
                "fulfilld",
                "the service.name resource attribute",
            ),
            s(
                "OTEL_RESOURCE_ATTRIBUTES",
                "-",
                "more resource attributes, key=value,key=value",
            ),
            s(
                "OTEL_BSP_SCHEDULE_DELAY",
                "5000",
                "milliseconds finished spans wait before a batch is sent",
            ),
            s(
                "OTEL_BSP_MAX_QUEUE_SIZE",
                "2048",
                "finished spans held for export",
            ),
            s(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                "512",
                "spans per export request",
            ),
            s(
                "OTEL_SDK_DISABLED",
                "false",
                "true turns export off even with an endpoint set",
            ),
        ],
    ),
    (
        "Operator commands (component deploy|list|show|activate|rollback)",
        &[s(
            "FULFILLD_ADMIN_URL",
            "-",
            "a running host's admin address, e.g. http://127.0.0.1:8081",
        )],
    ),
];

/// The settings as `serve --help` prints them.
pub fn help_text() -> String {
    let mut text = String::from(
        "Settings (environment variables; a bad value stops the host with exit status 2 naming it):\n",
    );
    for (group, settings) in SETTINGS {
        text.push_str(&format!("\n{group}:\n"));
        for setting in *settings {
            text.push_str(&format!(
                "  {}\n      {} [default: {}]\n",
                setting.name, setting.meaning, setting.default
            ));
        }
    }
    text
}

/// Every setting name listed.
pub fn names() -> impl Iterator<Item = &'static str> {
    SETTINGS
        .iter()
        .flat_map(|(_, settings)| settings.iter().map(|s| s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names in double quotes in `source` that look like settings.
    fn quoted_settings(source: &str) -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        for piece in source.split('"').skip(1).step_by(2) {
            let is_setting = ["FULFILLD_", "SF_", "WHMCS_", "REDIS_", "PORTAL_", "OTEL_"]
                .iter()
                .any(|p| piece.starts_with(p))
                && piece.len() > 6
                && piece
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if is_setting {
                found.insert(piece.to_owned());
            }
        }
        found
    }

    #[test]
    fn every_setting_the_config_reads_is_listed_with_a_default_and_a_meaning() {
        let listed: std::collections::BTreeSet<&str> = names().collect();
        let source = include_str!("config.rs");
        let runtime_code = source.split("#[cfg(test)]").next().unwrap_or(source);
        for name in quoted_settings(runtime_code) {
            if name == "FULFILLD_CONFIG_" {
                assert!(listed.contains("FULFILLD_CONFIG_<KEY>"));
                continue;
            }
            assert!(
                listed.contains(name.as_str()),
                "{name} is missing from SETTINGS"
            );
        }
        for (_, settings) in SETTINGS {
            for setting in *settings {
                assert!(
                    !setting.default.is_empty() && !setting.meaning.is_empty(),
                    "{setting:?}"
                );
            }
        }
        let help = help_text();
        for name in names() {
            assert!(help.contains(name), "{name}");
        }
    }
}
