//! Configuration from the environment, with the runbook's names. Every problem names its setting;
//! all problems are reported at once, and secrets are read into [`Secret`]s and never echoed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::domain::ReplayId;
use crate::pubsub::{ReplayFrom, SubscriberOptions};
use crate::runtime::RuntimeConfig;
use crate::runtime::manifest::MAX_VALUE_BYTES;
use crate::runtime::policy::CapabilityPolicy;
use crate::salesforce::SalesforceConfig;
use crate::secret::Secret;
use crate::services::{LiveServices, LiveServicesError};
use crate::store::redis::{RedisTls, RedisTopology};
use crate::telemetry::{Protocol, TraceSettings};
use crate::whmcs::WhmcsConfig;

pub use crate::services::EXPOSED_SETTINGS;

pub const DEFAULT_CHANNEL: &str = "/event/OrderProvisionRequested__e";
pub const DEFAULT_API_VERSION: &str = "v66.0";
/// The `service.name` of exported traces unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "fulfilld";

/// The prefix of a host setting that overrides a component config value.
pub const COMPONENT_CONFIG_PREFIX: &str = "FULFILLD_CONFIG_";

/// The settings a component reads, from the environment alone (no Salesforce or WHMCS settings
/// needed): `PORTAL_PRICEBOOK_ID`, `SF_PROVISION_EVENT_CHANNEL` and every `FULFILLD_CONFIG_<KEY>`,
/// as `serve` exposes them. `fulfilld orders export` writes them into the scenario.
pub fn exposed_from_env() -> Result<BTreeMap<String, String>, ConfigError> {
    let mut exposed = BTreeMap::new();
    if let Ok(id) = std::env::var("PORTAL_PRICEBOOK_ID")
        && !id.trim().is_empty()
    {
        exposed.insert("PORTAL_PRICEBOOK_ID".to_owned(), id);
    }
    let channel = std::env::var("SF_PROVISION_EVENT_CHANNEL")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
    exposed.insert("SF_PROVISION_EVENT_CHANNEL".to_owned(), channel);
    exposed.extend(component_overrides(std::env::vars())?);
    Ok(exposed)
}

/// The `FULFILLD_CONFIG_<KEY>` settings among `vars`, by key. A key a manifest could not list or
/// a value over 4096 bytes is an error naming the setting (never its value).
pub fn component_overrides(
    vars: impl Iterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut overrides = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, value) in vars {
        let Some(key) = name.strip_prefix(COMPONENT_CONFIG_PREFIX) else {
            continue;
        };
        if !crate::runtime::manifest::is_config_key(key) {
            errors.push(SettingError {
                setting: "FULFILLD_CONFIG_<KEY>",
                problem: format!(
                    "{name}: the key must be letters, digits and _ starting with a letter, as a \
                     manifest's [config] lists it"
                ),
            });
        } else if value.len() > MAX_VALUE_BYTES {
            errors.push(SettingError {
                setting: "FULFILLD_CONFIG_<KEY>",
                problem: format!(
                    "{name}: {} bytes, over the {MAX_VALUE_BYTES}-byte limit",
                    value.len()
                ),
            });
        } else {
            overrides.insert(key.to_owned(), value);
        }
    }
    if errors.is_empty() {
        Ok(overrides)
    } else {
        Err(ConfigError(errors))
    }
}

/// One bad setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub setting: &'static str,
    pub problem: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for SettingError {}

/// Every bad setting found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<SettingError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(SettingError::to_string).collect();
        write!(f, "invalid configuration: {}", lines.join("; "))
    }
}

impl std::error::Error for ConfigError {}

/// `SF_EVENTS_REPLAY`: `LATEST` resumes after the stored cursor (or starts with new events when
/// there is none); `ALL` is the runbook's one-time backfill, from the earliest retained event even
/// with a stored cursor (decided by the pipeline's ingest). Also where the subscription falls back
/// to when Salesforce refuses a stored replay id.
pub use crate::pubsub::Fallback as ReplayStart;

/// The host's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub salesforce: SalesforceConfig,
    pub whmcs: WhmcsConfig,
    pub events_enabled: bool,
    pub channel: String,
    pub replay: ReplayStart,
    pub pubsub_endpoint: Url,
    /// Extra CA certificate (PEM) trusted for the Pub/Sub endpoint besides the public roots
    /// (`SF_PUBSUB_CA_FILE`), e.g. the sandbox's test CA.
    pub pubsub_ca_pem: Option<String>,
    /// Extra CA certificate (PEM) trusted for the Salesforce login and instance URLs (the token
    /// endpoint and REST) besides the system roots (`SF_CA_FILE`), e.g. the sandbox's test CA in
    /// `--tls` mode.
    pub salesforce_ca_pem: Option<String>,
    /// `SF_PUBSUB_IDLE_TIMEOUT_MS`: with no message at all (events or Salesforce's keepalive,
    /// sent within 270 s) for this long, the Pub/Sub stream is treated as half-open and replaced.
    pub pubsub_idle_timeout: Duration,
    pub pricebook_id: Option<String>,
    pub component: Option<PathBuf>,
    /// `FULFILLD_CONFIG_<KEY>`: per-environment values of component config keys (what a
    /// component's manifest lists under `[config]`), by key. Never secrets: components read them.
    pub component_config: BTreeMap<String, String>,
    pub runtime: RuntimeConfig,
    /// The store, workers, lease and HTTP endpoint of `fulfilld serve`.
    pub serve: ServeConfig,
}

/// Where jobs and the cursor are kept.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Redis (`REDIS_URL`); project keys are prefixed with `namespace` (`FULFILLD_REDIS_NAMESPACE`).
    /// `topology` is `FULFILLD_REDIS_MODE`'s; `tls` the CA and client certificate files' content.
    Redis {
        url: Secret,
        namespace: String,
        topology: RedisTopology,
        tls: RedisTls,
    },
    /// The embedded single-node store in `<FULFILLD_STATE_DIR>/fulfilld.redb`.
    Embedded { path: PathBuf },
}

/// Settings of `fulfilld serve` beyond the integrations.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub store: StoreConfig,
    /// `FULFILLD_HTTP_ADDR`: where `/health` and `/metrics` are served.
    pub http_addr: std::net::SocketAddr,
    /// `FULFILLD_ADMIN_ADDR`: where the admin API (`/admin/...`) listens when it is on; apart
    /// from `/health` and `/metrics`, and on loopback unless set otherwise.
    pub admin_addr: std::net::SocketAddr,
    /// `FULFILLD_HTTP_MAX_CONNECTIONS`: connections open at once on `FULFILLD_HTTP_ADDR`; one
    /// more is closed at once.
    pub http_max_connections: usize,
    /// `FULFILLD_ADMIN_MAX_CONNECTIONS`: the same bound on `FULFILLD_ADMIN_ADDR`.
    pub admin_max_connections: usize,
    /// `FULFILLD_HEADER_READ_TIMEOUT_MS`: on both listeners, a connection that has not sent a
    /// request's complete headers within this time (idle between requests included) is closed.
    pub header_read_timeout: Duration,
    /// `FULFILLD_ADMIN_REQUEST_TIMEOUT_MS`: longest an admin request may take, upload and gates
    /// included (408 beyond).
    pub admin_request_timeout: Duration,
    /// `FULFILLD_ENV`: reported by `/health` (e.g. production, staging).
    pub environment: String,
    /// `FULFILLD_WORKERS`: jobs run at once by this replica.
    pub workers: usize,
    /// `FULFILLD_LEASE_TTL_MS`: how long the subscriber lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// `FULFILLD_JOB_RECLAIM_MS`: a job whose worker stopped reporting for this long is handed
    /// to another worker.
    pub reclaim_after: Duration,
    /// `FULFILLD_MAX_DELIVERIES`: a job handed out more often than this is dead-lettered.
    pub max_deliveries: u32,
    /// `FULFILLD_QUEUE_STALL_MS`: `/health` is degraded when jobs wait and this replica's
    /// workers have all been busy without taking or ending one for this long.
    pub queue_stall: Duration,
    /// `FULFILLD_SHUTDOWN_GRACE_MS`: how long shutdown waits for jobs in flight.
    pub shutdown_grace: Duration,
    /// `FULFILLD_JOURNAL_RETENTION_HOURS`: how long a job's journal is kept after its last entry.
    pub journal_retention: Duration,
    /// `FULFILLD_JOURNAL_CAPTURE`: whether the journal keeps each call's request and answer
    /// (redacted), which `fulfilld orders export` needs. Off by default.
    pub journal_capture: bool,
    /// `FULFILLD_REPLICA_ID`: this process's name in leases and consumer groups.
    pub replica_id: String,
    /// `FULFILLD_REGISTRY_DIR`: the component registry (deployed versions, the active one, the
    /// compiled-artifact cache). Unset: `FULFILLD_COMPONENT` is loaded as is and cannot be
    /// swapped while running.
    pub registry_dir: Option<PathBuf>,
    /// `FULFILLD_ADMIN_TOKEN`: the bearer token of the admin API (`/admin/...`); unset, the
    /// admin API is off.
    pub admin_token: Option<Secret>,
    /// `FULFILLD_COMPONENT_MAX_BYTES`: the largest component a deploy accepts.
    pub component_max_bytes: usize,
    /// `FULFILLD_COMPONENT_PUBLIC_KEY` (a PEM ed25519 public key) and `FULFILLD_REQUIRE_SIGNED`.
    pub signatures: crate::registry::signature::SignaturePolicy,
    /// `FULFILLD_DEPLOY_DIR`: a directory watched for `.wasm` files to deploy and activate.
    pub deploy_dir: Option<PathBuf>,
    /// `FULFILLD_COMPONENT_POLL_MS`: how often the deploy directory and (with Redis) the
    /// replicas' shared active version are looked at.
    pub component_poll: Duration,
}

impl ServeConfig {
    /// Reads only the serve settings (operator commands need the store, not Salesforce).
    pub fn from_env() -> Result<ServeConfig, ConfigError> {
        ServeConfig::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<ServeConfig, ConfigError> {
        let mut env = Reader {
            lookup: &|key| lookup(key).filter(|v| !v.trim().is_empty()),
            errors: Vec::new(),
        };
        let serve = env.serve();
        if env.errors.is_empty() {
            Ok(serve)
        } else {
            Err(ConfigError(env.errors))
        }
    }
}

/// What the store commands (`cursor`, `dead-letters`) work on: the store and channel `serve`
/// uses. Salesforce settings are not needed.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// `REDIS_URL` or `FULFILLD_STATE_DIR`, read with the rest of the serve settings so a bad
    /// one is reported as `serve` would.
    pub store: StoreConfig,
    /// `SF_PROVISION_EVENT_CHANNEL`.
    pub channel: String,
    /// `FULFILLD_JOURNAL_RETENTION_HOURS`, for the journal entry a requeue writes.
    pub journal_retention: Duration,
}

impl OperatorConfig {
    pub fn from_env() -> Result<OperatorConfig, ConfigError> {
        OperatorConfig::from_lookup(|key| std::env::var(key).ok())
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<OperatorConfig, ConfigError> {
        let mut env = Reader {
            lookup: &|key| lookup(key).filter(|v| !v.trim().is_empty()),
            errors: Vec::new(),
        };
        let serve = env.serve();
        let channel = env
            .optional("SF_PROVISION_EVENT_CHANNEL")
            .unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
        if env.errors.is_empty() {
            Ok(OperatorConfig {
                store: serve.store,
                channel,
                journal_retention: serve.journal_retention,
            })
        } else {
            Err(ConfigError(env.errors))
        }
    }
}

/// How the `component deploy | list | show | activate | rollback` commands reach a running
/// host's admin API.
#[derive(Debug, Clone)]
pub struct AdminClientConfig {
    /// `FULFILLD_ADMIN_URL`: the host's HTTP address, e.g. `http://fulfilld:8080`.
    pub url: String,
    /// `FULFILLD_ADMIN_TOKEN`: the admin API's bearer token.
    pub token: Secret,
    /// `USER`: who deploys, when `--deployed-by` is not given (default `cli`).
    pub user: String,
}

impl AdminClientConfig {
    pub fn from_env() -> Result<AdminClientConfig, SettingError> {
        AdminClientConfig::from_lookup(|key| std::env::var(key).ok())
    }

    /// The first missing setting is the error: these commands have always named one at a time.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AdminClientConfig, SettingError> {
        let lookup = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let url = lookup("FULFILLD_ADMIN_URL").ok_or_else(|| SettingError {
            setting: "FULFILLD_ADMIN_URL",
            problem: "is required (the host's admin API address, FULFILLD_ADMIN_ADDR, e.g. http://127.0.0.1:8081)".into(),
        })?;
        let token = lookup("FULFILLD_ADMIN_TOKEN").ok_or_else(|| SettingError {
            setting: "FULFILLD_ADMIN_TOKEN",
            problem: "is required".into(),
        })?;
        Ok(AdminClientConfig {
            url,
            token: Secret::from(token),
            user: lookup("USER").unwrap_or_else(|| "cli".to_owned()),
        })
    }
}

/// Trace export (`serve`, `fulfill`) from the standard OpenTelemetry variables: on when
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
/// `OTEL_SDK_DISABLED` is not true); `None` otherwise, and then no other `OTEL_*` variable is
/// read. Every bad value is named, as for the host's own settings.
pub fn traces_from_env() -> Result<Option<TraceSettings>, ConfigError> {
    traces_from_lookup(|key| std::env::var(key).ok())
}

/// [`traces_from_env`] through `lookup` (tests pass a map). Empty values count as unset.
pub fn traces_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Option<TraceSettings>, ConfigError> {
    let mut env = Reader {
        lookup: &|key| lookup(key).filter(|v| !v.trim().is_empty()),
        errors: Vec::new(),
    };
    let traces = env.traces();
    if env.errors.is_empty() {
        Ok(traces)
    } else {
        Err(ConfigError(env.errors))
    }
}

impl Config {
    /// Reads the process environment, `FULFILLD_CONFIG_<KEY>` overrides included.
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut config = Config::from_lookup(|key| std::env::var(key).ok())?;
        config.component_config =
            component_overrides(std::env::vars_os().filter_map(|(key, value)| {
                Some((key.into_string().ok()?, value.into_string().ok()?))
            }))?;
        Ok(config)
    }

    /// Reads settings through `lookup` (tests pass a map). Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut env = Reader {
            lookup: &|key| lookup(key).filter(|v| !v.trim().is_empty()),
            errors: Vec::new(),
        };
        let login_url = env.url("SF_LOGIN_URL", None);
        let client_id = env.required("SF_CLIENT_ID");
        let username = env.required("SF_USERNAME");
        let private_key = env.private_key("SF_PRIVATE_KEY_PATH");
        let audience = env.optional("SF_AUDIENCE");
        let api_version = env
            .optional("SF_API_VERSION")
            .unwrap_or_else(|| DEFAULT_API_VERSION.to_owned());
        if !is_api_version(&api_version) {
            env.fail(
                "SF_API_VERSION",
                format!("expected a version like v66.0, got `{api_version}`"),
            );
        }
        let events_enabled = env.boolean("SF_EVENTS_ENABLED", true);
        let channel = env
            .optional("SF_PROVISION_EVENT_CHANNEL")
            .unwrap_or_else(|| DEFAULT_CHANNEL.to_owned());
        if !channel.starts_with("/event/") {
            env.fail(
                "SF_PROVISION_EVENT_CHANNEL",
                format!(
                    "expected a platform event channel like {DEFAULT_CHANNEL}, got `{channel}`"
                ),
            );
        }
        let replay = match env.optional("SF_EVENTS_REPLAY").as_deref() {
            None | Some("LATEST") => ReplayStart::Latest,
            Some("ALL") => ReplayStart::Earliest,
            Some(other) => {
                env.fail(
                    "SF_EVENTS_REPLAY",
                    format!("expected LATEST or ALL, got `{other}`"),
                );
                ReplayStart::Latest
            }
        };
        let pubsub_endpoint = env.url(
            "SF_PUBSUB_ENDPOINT",
            Some("https://api.pubsub.salesforce.com:7443"),
        );
        let pubsub_ca_pem = env.ca_file("SF_PUBSUB_CA_FILE");
        let salesforce_ca_pem = env.ca_file("SF_CA_FILE");
        let pubsub_idle_timeout = Duration::from_millis(env.bounded(
            "SF_PUBSUB_IDLE_TIMEOUT_MS",
            crate::pubsub::subscriber::DEFAULT_IDLE_TIMEOUT.as_millis() as u64,
            3_600_000,
        ));
        let pricebook_id = env.optional("PORTAL_PRICEBOOK_ID");
        let whmcs_url = env.url("WHMCS_URL", None);
        let identifier = env.required("WHMCS_IDENTIFIER");
        let secret = env.required("WHMCS_SECRET").map(Secret::from);
        let access_key = env.optional("WHMCS_ACCESS_KEY").map(Secret::from);
        let component = env.optional("FULFILLD_COMPONENT").map(PathBuf::from);
        if let Some(path) = &component
            && !path.is_file()
        {
            env.fail(
                "FULFILLD_COMPONENT",
                format!("no file at {}", path.display()),
            );
        }
        let runtime = env.runtime();
        let serve = env.serve();

        let call_timeout = runtime.call_timeout;
        match (
            login_url,
            client_id,
            username,
            private_key,
            pubsub_endpoint,
            whmcs_url,
            identifier,
            secret,
        ) {
            (
                Some(login_url),
                Some(client_id),
                Some(username),
                Some(private_key_pem),
                Some(pubsub_endpoint),
                Some(whmcs_url),
                Some(identifier),
                Some(secret),
            ) if env.errors.is_empty() => Ok(Config {
                salesforce: SalesforceConfig {
                    audience: audience.unwrap_or_else(|| default_audience(&login_url)),
                    login_url,
                    client_id,
                    username,
                    private_key_pem,
                    api_version,
                    timeout: call_timeout,
                },
                whmcs: WhmcsConfig {
                    url: whmcs_url,
                    identifier,
                    secret,
                    access_key,
                    timeout: call_timeout,
                },
                events_enabled,
                channel,
                replay,
                pubsub_endpoint,
                pubsub_ca_pem,
                salesforce_ca_pem,
                pubsub_idle_timeout,
                pricebook_id,
                component,
                component_config: BTreeMap::new(),
                runtime,
                serve,
            }),
            _ => Err(ConfigError(env.errors)),
        }
    }

    /// How the subscriber reaches the Pub/Sub API for this configuration, starting from `start`
    /// (the stored cursor, if any) and falling back per `SF_EVENTS_REPLAY`.
    pub fn subscriber_options(&self, start: Option<ReplayId>) -> SubscriberOptions {
        let mut opts = SubscriberOptions::new(self.pubsub_endpoint.clone(), self.channel.clone());
        opts.fallback = self.replay;
        opts.start = match start {
            Some(cursor) => ReplayFrom::After(cursor),
            None => ReplayFrom::from(self.replay),
        };
        opts.ca_pem = self.pubsub_ca_pem.clone();
        opts.idle_timeout = self.pubsub_idle_timeout;
        opts
    }

    /// The production backends for these settings (`serve`, `fulfill`): the Salesforce and WHMCS
    /// clients on one HTTP client bounded by `FULFILLD_CALL_TIMEOUT_MS`. Contacts nothing.
    pub fn live_services(&self) -> Result<LiveServices, LiveServicesError> {
        LiveServices::from_settings(
            self.salesforce.clone(),
            self.whmcs.clone(),
            self.runtime.call_timeout,
            self.exposed(),
            self.salesforce_ca_pem.as_deref(),
        )
    }

    /// The settings components may read.
    pub fn exposed(&self) -> BTreeMap<String, String> {
        let mut exposed = BTreeMap::new();
        if let Some(id) = &self.pricebook_id {
            exposed.insert("PORTAL_PRICEBOOK_ID".to_owned(), id.clone());
        }
        exposed.insert(
            "SF_PROVISION_EVENT_CHANNEL".to_owned(),
            self.channel.clone(),
        );
        // A FULFILLD_CONFIG_<KEY> setting is the one made for components: it wins.
        exposed.extend(self.component_config.clone());
        exposed
    }
}

/// The JWT audience for `SF_LOGIN_URL`, after Salesforce's rules for the JWT bearer flow
/// (shared/docs/salesforce.md, "OAuth 2.0 JWT bearer flow" and "Facts checked since"): `aud` is
/// `https://login.salesforce.com`, `https://test.salesforce.com`, or an Experience Cloud site URL
/// including its path. So:
/// - `login.salesforce.com` / `test.salesforce.com`: that origin;
/// - a My Domain login URL is not an audience of its own: a sandbox's
///   (`<name>--<sandbox>.sandbox.my.salesforce.com`) is `https://test.salesforce.com`, any other
///   `*.my.salesforce.com` is `https://login.salesforce.com`;
/// - anything else is taken for an Experience Cloud site (`*.my.site.com`, `*.force.com`, a
///   custom domain): its origin and path, without a trailing `/`, query or fragment.
///
/// `SF_AUDIENCE` overrides.
fn default_audience(login_url: &Url) -> String {
    const LOGIN: &str = "https://login.salesforce.com";
    const TEST: &str = "https://test.salesforce.com";
    let host = login_url
        .host_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    // Sandboxes and scratch orgs sign in at test: enhanced sandbox domains
    // (`acme--uat.sandbox.my.salesforce.com`), legacy ones (`acme--uat.my.salesforce.com`,
    // `acme--uat.cs42.my.salesforce.com`: the `--` names the sandbox) and scratch orgs.
    let legacy_sandbox = host.ends_with(".my.salesforce.com")
        && host
            .split('.')
            .next()
            .is_some_and(|label| label.contains("--"));
    if host.ends_with(".sandbox.my.salesforce.com")
        || host.ends_with(".scratch.my.salesforce.com")
        || legacy_sandbox
    {
        return TEST.to_owned();
    }
    if host.ends_with(".my.salesforce.com") {
        return LOGIN.to_owned();
    }
    let origin = login_url.origin().ascii_serialization();
    if host == "login.salesforce.com" || host == "test.salesforce.com" {
        return origin;
    }
    format!("{origin}{}", login_url.path().trim_end_matches('/'))
}

fn is_api_version(text: &str) -> bool {
    text.strip_prefix('v')
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && major.chars().all(|c| c.is_ascii_digit())
                && minor.chars().all(|c| c.is_ascii_digit())
                && !minor.is_empty()
        })
}

struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<SettingError>,
}

impl Reader<'_> {
    fn fail(&mut self, setting: &'static str, problem: impl Into<String>) {
        self.errors.push(SettingError {
            setting,
            problem: problem.into(),
        });
    }

    fn optional(&self, setting: &str) -> Option<String> {
        (self.lookup)(setting)
    }

    /// A setting naming a PEM CA certificate file: its content, checked to hold a certificate.
    fn ca_file(&mut self, setting: &'static str) -> Option<String> {
        let path = self.optional(setting)?;
        match std::fs::read_to_string(&path) {
            Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Some(pem),
            Ok(_) => {
                self.fail(setting, format!("{path} holds no PEM certificate"));
                None
            }
            Err(err) => {
                self.fail(setting, format!("cannot read {path}: {err}"));
                None
            }
        }
    }

    /// `FULFILLD_REDIS_MODE` (and the Sentinel master's name).
    fn redis_topology(&mut self, url: &str) -> RedisTopology {
        let master = self.optional("FULFILLD_REDIS_SENTINEL_MASTER");
        let mode = self.optional("FULFILLD_REDIS_MODE");
        let topology = match mode.as_deref().unwrap_or("standalone") {
            "standalone" => RedisTopology::Standalone,
            "cluster" => RedisTopology::Cluster,
            "sentinel" => match &master {
                Some(name) if !name.trim().is_empty() => RedisTopology::Sentinel {
                    master: name.trim().to_owned(),
                },
                _ => {
                    self.fail(
                        "FULFILLD_REDIS_SENTINEL_MASTER",
                        "is required with FULFILLD_REDIS_MODE=sentinel: the name the Sentinels \
                         know the primary by (sentinel monitor <name> ...)",
                    );
                    RedisTopology::Standalone
                }
            },
            other => {
                self.fail(
                    "FULFILLD_REDIS_MODE",
                    format!("expected standalone, cluster or sentinel, got `{other}`"),
                );
                RedisTopology::Standalone
            }
        };
        if master.is_some() && !matches!(topology, RedisTopology::Sentinel { .. }) {
            self.fail(
                "FULFILLD_REDIS_SENTINEL_MASTER",
                "is read only with FULFILLD_REDIS_MODE=sentinel",
            );
        }
        let urls = url.split(',').filter(|u| !u.trim().is_empty()).count();
        if urls > 1 && topology == RedisTopology::Standalone {
            self.fail(
                "REDIS_URL",
                format!(
                    "lists {urls} URLs: several are read only with FULFILLD_REDIS_MODE=cluster \
                     (nodes) or sentinel (Sentinels)"
                ),
            );
        }
        topology
    }

    /// `FULFILLD_REDIS_CA_FILE`, `FULFILLD_REDIS_CLIENT_CERT_FILE`, `FULFILLD_REDIS_CLIENT_KEY_FILE`.
    fn redis_tls(&mut self, url: &str) -> RedisTls {
        let ca = self
            .ca_file("FULFILLD_REDIS_CA_FILE")
            .map(String::into_bytes);
        let cert = self.ca_file("FULFILLD_REDIS_CLIENT_CERT_FILE");
        let key = match self.optional("FULFILLD_REDIS_CLIENT_KEY_FILE") {
            Some(_) => self
                .private_key("FULFILLD_REDIS_CLIENT_KEY_FILE")
                .map(|k| k.expose().as_bytes().to_vec()),
            None => None,
        };
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert.into_bytes(), key)),
            (None, None) => None,
            (Some(_), None) => {
                self.fail(
                    "FULFILLD_REDIS_CLIENT_KEY_FILE",
                    "is required with FULFILLD_REDIS_CLIENT_CERT_FILE (the certificate's key)",
                );
                None
            }
            (None, Some(_)) => {
                if self.optional("FULFILLD_REDIS_CLIENT_CERT_FILE").is_none() {
                    self.fail(
                        "FULFILLD_REDIS_CLIENT_CERT_FILE",
                        "is required with FULFILLD_REDIS_CLIENT_KEY_FILE (the key's certificate)",
                    );
                }
                None
            }
        };
        let tls = RedisTls { ca, client };
        let any_file = ["FULFILLD_REDIS_CA_FILE", "FULFILLD_REDIS_CLIENT_CERT_FILE"]
            .iter()
            .any(|s| self.optional(s).is_some());
        if any_file && !url.trim_start().starts_with("rediss://") {
            self.fail(
                "FULFILLD_REDIS_CA_FILE",
                "TLS files are set but REDIS_URL is not rediss://: use rediss:// for TLS, or \
                 unset FULFILLD_REDIS_CA_FILE / FULFILLD_REDIS_CLIENT_CERT_FILE",
            );
        }
        tls
    }

    fn required(&mut self, setting: &'static str) -> Option<String> {
        let value = self.optional(setting);
        if value.is_none() {
            self.fail(setting, "is required but not set");
        }
        value
    }

    fn url(&mut self, setting: &'static str, default: Option<&str>) -> Option<Url> {
        let text = match (self.optional(setting), default) {
            (Some(text), _) => text,
            (None, Some(default)) => default.to_owned(),
            (None, None) => {
                self.fail(setting, "is required but not set");
                return None;
            }
        };
        match Url::parse(&text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(url) => {
                self.fail(
                    setting,
                    format!(
                        "expected an http(s) URL with a host, got `{}`",
                        url.as_str()
                    ),
                );
                None
            }
            Err(err) => {
                self.fail(setting, format!("malformed URL `{text}`: {err}"));
                None
            }
        }
    }

    /// An `IP:port` setting; `default` when unset.
    fn socket_addr(
        &mut self,
        setting: &'static str,
        default: impl Into<std::net::SocketAddr>,
    ) -> std::net::SocketAddr {
        let default = default.into();
        let Some(text) = self.optional(setting) else {
            return default;
        };
        text.parse().unwrap_or_else(|_| {
            self.fail(
                setting,
                format!("expected an address like {default}, got `{text}`"),
            );
            default
        })
    }

    fn boolean(&mut self, setting: &'static str, default: bool) -> bool {
        match self
            .optional(setting)
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None => default,
            Some("true" | "1" | "yes") => true,
            Some("false" | "0" | "no") => false,
            Some(other) => {
                self.fail(setting, format!("expected true or false, got `{other}`"));
                default
            }
        }
    }

    fn private_key(&mut self, setting: &'static str) -> Option<Secret> {
        let path = self.required(setting)?;
        match std::fs::read_to_string(&path) {
            Ok(pem) if pem.contains("PRIVATE KEY-----") => Some(Secret::new(pem)),
            Ok(_) => {
                self.fail(setting, format!("{path} does not hold a PEM private key"));
                None
            }
            Err(err) => {
                self.fail(setting, format!("cannot read key file {path}: {err}"));
                None
            }
        }
    }

    fn number(&mut self, setting: &'static str, default: u64) -> u64 {
        match self.optional(setting) {
            None => default,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    self.fail(
                        setting,
                        format!("expected a positive whole number, got `{text}`"),
                    );
                    default
                }
            },
        }
    }

    /// A positive whole number no larger than `max`; `default` when unset.
    /// A whole number of at least `min`; below it, the setting is named with the bound.
    fn at_least(&mut self, setting: &'static str, default: u64, min: u64) -> u64 {
        let value = self.number(setting, default);
        if value < min {
            self.fail(setting, format!("must be at least {min}, got {value}"));
            return default;
        }
        value
    }

    fn bounded(&mut self, setting: &'static str, default: u64, max: u64) -> u64 {
        let value = self.number(setting, default);
        if value > max {
            self.fail(setting, format!("must be at most {max}, got {value}"));
            return default;
        }
        value
    }

    fn serve(&mut self) -> ServeConfig {
        let store = match self.optional("REDIS_URL") {
            Some(url) => {
                for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                    if !(one.starts_with("redis://")
                        || one.starts_with("rediss://")
                        || one.starts_with("redis+unix://")
                        || one.starts_with("unix://"))
                    {
                        // The URL may hold a password: name the scheme only.
                        let scheme = one.split_once("://").map_or("none", |(s, _)| s);
                        self.fail(
                            "REDIS_URL",
                            format!("expected a redis:// or rediss:// URL, got scheme `{scheme}`"),
                        );
                    }
                }
                let namespace = self
                    .optional("FULFILLD_REDIS_NAMESPACE")
                    .unwrap_or_else(|| "fulfilld".to_owned());
                if namespace.contains(['{', '}', ' ']) {
                    self.fail(
                        "FULFILLD_REDIS_NAMESPACE",
                        format!("must not contain braces or spaces, got `{namespace}`"),
                    );
                }
                let topology = self.redis_topology(&url);
                let tls = self.redis_tls(&url);
                StoreConfig::Redis {
                    url: Secret::from(url),
                    namespace,
                    topology,
                    tls,
                }
            }
            None => StoreConfig::Embedded {
                path: PathBuf::from(
                    self.optional("FULFILLD_STATE_DIR")
                        .unwrap_or_else(|| "fulfilld-state".to_owned()),
                )
                .join("fulfilld.redb"),
            },
        };
        let http_addr = self.socket_addr("FULFILLD_HTTP_ADDR", ([127, 0, 0, 1], 8080));
        let admin_addr = self.socket_addr("FULFILLD_ADMIN_ADDR", ([127, 0, 0, 1], 8081));
        let http_max_connections = self.bounded("FULFILLD_HTTP_MAX_CONNECTIONS", 256, 65_536);
        let admin_max_connections = self.bounded("FULFILLD_ADMIN_MAX_CONNECTIONS", 64, 65_536);
        let header_read_ms = self.bounded("FULFILLD_HEADER_READ_TIMEOUT_MS", 10_000, 300_000);
        // The CLI waits 300 s for an admin answer: a longer limit would only hide the 408.
        let admin_request_ms = self.bounded("FULFILLD_ADMIN_REQUEST_TIMEOUT_MS", 120_000, 300_000);
        let environment = self
            .optional("FULFILLD_ENV")
            .unwrap_or_else(|| "production".to_owned());
        // 0 is allowed: an ingest-only replica (the subscriber without workers).
        let workers = match self.optional("FULFILLD_WORKERS") {
            None => 4,
            Some(text) => text.trim().parse::<u64>().unwrap_or_else(|_| {
                self.fail(
                    "FULFILLD_WORKERS",
                    format!("expected a whole number, got `{text}`"),
                );
                4
            }),
        };
        let lease_ms = self.at_least("FULFILLD_LEASE_TTL_MS", 15_000, 1_000);
        let reclaim_ms = self.at_least("FULFILLD_JOB_RECLAIM_MS", 60_000, 300);
        let max_deliveries = self.number("FULFILLD_MAX_DELIVERIES", 5);
        let stall_ms = self.at_least("FULFILLD_QUEUE_STALL_MS", 600_000, 1_000);
        let grace_ms = self.number("FULFILLD_SHUTDOWN_GRACE_MS", 30_000);
        let journal_hours = self.at_least("FULFILLD_JOURNAL_RETENTION_HOURS", 168, 1);
        let journal_capture = self.boolean("FULFILLD_JOURNAL_CAPTURE", false);
        let component_max_bytes = self.number(
            "FULFILLD_COMPONENT_MAX_BYTES",
            crate::registry::gates::DEFAULT_MAX_SIZE as u64,
        );
        let admin_token = self.optional("FULFILLD_ADMIN_TOKEN").map(Secret::from);
        if admin_token
            .as_ref()
            .is_some_and(|token| token.expose().trim().len() < 16)
        {
            self.fail(
                "FULFILLD_ADMIN_TOKEN",
                "must be at least 16 characters (a random secret)",
            );
        }
        let public_key = self
            .optional("FULFILLD_COMPONENT_PUBLIC_KEY")
            .and_then(|path| {
                crate::registry::signature::read_public_key(Path::new(&path))
                    .map_err(|err| self.fail("FULFILLD_COMPONENT_PUBLIC_KEY", err))
                    .ok()
            });
        let require_signed = self.boolean("FULFILLD_REQUIRE_SIGNED", false);
        if require_signed && self.optional("FULFILLD_COMPONENT_PUBLIC_KEY").is_none() {
            self.fail(
                "FULFILLD_REQUIRE_SIGNED",
                "is true but FULFILLD_COMPONENT_PUBLIC_KEY is not set: nothing could verify a signature",
            );
        }
        let poll_ms = self.number("FULFILLD_COMPONENT_POLL_MS", 1000).max(50);
        if self.optional("FULFILLD_DEPLOY_DIR").is_some()
            && self.optional("FULFILLD_REGISTRY_DIR").is_none()
        {
            self.fail(
                "FULFILLD_DEPLOY_DIR",
                "needs FULFILLD_REGISTRY_DIR: deployed versions are kept in the registry",
            );
        }
        let replica_id = self.optional("FULFILLD_REPLICA_ID").unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "fulfilld".to_owned());
            format!(
                "{host}-{}-{:04x}",
                std::process::id(),
                rand::random::<u16>()
            )
        });
        ServeConfig {
            store,
            http_addr,
            admin_addr,
            http_max_connections: usize::try_from(http_max_connections).unwrap_or(256),
            admin_max_connections: usize::try_from(admin_max_connections).unwrap_or(64),
            header_read_timeout: Duration::from_millis(header_read_ms),
            admin_request_timeout: Duration::from_millis(admin_request_ms),
            environment,
            workers: usize::try_from(workers.min(1024)).unwrap_or(4),
            lease_ttl: Duration::from_millis(lease_ms),
            reclaim_after: Duration::from_millis(reclaim_ms),
            max_deliveries: u32::try_from(max_deliveries).unwrap_or(u32::MAX),
            queue_stall: Duration::from_millis(stall_ms),
            shutdown_grace: Duration::from_millis(grace_ms),
            journal_retention: Duration::from_secs(journal_hours.min(24 * 365) * 3600),
            journal_capture,
            replica_id,
            registry_dir: self.optional("FULFILLD_REGISTRY_DIR").map(PathBuf::from),
            admin_token,
            component_max_bytes: usize::try_from(component_max_bytes).unwrap_or(usize::MAX),
            signatures: crate::registry::signature::SignaturePolicy {
                key: public_key,
                require: require_signed,
            },
            deploy_dir: self.optional("FULFILLD_DEPLOY_DIR").map(PathBuf::from),
            component_poll: Duration::from_millis(poll_ms),
        }
    }

    fn traces(&mut self) -> Option<TraceSettings> {
        const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
        const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
        let signal = self.optional(TRACES_ENDPOINT).is_some();
        if !signal && self.optional(ENDPOINT).is_none() {
            return None;
        }
        if self.boolean("OTEL_SDK_DISABLED", false) {
            return None;
        }
        // The signal's own setting wins over the general one, as the specification has it.
        let protocol_setting = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find(|setting| self.optional(setting).is_some());
        let protocol = match protocol_setting {
            None => Protocol::HttpProtobuf,
            Some(setting) => match self.optional(setting).unwrap_or_default().trim() {
                "http/protobuf" => Protocol::HttpProtobuf,
                "grpc" => Protocol::Grpc,
                "http/json" => {
                    self.fail(
                        setting,
                        "http/json is not supported by this build: use http/protobuf or grpc",
                    );
                    Protocol::HttpProtobuf
                }
                other => {
                    self.fail(
                        setting,
                        format!("expected http/protobuf or grpc, got `{other}`"),
                    );
                    Protocol::HttpProtobuf
                }
            },
        };
        // The signal's endpoint is used as it is; the general one is a base to which HTTP adds
        // `/v1/traces` (gRPC has no path).
        let endpoint = if signal {
            self.url(TRACES_ENDPOINT, None)
        } else {
            self.url(ENDPOINT, None).map(|mut url| {
                if protocol == Protocol::HttpProtobuf {
                    let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
                    url.set_path(&path);
                }
                url
            })
        };
        let service = self.optional("OTEL_SERVICE_NAME");
        let mut attributes: Vec<(String, String)> = Vec::new();
        if let Some(text) = self.optional("OTEL_RESOURCE_ATTRIBUTES") {
            for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let parsed = entry.split_once('=').and_then(|(key, value)| {
                    let key = key.trim();
                    let value = percent_encoding::percent_decode_str(value.trim())
                        .decode_utf8()
                        .ok()?;
                    (!key.is_empty()).then(|| (key.to_owned(), value.into_owned()))
                });
                match parsed {
                    Some((key, value)) => {
                        attributes.retain(|(k, _)| *k != key);
                        attributes.push((key, value));
                    }
                    None => self.fail(
                        "OTEL_RESOURCE_ATTRIBUTES",
                        format!(
                            "expected key=value pairs separated by commas (values \
                             percent-encoded), got `{entry}`"
                        ),
                    ),
                }
            }
        }
        // service.name: OTEL_SERVICE_NAME, else the one in OTEL_RESOURCE_ATTRIBUTES, else ours.
        let from_attributes = attributes
            .iter()
            .position(|(key, _)| key == "service.name")
            .map(|at| attributes.remove(at).1);
        let mut resource = vec![(
            "service.name".to_owned(),
            service
                .or(from_attributes)
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        )];
        if !attributes.iter().any(|(key, _)| key == "service.version") {
            resource.push((
                "service.version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            ));
        }
        resource.extend(attributes);
        let timeout_setting = if self.optional("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
        } else {
            "OTEL_EXPORTER_OTLP_TIMEOUT"
        };
        let timeout_ms = self.bounded(timeout_setting, 10_000, 600_000);
        let delay_ms = self.bounded("OTEL_BSP_SCHEDULE_DELAY", 5_000, 600_000);
        let queue = self.bounded("OTEL_BSP_MAX_QUEUE_SIZE", 2_048, 1 << 20);
        let batch = self.bounded("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1 << 20);
        if batch > queue {
            self.fail(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                format!("must be at most OTEL_BSP_MAX_QUEUE_SIZE ({queue}), got {batch}"),
            );
        }
        Some(TraceSettings {
            endpoint: endpoint?,
            protocol,
            resource,
            timeout: Duration::from_millis(timeout_ms),
            schedule_delay: Duration::from_millis(delay_ms),
            max_queue_size: usize::try_from(queue).unwrap_or(2_048),
            max_export_batch_size: usize::try_from(batch).unwrap_or(512),
        })
    }

    fn runtime(&mut self) -> RuntimeConfig {
        let defaults = RuntimeConfig::default();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cpu = self.number("FULFILLD_CPU_DEADLINE_MS", millis(defaults.cpu_deadline));
        let wall = self.number("FULFILLD_JOB_DEADLINE_MS", millis(defaults.wall_deadline));
        let memory_mb = self.number("FULFILLD_MEMORY_CAP_MB", (defaults.memory_cap >> 20) as u64);
        let calls = self.number(
            "FULFILLD_MAX_HOST_CALLS",
            u64::from(defaults.max_host_calls),
        );
        let timeout = self.number("FULFILLD_CALL_TIMEOUT_MS", millis(defaults.call_timeout));
        let instances = self.number("FULFILLD_MAX_INSTANCES", u64::from(defaults.max_instances));
        let hold_ttl = self.number("FULFILLD_HOLD_TTL_MS", millis(defaults.hold_ttl));
        let text_max = self.at_least(
            "FULFILLD_COMPONENT_TEXT_MAX_BYTES",
            defaults.text_max as u64,
            64,
        );
        let result_max = self.at_least(
            "FULFILLD_HOST_RESULT_MAX_BYTES",
            defaults.result_max as u64,
            1024,
        );
        let policy = match self.optional("FULFILLD_POLICY_FILE") {
            None => CapabilityPolicy::default(),
            Some(path) => CapabilityPolicy::load(Path::new(&path)).unwrap_or_else(|err| {
                self.fail("FULFILLD_POLICY_FILE", crate::error::chain(&err));
                CapabilityPolicy::default()
            }),
        };
        RuntimeConfig {
            cpu_deadline: Duration::from_millis(cpu),
            wall_deadline: Duration::from_millis(wall),
            memory_cap: usize::try_from(memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
            max_host_calls: u32::try_from(calls).unwrap_or(u32::MAX),
            call_timeout: Duration::from_millis(timeout),
            max_instances: u32::try_from(instances).unwrap_or(u32::MAX),
            hold_ttl: Duration::from_millis(hold_ttl.max(1)),
            policy,
            text_max: usize::try_from(text_max).unwrap_or(usize::MAX),
            result_max: usize::try_from(result_max).unwrap_or(usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_path() -> String {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/keys/test_private.pem"
        )
        .to_owned()
    }

    fn base() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("SF_LOGIN_URL", "https://login.salesforce.com".to_owned()),
            ("SF_CLIENT_ID", "3MVG9-client".to_owned()),
            ("SF_USERNAME", "integration@example.com".to_owned()),
            ("SF_PRIVATE_KEY_PATH", key_path()),
            ("WHMCS_URL", "https://billing.example.com".to_owned()),
            ("WHMCS_IDENTIFIER", "ident".to_owned()),
            ("WHMCS_SECRET", "s3cret-value".to_owned()),
        ])
    }

    fn load(env: &BTreeMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|key| env.get(key).cloned())
    }

    #[test]
    fn a_complete_environment_loads_with_defaults() {
        let config = load(&base()).unwrap();
        assert_eq!(config.channel, DEFAULT_CHANNEL);
        assert_eq!(config.replay, ReplayStart::Latest);
        assert_eq!(config.salesforce.audience, "https://login.salesforce.com");
        assert!(!format!("{config:?}").contains("s3cret-value"));
        assert!(!format!("{config:?}").contains("PRIVATE KEY"));
        assert!(
            config
                .exposed()
                .keys()
                .all(|k| EXPOSED_SETTINGS.contains(&k.as_str())),
            "without FULFILLD_CONFIG_ settings only the runbook's exposed settings"
        );
    }

    fn audience_for(login_url: &str) -> String {
        let mut env = base();
        env.insert("SF_LOGIN_URL", login_url.to_owned());
        load(&env).unwrap().salesforce.audience
    }

    #[test]
    fn the_default_audience_follows_salesforces_rules() {
        let cases = [
            // Production and sandbox login endpoints are their own audience.
            (
                "https://login.salesforce.com",
                "https://login.salesforce.com",
            ),
            (
                "https://login.salesforce.com/",
                "https://login.salesforce.com",
            ),
            ("https://test.salesforce.com", "https://test.salesforce.com"),
            (
                "https://test.salesforce.com/",
                "https://test.salesforce.com",
            ),
            // A My Domain login URL: production -> login, sandbox -> test.
            (
                "https://acme.my.salesforce.com",
                "https://login.salesforce.com",
            ),
            (
                "https://ACME.my.salesforce.com/",
                "https://login.salesforce.com",
            ),
            (
                "https://acme--uat.sandbox.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            (
                "https://acme--uat.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            (
                "https://acme--uat.cs42.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            (
                "https://site-force-1234-dev-ed.scratch.my.salesforce.com",
                "https://test.salesforce.com",
            ),
            // An Experience Cloud site: its URL including the path.
            (
                "https://mysite.my.site.com/customers",
                "https://mysite.my.site.com/customers",
            ),
            (
                "https://mysite.my.site.com/customers/",
                "https://mysite.my.site.com/customers",
            ),
            (
                "https://site.force.com/customers?x=1#top",
                "https://site.force.com/customers",
            ),
            (
                "https://acme--uat.sandbox.my.site.com/partners",
                "https://acme--uat.sandbox.my.site.com/partners",
            ),
            ("https://portal.example.com", "https://portal.example.com"),
            // The sandbox and other local endpoints: their origin (the port kept).
            ("http://127.0.0.1:8443", "http://127.0.0.1:8443"),
        ];
        for (login_url, audience) in cases {
            assert_eq!(audience_for(login_url), audience, "{login_url}");
        }
    }

    #[test]
    fn sf_audience_overrides_the_default() {
        let mut env = base();
        env.insert(
            "SF_LOGIN_URL",
            "https://mysite.my.site.com/customers".into(),
        );
        env.insert("SF_AUDIENCE", "https://login.salesforce.com".into());
        assert_eq!(
            load(&env).unwrap().salesforce.audience,
            "https://login.salesforce.com"
        );
    }

    #[test]
    fn component_config_overrides_are_read_by_key_and_bad_ones_named() {
        let vars = [
            ("FULFILLD_CONFIG_PROVISIONING_NOTE", "rush"),
            ("PATH", "/usr/bin"),
            ("FULFILLD_CONFIG_PORTAL_PRICEBOOK_ID", "01s"),
            (
                "FULFILLD_CONFIG_SF_PROVISION_EVENT_CHANNEL",
                "/event/Other__e",
            ),
        ];
        let overrides =
            component_overrides(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                .unwrap();
        assert_eq!(
            overrides,
            BTreeMap::from([
                ("PORTAL_PRICEBOOK_ID".to_owned(), "01s".to_owned()),
                ("PROVISIONING_NOTE".to_owned(), "rush".to_owned()),
                (
                    "SF_PROVISION_EVENT_CHANNEL".to_owned(),
                    "/event/Other__e".to_owned()
                ),
            ])
        );
        let bad = [("FULFILLD_CONFIG_bad-key", "s3cret-value")];
        let err = component_overrides(bad.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .unwrap_err()
            .to_string();
        assert!(err.contains("FULFILLD_CONFIG_bad-key"), "{err}");
        assert!(!err.contains("s3cret-value"), "{err}");
        let mut config = load(&base()).unwrap();
        config.component_config = overrides;
        let exposed = config.exposed();
        assert_eq!(
            exposed.get("PROVISIONING_NOTE").map(String::as_str),
            Some("rush")
        );
        assert_eq!(
            exposed
                .get("SF_PROVISION_EVENT_CHANNEL")
                .map(String::as_str),
            Some("/event/Other__e"),
            "a FULFILLD_CONFIG_ setting wins over the runbook setting of that name"
        );
    }

    #[test]
    fn subscriber_options_follow_the_replay_setting_and_the_stored_cursor() {
        let mut env = base();
        env.insert("SF_EVENTS_REPLAY", "ALL".into());
        env.insert("SF_PUBSUB_ENDPOINT", "http://127.0.0.1:7443".into());
        let config = load(&env).unwrap();
        let opts = config.subscriber_options(None);
        assert_eq!(opts.start, ReplayFrom::Earliest);
        assert_eq!(opts.fallback, ReplayStart::Earliest);
        assert_eq!(opts.channel, DEFAULT_CHANNEL);
        assert_eq!(opts.endpoint.as_str(), "http://127.0.0.1:7443/");
        let stored = ReplayId::from_u64(42);
        let opts = config.subscriber_options(Some(stored.clone()));
        assert_eq!(opts.start, ReplayFrom::After(stored));
        assert_eq!(opts.fallback, ReplayStart::Earliest);
        // No HTTP/2 pings; half-open streams are found by Salesforce's keepalive going missing.
        assert_eq!(opts.ping_interval, None);
        assert_eq!(opts.idle_timeout, Duration::from_secs(300));

        env.insert("SF_PUBSUB_IDLE_TIMEOUT_MS", "1500".into());
        let opts = load(&env).unwrap().subscriber_options(None);
        assert_eq!(opts.idle_timeout, Duration::from_millis(1500));
        for bad in ["0", "soon", "3600001"] {
            env.insert("SF_PUBSUB_IDLE_TIMEOUT_MS", bad.into());
            let err = load(&env).unwrap_err().to_string();
            assert!(err.contains("SF_PUBSUB_IDLE_TIMEOUT_MS"), "{err}");
        }
    }

    #[test]
    fn an_unusable_ca_file_is_named() {
        for setting in ["SF_PUBSUB_CA_FILE", "SF_CA_FILE"] {
            let mut env = base();
            env.insert(setting, key_path());
            let err = load(&env).unwrap_err().to_string();
            assert!(
                err.contains(setting) && err.contains("no PEM certificate"),
                "{err}"
            );
            env.insert(setting, "/nonexistent/ca.pem".into());
            let err = load(&env).unwrap_err().to_string();
            assert!(
                err.contains(setting) && err.contains("cannot read /nonexistent/ca.pem"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_admin_commands_name_their_missing_setting() {
        let admin = |env: &[(&str, &str)]| {
            let env: BTreeMap<String, String> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            AdminClientConfig::from_lookup(|key| env.get(key).cloned())
        };
        let err = admin(&[("FULFILLD_ADMIN_TOKEN", "t")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FULFILLD_ADMIN_URL: is required (the host's admin API address, FULFILLD_ADMIN_ADDR, e.g. http://127.0.0.1:8081)"
        );
        let err = admin(&[("FULFILLD_ADMIN_URL", "http://h:8080")]).unwrap_err();
        assert_eq!(err.to_string(), "FULFILLD_ADMIN_TOKEN: is required");
        let ok = admin(&[
            ("FULFILLD_ADMIN_URL", "http://h:8080"),
            ("FULFILLD_ADMIN_TOKEN", "token-value-1234"),
        ])
        .unwrap();
        assert_eq!(ok.user, "cli");
        assert!(!format!("{ok:?}").contains("token-value-1234"));
    }

    #[test]
    fn operator_commands_need_only_the_store_and_channel() {
        let env = BTreeMap::from([("FULFILLD_STATE_DIR", "/var/lib/f".to_owned())]);
        let config = OperatorConfig::from_lookup(|key| env.get(key).cloned()).unwrap();
        assert_eq!(config.channel, DEFAULT_CHANNEL);
        assert!(
            matches!(&config.store, StoreConfig::Embedded { path } if path == Path::new("/var/lib/f/fulfilld.redb"))
        );
        let env = BTreeMap::from([("FULFILLD_WORKERS", "many".to_owned())]);
        let err = OperatorConfig::from_lookup(|key| env.get(key).cloned()).unwrap_err();
        assert!(err.to_string().contains("FULFILLD_WORKERS"), "{err}");
    }

    #[test]
    fn every_bad_setting_is_named() {
        let mut env = base();
        env.insert("SF_PRIVATE_KEY_PATH", "/nonexistent/sf-private.key".into());
        env.insert("WHMCS_URL", "not a url".into());
        env.insert("SF_EVENTS_REPLAY", "SOMETIMES".into());
        env.insert("FULFILLD_QUEUE_STALL_MS", "10".into());
        env.insert("FULFILLD_COMPONENT_TEXT_MAX_BYTES", "8".into());
        env.insert("FULFILLD_HOST_RESULT_MAX_BYTES", "100".into());
        env.remove("SF_USERNAME");
        let err = load(&env).unwrap_err().to_string();
        for setting in [
            "SF_PRIVATE_KEY_PATH",
            "WHMCS_URL",
            "SF_EVENTS_REPLAY",
            "SF_USERNAME",
            "FULFILLD_QUEUE_STALL_MS: must be at least 1000, got 10",
            "FULFILLD_COMPONENT_TEXT_MAX_BYTES: must be at least 64, got 8",
            "FULFILLD_HOST_RESULT_MAX_BYTES: must be at least 1024, got 100",
        ] {
            assert!(err.contains(setting), "{setting} missing from: {err}");
        }
        assert!(err.contains("/nonexistent/sf-private.key"), "{err}");
        assert!(!err.contains("s3cret-value"));
    }

    #[test]
    fn serve_settings_default_to_the_embedded_store_and_name_bad_values() {
        let config = load(&base()).unwrap();
        match &config.serve.store {
            StoreConfig::Embedded { path } => {
                assert_eq!(path, &PathBuf::from("fulfilld-state/fulfilld.redb"));
            }
            other => panic!("expected the embedded store, got {other:?}"),
        }
        assert_eq!(config.serve.workers, 4);
        // Loopback unless the operator opens it (issue 14: it was 0.0.0.0).
        assert_eq!(config.serve.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.serve.admin_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.serve.queue_stall, Duration::from_secs(600));

        let mut env = base();
        env.insert("REDIS_URL", "redis://:hunter2@cache:6379/2".into());
        env.insert("FULFILLD_WORKERS", "0".into());
        let config = load(&env).unwrap();
        assert!(
            matches!(config.serve.store, StoreConfig::Redis { ref namespace, .. } if namespace == "fulfilld")
        );
        assert_eq!(config.serve.workers, 0);
        assert!(!format!("{config:?}").contains("hunter2"));

        let mut env = base();
        env.insert("REDIS_URL", "http://:hunter2@cache:6379".into());
        env.insert("FULFILLD_HTTP_ADDR", "everywhere".into());
        env.insert("FULFILLD_LEASE_TTL_MS", "10".into());
        env.insert("FULFILLD_WORKERS", "many".into());
        let err = load(&env).unwrap_err().to_string();
        for setting in [
            "REDIS_URL",
            "FULFILLD_HTTP_ADDR",
            "FULFILLD_LEASE_TTL_MS",
            "FULFILLD_WORKERS",
        ] {
            assert!(err.contains(setting), "{setting} missing from: {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");

        // TLS to Redis: rediss:// with the system's roots.
        let mut env = base();
        env.insert("REDIS_URL", "rediss://:hunter2@cache:6380".into());
        let config = load(&env).unwrap();
        assert!(matches!(
            config.serve.store,
            StoreConfig::Redis {
                topology: RedisTopology::Standalone,
                ..
            }
        ));
    }

    #[test]
    fn redis_topologies_and_tls_files_are_read_and_bad_ones_named() {
        let mut env = base();
        env.insert(
            "REDIS_URL",
            "redis://:hunter2@a:7000,redis://:hunter2@b:7001".into(),
        );
        env.insert("FULFILLD_REDIS_MODE", "cluster".into());
        let config = load(&env).unwrap();
        assert!(matches!(
            config.serve.store,
            StoreConfig::Redis {
                topology: RedisTopology::Cluster,
                ..
            }
        ));

        env.insert("FULFILLD_REDIS_MODE", "sentinel".into());
        env.insert("FULFILLD_REDIS_SENTINEL_MASTER", "mymaster".into());
        let config = load(&env).unwrap();
        assert!(matches!(
            config.serve.store,
            StoreConfig::Redis { topology: RedisTopology::Sentinel { ref master }, .. } if master == "mymaster"
        ));

        // Each problem named, the password never.
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.txt");
        std::fs::write(&not_pem, "hello").unwrap();
        let mut env = base();
        env.insert(
            "REDIS_URL",
            "redis://:hunter2@a:7000,redis://:hunter2@b:7001".into(),
        );
        env.insert("FULFILLD_REDIS_CA_FILE", not_pem.display().to_string());
        env.insert(
            "FULFILLD_REDIS_CLIENT_KEY_FILE",
            "/nonexistent/key.pem".into(),
        );
        let err = load(&env).unwrap_err().to_string();
        for needle in [
            "REDIS_URL: lists 2 URLs",
            "FULFILLD_REDIS_CA_FILE",
            "holds no PEM certificate",
            "FULFILLD_REDIS_CLIENT_KEY_FILE",
            "FULFILLD_REDIS_CLIENT_CERT_FILE",
            "not rediss://",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");

        let mut env = base();
        env.insert("REDIS_URL", "redis://a:6379".into());
        env.insert("FULFILLD_REDIS_MODE", "sentinel".into());
        let err = load(&env).unwrap_err().to_string();
        assert!(err.contains("FULFILLD_REDIS_SENTINEL_MASTER"), "{err}");
        env.insert("FULFILLD_REDIS_MODE", "replicated".into());
        let err = load(&env).unwrap_err().to_string();
        assert!(
            err.contains("FULFILLD_REDIS_MODE") && err.contains("`replicated`"),
            "{err}"
        );
    }
    #[test]
    fn listener_bounds_default_and_refuse_zero_or_too_large() {
        let config = load(&base()).unwrap();
        assert_eq!(config.serve.http_max_connections, 256);
        assert_eq!(config.serve.admin_max_connections, 64);
        assert_eq!(config.serve.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.serve.admin_request_timeout, Duration::from_secs(120));

        let mut env = base();
        env.insert("FULFILLD_HTTP_MAX_CONNECTIONS", "8".into());
        env.insert("FULFILLD_ADMIN_MAX_CONNECTIONS", "2".into());
        env.insert("FULFILLD_HEADER_READ_TIMEOUT_MS", "500".into());
        env.insert("FULFILLD_ADMIN_REQUEST_TIMEOUT_MS", "1500".into());
        let config = load(&env).unwrap();
        assert_eq!(config.serve.http_max_connections, 8);
        assert_eq!(config.serve.admin_max_connections, 2);
        assert_eq!(config.serve.header_read_timeout, Duration::from_millis(500));
        assert_eq!(
            config.serve.admin_request_timeout,
            Duration::from_millis(1500)
        );

        let mut env = base();
        env.insert("FULFILLD_HTTP_MAX_CONNECTIONS", "0".into());
        env.insert("FULFILLD_ADMIN_MAX_CONNECTIONS", "100000".into());
        env.insert("FULFILLD_HEADER_READ_TIMEOUT_MS", "soon".into());
        env.insert("FULFILLD_ADMIN_REQUEST_TIMEOUT_MS", "600000".into());
        let err = load(&env).unwrap_err().to_string();
        for expected in [
            "FULFILLD_HTTP_MAX_CONNECTIONS: expected a positive whole number, got `0`",
            "FULFILLD_ADMIN_MAX_CONNECTIONS: must be at most 65536, got 100000",
            "FULFILLD_HEADER_READ_TIMEOUT_MS: expected a positive whole number, got `soon`",
            "FULFILLD_ADMIN_REQUEST_TIMEOUT_MS: must be at most 300000, got 600000",
        ] {
            assert!(err.contains(expected), "{expected} missing from: {err}");
        }
    }

    fn traces(pairs: &[(&str, &str)]) -> Result<Option<TraceSettings>, ConfigError> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        traces_from_lookup(|key| env.get(key).cloned())
    }

    #[test]
    fn traces_are_off_without_an_endpoint_whatever_else_is_set() {
        assert_eq!(traces(&[]).unwrap(), None);
        // Without an endpoint nothing else is read, not even a bad value.
        let other = [
            ("OTEL_SERVICE_NAME", "x"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", " "),
        ];
        assert_eq!(traces(&other).unwrap(), None);
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(traces(&disabled).unwrap(), None);
    }

    #[test]
    fn traces_default_to_http_protobuf_at_v1_traces_as_fulfilld() {
        let settings = traces(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(settings.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            settings.endpoint.as_str(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            settings.resource,
            [
                ("service.name".to_owned(), "fulfilld".to_owned()),
                (
                    "service.version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned()
                ),
            ]
        );
        assert_eq!(settings.timeout, Duration::from_secs(10));
        assert_eq!(settings.schedule_delay, Duration::from_secs(5));
        assert_eq!(settings.max_queue_size, 2048);
        assert_eq!(settings.max_export_batch_size, 512);

        // A base with a path keeps it; the signal's own endpoint is taken as it is; gRPC adds
        // no path.
        let with_path = traces(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://otel.example/ingest/",
        )])
        .unwrap()
        .unwrap();
        assert_eq!(
            with_path.endpoint.as_str(),
            "https://otel.example/ingest/v1/traces"
        );
        let signal = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:9999/custom",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(signal.endpoint.as_str(), "http://collector:9999/custom");
        let grpc = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(grpc.protocol, Protocol::Grpc);
        assert_eq!(grpc.endpoint.as_str(), "http://collector:4317/");
        // The signal's protocol wins over the general one.
        let signal_protocol = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(signal_protocol.protocol, Protocol::Grpc);
    }

    #[test]
    fn trace_resource_takes_the_service_name_and_attributes_from_the_environment() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let settings = traces(&[
            base,
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=prod, service.name=from-attributes,team=order%20ops,",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            settings.resource,
            [
                ("service.name".to_owned(), "from-attributes".to_owned()),
                (
                    "service.version".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned()
                ),
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("team".to_owned(), "order ops".to_owned()),
            ]
        );
        let named = traces(&[
            base,
            ("OTEL_SERVICE_NAME", "fulfilld-eu"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=loses,service.version=9",
            ),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            named.resource,
            [
                ("service.name".to_owned(), "fulfilld-eu".to_owned()),
                ("service.version".to_owned(), "9".to_owned()),
            ]
        );
    }

    #[test]
    fn every_bad_trace_setting_is_named() {
        let err = traces(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
            ("OTEL_RESOURCE_ATTRIBUTES", "ok=1,novalue"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "20"),
        ])
        .unwrap_err()
        .to_string();
        for expected in [
            "OTEL_EXPORTER_OTLP_ENDPOINT: ",
            "OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or grpc, got `carrier-pigeon`",
            "OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs",
            "`novalue`",
            "OTEL_EXPORTER_OTLP_TIMEOUT: expected a positive whole number, got `soon`",
            "OTEL_BSP_SCHEDULE_DELAY: expected a positive whole number, got `0`",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must be at most OTEL_BSP_MAX_QUEUE_SIZE (10), got 20",
        ] {
            assert!(err.contains(expected), "{expected} missing from: {err}");
        }
        let err = traces(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "ftp://collector/"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: expected an http(s) URL"),
            "{err}"
        );
        assert!(
            err.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: http/json is not supported"),
            "{err}"
        );
    }
}
