//! The whole sandbox in one process (`fulfilld sandbox`): the Pub/Sub server, the fake org's
//! OAuth token endpoint and REST API, the fake WHMCS API, and an admin API to seed data, publish
//! events and inject faults.
//!
//! It mints its own JWT key pair at start and writes the private key and a `sandbox.env` file
//! (the settings a `fulfilld` needs to point at it) to its state directory. In TLS mode the
//! Pub/Sub API and the org (token endpoint, userinfo, REST) are served over TLS with one
//! generated test CA, written there too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::pubsub::PubSubControl;
use super::tls::{self, TlsListener};
use super::{
    EventBus, Fault, ORDER_EVENT_TOPIC, PubSubOptions, PubSubSandbox, SandboxError, TokenCheck,
    order_event_schema_v2,
};
use crate::domain::random_uuid;
use crate::fake::http::serve_fake_salesforce_on;
use crate::fake::schema::Schema;
use crate::fake::{
    FakeOrg, FakeSalesforce, FakeSalesforceOptions, FakeWhmcs, FakeWhmcsOptions, FakeWhmcsServer,
    serve_fake_salesforce, serve_fake_whmcs,
};
use crate::testkit::scenario::{SeedFile, apply_schema, seed_org, seed_whmcs};

/// The demo data the sandbox starts with unless told otherwise: the default component's scenario
/// seed (customers with and without a payment method, products, an Order waiting to be
/// provisioned).
pub const DEFAULT_SEED: &str = include_str!("../../../tests/scenarios/_seed.toml");

/// Where and how the sandbox runs.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub bind: IpAddr,
    /// Ports; 0 picks a free one.
    pub admin_port: u16,
    pub salesforce_port: u16,
    pub whmcs_port: u16,
    pub pubsub_port: u16,
    pub pubsub: PubSubOptions,
    /// Where the private key, the env file and the CA (TLS: `sandbox-ca.pem`) are written; none:
    /// nothing written.
    pub state_dir: Option<PathBuf>,
    /// Seed file text (TOML, the scenario seed format); none: start empty.
    pub seed: Option<String>,
    /// The fake org's schema: the standard objects plus the shipped `salesforce/` package by
    /// default; `fulfilld sandbox --salesforce-package` loads other packages instead.
    pub schema: Schema,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_port: 0,
            salesforce_port: 0,
            whmcs_port: 0,
            pubsub_port: 0,
            pubsub: PubSubOptions::default(),
            state_dir: None,
            seed: Some(DEFAULT_SEED.to_owned()),
            schema: Schema::shipped(),
        }
    }
}

/// The WHMCS API credentials the sandbox accepts.
const WHMCS_IDENTIFIER: &str = "sandbox-identifier";
const WHMCS_SECRET: &str = "sandbox-secret";

/// Checks Pub/Sub tokens against the sessions the fake org issued.
struct OrgSessions(Arc<FakeSalesforce>);

impl TokenCheck for OrgSessions {
    fn check(&self, access_token: &str, _instance_url: &str, tenant_id: &str) -> bool {
        self.0.token_is_valid(access_token) && tenant_id == self.0.org_id()
    }
}

/// A running sandbox. Dropping it stops every server.
pub struct Sandbox {
    pubsub: PubSubSandbox,
    salesforce: Arc<FakeSalesforce>,
    whmcs: FakeWhmcsServer,
    admin_url: url::Url,
    env: BTreeMap<String, String>,
    admin: JoinHandle<()>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("admin", &self.admin_url.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.admin.abort();
    }
}

struct AdminState {
    bus: EventBus,
    pubsub: PubSubControl,
    org: Arc<Mutex<FakeOrg>>,
    whmcs: Arc<Mutex<FakeWhmcs>>,
    env: BTreeMap<String, String>,
}

async fn bind(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

impl Sandbox {
    /// Starts every part.
    pub async fn start(config: SandboxConfig) -> anyhow::Result<Sandbox> {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .context("generating the sandbox's JWT key pair")?;
        let private_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding the sandbox's private key")?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .context("encoding the sandbox's public key")?;

        let org = Arc::new(Mutex::new(FakeOrg::with_schema(config.schema.clone())));
        let whmcs = Arc::new(Mutex::new(FakeWhmcs::new()));
        if let Some(seed) = &config.seed {
            apply_seed(seed, &org, &whmcs).map_err(anyhow::Error::msg)?;
        }
        let sf_options = FakeSalesforceOptions {
            public_key_pem: public_pem,
            ..FakeSalesforceOptions::default()
        };
        // `--tls`: one test CA for the Pub/Sub API and the org alike. Clients written for
        // Salesforce expect an `https://` login and instance URL and refuse others.
        let pki = if config.pubsub.tls {
            Some(tls::generate().context("generating the sandbox's test CA")?)
        } else {
            None
        };
        let sf_listener = bind(config.bind, config.salesforce_port).await?;
        let salesforce = match &pki {
            None => serve_fake_salesforce(sf_listener, sf_options.clone(), Arc::clone(&org)).await,
            Some(pki) => {
                let addr = sf_listener.local_addr()?;
                // HTTP/2 or HTTP/1.1 by ALPN; axum serves both.
                let acceptor = tls::acceptor(pki, &[b"h2".as_slice(), b"http/1.1".as_slice()])
                    .context("setting up the fake Salesforce's TLS")?;
                let base = url::Url::parse(&format!("https://{addr}/"))
                    .context("the fake Salesforce's URL")?;
                serve_fake_salesforce_on(
                    TlsListener::new(sf_listener, acceptor)?,
                    base,
                    sf_options.clone(),
                    Arc::clone(&org),
                )
                .await
            }
        };
        let salesforce = Arc::new(salesforce.context("starting the fake Salesforce")?);
        let whmcs_server = serve_fake_whmcs(
            bind(config.bind, config.whmcs_port).await?,
            FakeWhmcsOptions {
                identifier: WHMCS_IDENTIFIER.into(),
                secret: WHMCS_SECRET.into(),
                access_key: None,
            },
            Arc::clone(&whmcs),
        )
        .await
        .context("starting the fake WHMCS")?;
        let pubsub = PubSubSandbox::start_with_pki(
            bind(config.bind, config.pubsub_port).await?,
            config.pubsub.clone(),
            Arc::new(OrgSessions(Arc::clone(&salesforce))),
            pki.clone(),
        )
        .await
        .context("starting the Pub/Sub server")?;
        // Every listener is bound before the state directory is written: a sandbox that cannot
        // start (a port in use) leaves the files of the one already running there as they were.
        let admin_listener = bind(config.bind, config.admin_port).await?;

        let mut env = BTreeMap::new();
        let login = salesforce.url().as_str().trim_end_matches('/').to_owned();
        env.insert("SF_LOGIN_URL".to_owned(), login);
        env.insert("SF_AUDIENCE".to_owned(), sf_options.audience.clone());
        env.insert("SF_CLIENT_ID".to_owned(), sf_options.client_id.clone());
        env.insert("SF_USERNAME".to_owned(), sf_options.username.clone());
        env.insert(
            "SF_PUBSUB_ENDPOINT".to_owned(),
            pubsub.endpoint().as_str().trim_end_matches('/').to_owned(),
        );
        env.insert(
            "SF_PROVISION_EVENT_CHANNEL".to_owned(),
            ORDER_EVENT_TOPIC.to_owned(),
        );
        env.insert(
            "WHMCS_URL".to_owned(),
            whmcs_server.url().as_str().to_owned(),
        );
        env.insert("WHMCS_IDENTIFIER".to_owned(), WHMCS_IDENTIFIER.to_owned());
        env.insert("WHMCS_SECRET".to_owned(), WHMCS_SECRET.to_owned());
        if let Some(seed) = &config.seed
            && let Ok(parsed) = toml::from_str::<SeedFile>(seed)
            && let Some(pricebook) = parsed.config.get("PORTAL_PRICEBOOK_ID")
        {
            env.insert("PORTAL_PRICEBOOK_ID".to_owned(), pricebook.clone());
        }
        if let Some(dir) = &config.state_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the state directory {}", dir.display()))?;
            let key_path = dir.join("sf-private.key");
            std::fs::write(&key_path, private_pem.as_bytes())
                .with_context(|| format!("writing {}", key_path.display()))?;
            env.insert(
                "SF_PRIVATE_KEY_PATH".to_owned(),
                key_path.display().to_string(),
            );
            if let Some(pki) = &pki {
                // One CA for both settings: the Pub/Sub endpoint's and the org's (login URL).
                let ca_path = dir.join("sandbox-ca.pem");
                std::fs::write(&ca_path, &pki.ca_pem)
                    .with_context(|| format!("writing {}", ca_path.display()))?;
                for key in ["SF_PUBSUB_CA_FILE", "SF_CA_FILE"] {
                    env.insert(key.to_owned(), ca_path.display().to_string());
                }
            }
            let env_path = dir.join("sandbox.env");
            let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            std::fs::write(&env_path, text)
                .with_context(|| format!("writing {}", env_path.display()))?;
        }

        let admin_state = Arc::new(AdminState {
            bus: pubsub.bus(),
            pubsub: pubsub.control(),
            org,
            whmcs,
            env: env.clone(),
        });
        let admin_url = url::Url::parse(&format!("http://{}", admin_listener.local_addr()?))
            .context("admin URL")?;
        let app = Router::new()
            .route("/sandbox", get(overview))
            .route("/sandbox/seed", post(seed))
            .route("/sandbox/orders/{id}", get(order))
            .route("/sandbox/events", post(publish))
            .route("/sandbox/events/raw", post(publish_raw))
            .route("/sandbox/schema", post(evolve))
            .route("/sandbox/faults", post(fault))
            .route("/sandbox/whmcs/orders", get(whmcs_orders))
            .with_state(admin_state);
        let admin = tokio::spawn(async move {
            if let Err(err) = axum::serve(admin_listener, app).await {
                tracing::warn!(error = %err, "sandbox admin API stopped");
            }
        });
        Ok(Sandbox {
            pubsub,
            salesforce,
            whmcs: whmcs_server,
            admin_url,
            env,
            admin,
        })
    }

    /// The settings that point a `fulfilld` at this sandbox (`SF_PRIVATE_KEY_PATH` only when a
    /// state directory was given).
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub fn admin_url(&self) -> url::Url {
        self.admin_url.clone()
    }

    pub fn pubsub(&self) -> &PubSubSandbox {
        &self.pubsub
    }

    pub fn salesforce(&self) -> &FakeSalesforce {
        &self.salesforce
    }

    pub fn whmcs(&self) -> &FakeWhmcsServer {
        &self.whmcs
    }
}

fn apply_seed(text: &str, org: &Mutex<FakeOrg>, whmcs: &Mutex<FakeWhmcs>) -> Result<usize, String> {
    let seed: SeedFile = toml::from_str(text).map_err(|err| format!("invalid seed: {err}"))?;
    {
        let mut org = org
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        apply_schema(&seed.schema, &mut org)?;
        seed_org(&seed.org, &mut org)?;
    }
    let mut whmcs = whmcs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    seed_whmcs(&seed.whmcs, &mut whmcs);
    Ok(seed.org.values().map(Vec::len).sum())
}

fn stats_json(pubsub: &PubSubControl) -> Value {
    let s = pubsub.stats();
    json!({
        "subscribe_calls": s.subscribe_calls,
        "open_streams": s.open_streams,
        "fetch_requests": s.fetch_requests,
        "events_delivered": s.events_delivered,
        "keepalives_sent": s.keepalives_sent,
        "max_requested_demand": s.max_requested_demand,
        "streams_closed_for_zero_demand": s.streams_closed_for_zero_demand,
        "connections_closed_for_pings": s.connections_closed_for_pings,
    })
}

/// An admin API error: a status and a message naming the problem.
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad_request(err: impl std::fmt::Display) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, err.to_string())
}

/// The bus refused: the answer names the problem and its cause.
fn refused(err: SandboxError) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, crate::error::chain(&err))
}

type Shared = State<Arc<AdminState>>;

async fn overview(State(state): Shared) -> Json<Value> {
    Json(json!({
        "env": state.env,
        "topic": ORDER_EVENT_TOPIC,
        "schema_id": state.bus.schema_id(ORDER_EVENT_TOPIC),
        "latest_replay_id": state.bus.latest_replay_id(ORDER_EVENT_TOPIC).map(|id| id.to_string()),
        "pubsub": stats_json(&state.pubsub),
    }))
}

async fn seed(State(state): Shared, body: String) -> Result<Json<Value>, AdminError> {
    let records = apply_seed(&body, &state.org, &state.whmcs).map_err(bad_request)?;
    Ok(Json(json!({ "records": records })))
}

async fn order(State(state): Shared, Path(id): Path<String>) -> Result<Json<Value>, AdminError> {
    let org = state
        .org
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    org.get("Order", &id)
        .map(|record| Json(Value::Object(record.clone())))
        .ok_or_else(|| AdminError(StatusCode::NOT_FOUND, format!("no Order {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    order_id: String,
    /// Reuse an EventUuid to publish a duplicate.
    event_uuid: Option<String>,
}

async fn publish(
    State(state): Shared,
    Json(body): Json<PublishBody>,
) -> Result<Json<Value>, AdminError> {
    let uuid = body.event_uuid.unwrap_or_else(random_uuid);
    let replay_id = state
        .bus
        .publish_order(ORDER_EVENT_TOPIC, &body.order_id, &uuid)
        .map_err(refused)?;
    Ok(Json(
        json!({ "replay_id": replay_id.to_string(), "event_uuid": uuid }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    /// The payload, base64; it is published as is (Salesforce does not validate payloads).
    payload_base64: String,
    event_uuid: Option<String>,
    /// Defaults to the topic's current schema.
    schema_id: Option<String>,
}

async fn publish_raw(
    State(state): Shared,
    Json(body): Json<RawBody>,
) -> Result<Json<Value>, AdminError> {
    let payload = base64::engine::general_purpose::STANDARD
        .decode(body.payload_base64.as_bytes())
        .map_err(|err| bad_request(format!("payload_base64: {err}")))?;
    let schema_id = body
        .schema_id
        .or_else(|| state.bus.schema_id(ORDER_EVENT_TOPIC))
        .unwrap_or_default();
    let uuid = body.event_uuid.unwrap_or_else(random_uuid);
    let replay_id = state
        .bus
        .publish_raw(ORDER_EVENT_TOPIC, &schema_id, &uuid, payload)
        .map_err(refused)?;
    Ok(Json(
        json!({ "replay_id": replay_id.to_string(), "event_uuid": uuid }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaBody {
    /// The new schema; defaults to the shipped v2 (one more optional field, `Source__c`).
    schema_json: Option<String>,
}

async fn evolve(
    State(state): Shared,
    Json(body): Json<SchemaBody>,
) -> Result<Json<Value>, AdminError> {
    let schema = body
        .schema_json
        .unwrap_or_else(|| order_event_schema_v2().to_owned());
    let schema_id = state
        .bus
        .evolve_schema(ORDER_EVENT_TOPIC, &schema)
        .map_err(refused)?;
    Ok(Json(json!({ "schema_id": schema_id })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultBody {
    /// `drop`, `unavailable`, `auth` or `stall`.
    fault: Option<String>,
    /// Delay every Pub/Sub response by this much (0 turns it off).
    delay_ms: Option<u64>,
}

async fn fault(
    State(state): Shared,
    Json(body): Json<FaultBody>,
) -> Result<Json<Value>, AdminError> {
    if let Some(name) = &body.fault {
        let fault = match name.as_str() {
            "drop" => Fault::DropStreams,
            "unavailable" => Fault::ServiceUnavailable,
            "auth" => Fault::AuthError,
            "stall" => Fault::Stall,
            other => {
                return Err(bad_request(format!(
                    "unknown fault {other:?}: expected drop, unavailable, auth or stall"
                )));
            }
        };
        state.pubsub.inject(fault);
    }
    if let Some(ms) = body.delay_ms {
        state.pubsub.set_response_delay(Duration::from_millis(ms));
    }
    if body.fault.is_none() && body.delay_ms.is_none() {
        return Err(bad_request("give `fault` and/or `delay_ms`"));
    }
    Ok(Json(json!({ "ok": true })))
}

async fn whmcs_orders(State(state): Shared) -> Json<Value> {
    let whmcs = state
        .whmcs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(serde_json::to_value(whmcs.orders()).unwrap_or(Value::Null))
}

/// Runs the sandbox until `shutdown` resolves, logging what it serves.
pub async fn run(
    config: SandboxConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let sandbox = Sandbox::start(config.clone()).await?;
    tracing::info!(
        admin = %sandbox.admin_url(),
        pubsub = %sandbox.pubsub().endpoint(),
        salesforce = %sandbox.salesforce().url(),
        whmcs = %sandbox.whmcs().url(),
        "sandbox ready"
    );
    if let Some(dir) = &config.state_dir {
        tracing::info!(
            env_file = %dir.join("sandbox.env").display(),
            "point fulfilld at the sandbox with: set -a; . {}; set +a",
            dir.join("sandbox.env").display()
        );
    }
    shutdown.await;
    tracing::info!("sandbox stopping");
    drop(sandbox);
    Ok(())
}
