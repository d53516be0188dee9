//! The sandbox's Pub/Sub API server: the `eventbus.v1.PubSub` service over real gRPC, following
//! Salesforce's documented semantics (see `docs/sandbox.md` for the list), with fault injection.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Server;
use tonic::{Code, Request, Response, Status, Streaming};
use url::Url;

use super::bus::{EventBus, ReplayProblem, Start};
use super::ping_policy::{PingPolicy, Policed};
use super::{ORDER_EVENT_TOPIC, SandboxError, order_event_schema_v1, tls};
use crate::domain::random_uuid;
use crate::pubsub::codes;
use crate::pubsub::proto::pub_sub_server::{PubSub, PubSubServer};
use crate::pubsub::proto::{
    ConsumerEvent, FetchRequest, FetchResponse, ManagedFetchRequest, ManagedFetchResponse,
    PublishRequest, PublishResponse, ReplayPreset, SchemaInfo, SchemaRequest, TopicInfo,
    TopicRequest,
};

/// Sandbox-chosen `error-code` values for refusals whose real code is not documented.
pub mod sandbox_codes {
    /// `num_requested` <= 0 (status INVALID_ARGUMENT).
    pub const NUM_REQUESTED_INVALID: &str =
        "sfdc.platform.eventbus.grpc.fetch.numrequested.invalid";
    /// A later FetchRequest names another topic (status INVALID_ARGUMENT).
    pub const TOPIC_CHANGED: &str = "sfdc.platform.eventbus.grpc.subscription.topic.mismatch";
    /// No such topic (status NOT_FOUND).
    pub const TOPIC_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.topic.not.found";
    /// No such schema (status NOT_FOUND).
    pub const SCHEMA_NOT_FOUND: &str = "sfdc.platform.eventbus.grpc.schema.not.found";
    /// A publish request with too many events (status INVALID_ARGUMENT).
    pub const PUBLISH_TOO_LARGE: &str = "sfdc.platform.eventbus.grpc.publish.batch.too.large";
}

/// How the sandbox behaves; the defaults are Salesforce's.
#[derive(Debug, Clone)]
pub struct PubSubOptions {
    /// An empty FetchResponse carrying `latest_replay_id` is sent after this long without events
    /// while demand is pending (Salesforce: within 270 s).
    pub keepalive_interval: Duration,
    /// A stream whose pending demand stays at zero this long is closed (Salesforce: ~60 s).
    pub zero_demand_timeout: Duration,
    /// Events older than this are dropped and their replay ids refused (Salesforce: 72 h).
    pub retention: Duration,
    /// Cap on outstanding demand per stream (Salesforce: 100).
    pub max_demand: i32,
    /// The first replay id assigned.
    pub first_replay_id: u64,
    /// Serve TLS with a freshly generated test CA instead of plaintext HTTP/2.
    pub tls: bool,
    /// How often clients may send HTTP/2 pings while the server sends nothing (gRPC servers:
    /// every 5 minutes, 2 strikes; see [`PingPolicy`]).
    pub ping_policy: PingPolicy,
}

impl Default for PubSubOptions {
    fn default() -> Self {
        PubSubOptions {
            keepalive_interval: Duration::from_secs(270),
            zero_demand_timeout: Duration::from_secs(60),
            retention: Duration::from_secs(72 * 3600),
            max_demand: 100,
            first_replay_id: 1_000_000,
            tls: false,
            ping_policy: PingPolicy::default(),
        }
    }
}

/// Decides whether a call's auth metadata is good.
pub trait TokenCheck: Send + Sync + 'static {
    fn check(&self, access_token: &str, instance_url: &str, tenant_id: &str) -> bool;
}

/// Accepts one fixed token (any instance URL and tenant).
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenCheck for StaticToken {
    fn check(&self, access_token: &str, _: &str, _: &str) -> bool {
        access_token == self.0
    }
}

/// A failure injected into every Subscribe stream open at the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// End the stream abruptly, as a transport reset does (status UNAVAILABLE).
    DropStreams,
    /// Fail with INTERNAL and `error-code: sfdc.platform.eventbus.grpc.service.unavailable`.
    ServiceUnavailable,
    /// Fail with UNAUTHENTICATED and `error-code: sfdc.platform.eventbus.grpc.service.auth.error`.
    AuthError,
    /// Half-open: stop sending anything (events, keepalives) but keep the stream open.
    Stall,
}

impl Fault {
    fn status(self) -> Option<Status> {
        match self {
            Fault::DropStreams => Some(Status::unavailable("connection reset (injected)")),
            Fault::ServiceUnavailable => Some(sf_status(
                Code::Internal,
                "The service is unavailable. Try again later. (injected)",
                codes::SERVICE_UNAVAILABLE,
            )),
            Fault::AuthError => Some(sf_status(
                Code::Unauthenticated,
                "The session is invalid or expired. (injected)",
                codes::AUTH_ERROR,
            )),
            Fault::Stall => None,
        }
    }
}

/// Counters for tests and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubSubStats {
    pub subscribe_calls: u64,
    pub open_streams: u64,
    pub fetch_requests: u64,
    /// The highest outstanding demand any client asked for (pending + num_requested), before
    /// the cap.
    pub max_requested_demand: i64,
    pub keepalives_sent: u64,
    pub events_delivered: u64,
    pub streams_closed_for_zero_demand: u64,
    /// Connections closed with GOAWAY `too_many_pings` by the ping policy.
    pub connections_closed_for_pings: u64,
}

#[derive(Default)]
struct Counters {
    subscribe_calls: AtomicU64,
    open_streams: AtomicU64,
    fetch_requests: AtomicU64,
    max_requested_demand: AtomicI64,
    keepalives_sent: AtomicU64,
    events_delivered: AtomicU64,
    streams_closed_for_zero_demand: AtomicU64,
    connections_closed_for_pings: Arc<AtomicU64>,
}

struct Shared {
    bus: EventBus,
    opts: PubSubOptions,
    auth: Arc<dyn TokenCheck>,
    faults: broadcast::Sender<Fault>,
    fail_next: Mutex<Vec<Fault>>,
    delay_ms: AtomicU64,
    counters: Counters,
}

/// A running Pub/Sub sandbox. Dropping it stops the server.
pub struct PubSubSandbox {
    shared: Arc<Shared>,
    endpoint: Url,
    ca_pem: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PubSubSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubSandbox")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl Drop for PubSubSandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl PubSubSandbox {
    /// Serves the Pub/Sub API on `listener`, with `ORDER_EVENT_TOPIC` created on schema v1.
    pub async fn start(
        listener: TcpListener,
        opts: PubSubOptions,
        auth: Arc<dyn TokenCheck>,
    ) -> Result<Self, SandboxError> {
        Self::start_with_pki(listener, opts, auth, None).await
    }

    /// [`Self::start`]; in TLS mode with the given test PKI (the whole sandbox shares one CA),
    /// or a fresh one when `pki` is none.
    pub(crate) async fn start_with_pki(
        listener: TcpListener,
        opts: PubSubOptions,
        auth: Arc<dyn TokenCheck>,
        pki: Option<tls::TestPki>,
    ) -> Result<Self, SandboxError> {
        let addr = listener.local_addr()?;
        let bus = EventBus::new(opts.retention, opts.first_replay_id);
        bus.create_topic(ORDER_EVENT_TOPIC, order_event_schema_v1())?;
        let shared = Arc::new(Shared {
            bus,
            opts: opts.clone(),
            auth,
            faults: broadcast::channel(16).0,
            fail_next: Mutex::new(Vec::new()),
            delay_ms: AtomicU64::new(0),
            counters: Counters::default(),
        });
        // Connections are accepted (and TLS terminated) here rather than by tonic, so the ping
        // policy can read the HTTP/2 frames: see `ping_policy`.
        let mut server = Server::builder().http2_keepalive_interval(None);
        let (scheme, ca_pem, acceptor) = if opts.tls {
            crate::http::install_crypto_provider();
            let pki = match pki {
                Some(pki) => pki,
                None => tls::generate()?,
            };
            // HTTP/2 only, by ALPN, as gRPC requires.
            let acceptor = tls::acceptor(&pki, &[b"h2".as_slice()])?;
            ("https", Some(pki.ca_pem), Some(acceptor))
        } else {
            ("http", None, None)
        };
        let endpoint = Url::parse(&format!("{scheme}://{addr}"))
            .map_err(|err| SandboxError::Io(std::io::Error::other(err)))?;
        let service = PubSubServer::new(Service(Arc::clone(&shared)))
            .max_decoding_message_size(4 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let router = server.add_service(service);
        let policy = opts.ping_policy;
        let closed_for_pings = Arc::clone(&shared.counters.connections_closed_for_pings);
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener)
                .map(move |accepted| {
                    let acceptor = acceptor.clone();
                    let closed_for_pings = Arc::clone(&closed_for_pings);
                    async move {
                        let tcp = match accepted {
                            Ok(tcp) => tcp,
                            Err(err) => {
                                tracing::debug!(error = %err, "sandbox Pub/Sub: accept failed");
                                // Out of file descriptors and the like repeat at once: do not spin.
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                                return None;
                            }
                        };
                        let _ = tcp.set_nodelay(true);
                        let peer = tcp.peer_addr().ok();
                        let io: Box<dyn Io> = match acceptor {
                            None => Box::new(tcp),
                            Some(acceptor) => {
                                let handshake = tokio::time::timeout(
                                    TLS_HANDSHAKE_TIMEOUT,
                                    acceptor.accept(tcp),
                                );
                                match handshake.await {
                                    Ok(Ok(tls)) => Box::new(tls),
                                    Ok(Err(err)) => {
                                        tracing::debug!(error = %err, "sandbox Pub/Sub: TLS handshake failed");
                                        return None;
                                    }
                                    Err(_) => {
                                        tracing::debug!("sandbox Pub/Sub: TLS handshake timed out");
                                        return None;
                                    }
                                }
                            }
                        };
                        Some(Ok::<_, std::io::Error>(Policed::new(
                            io,
                            policy,
                            closed_for_pings,
                            peer,
                        )))
                    }
                })
                .buffer_unordered(MAX_HANDSHAKES)
                .filter_map(std::future::ready);
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(err) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::warn!(error = %err, "sandbox Pub/Sub server stopped");
            }
        });
        Ok(PubSubSandbox {
            shared,
            endpoint,
            ca_pem,
            stop: Some(stop),
            task,
        })
    }

    /// `http://127.0.0.1:<port>`, or `https://` in TLS mode.
    pub fn endpoint(&self) -> Url {
        self.endpoint.clone()
    }

    /// The test CA to trust, in TLS mode.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The event log.
    pub fn bus(&self) -> EventBus {
        self.shared.bus.clone()
    }

    /// A handle to inject faults and read counters, usable after the server is shared.
    pub fn control(&self) -> PubSubControl {
        PubSubControl {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Applies `fault` to every Subscribe stream open now.
    pub fn inject(&self, fault: Fault) {
        self.control().inject(fault);
    }

    /// The next `n` Subscribe calls fail at once with `fault` (a stall holds them open, silent).
    pub fn fail_next_subscribes(&self, n: usize, fault: Fault) {
        self.control().fail_next_subscribes(n, fault);
    }

    /// Delays every response (slow service); zero turns it off.
    pub fn set_response_delay(&self, delay: Duration) {
        self.control().set_response_delay(delay);
    }

    pub fn stats(&self) -> PubSubStats {
        self.control().stats()
    }
}

/// Fault injection and counters of a running [`PubSubSandbox`]; clones share the server.
#[derive(Clone)]
pub struct PubSubControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PubSubControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubControl").finish_non_exhaustive()
    }
}

impl PubSubControl {
    /// Applies `fault` to every Subscribe stream open now.
    pub fn inject(&self, fault: Fault) {
        let _ = self.shared.faults.send(fault);
    }

    /// The next `n` Subscribe calls fail at once with `fault` (a stall holds them open, silent).
    pub fn fail_next_subscribes(&self, n: usize, fault: Fault) {
        let mut next = self
            .shared
            .fail_next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        next.extend(std::iter::repeat_n(fault, n));
    }

    /// Delays every response (slow service); zero turns it off.
    pub fn set_response_delay(&self, delay: Duration) {
        self.shared.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// What the server has done so far.
    pub fn stats(&self) -> PubSubStats {
        let c = &self.shared.counters;
        PubSubStats {
            subscribe_calls: c.subscribe_calls.load(Ordering::Relaxed),
            open_streams: c.open_streams.load(Ordering::Relaxed),
            fetch_requests: c.fetch_requests.load(Ordering::Relaxed),
            max_requested_demand: c.max_requested_demand.load(Ordering::Relaxed),
            keepalives_sent: c.keepalives_sent.load(Ordering::Relaxed),
            events_delivered: c.events_delivered.load(Ordering::Relaxed),
            connections_closed_for_pings: c.connections_closed_for_pings.load(Ordering::Relaxed),
            streams_closed_for_zero_demand: c
                .streams_closed_for_zero_demand
                .load(Ordering::Relaxed),
        }
    }
}

/// A status as Salesforce sends it: the code, and trailers `error-code`, `rpc-id`, `type`.
pub(crate) fn sf_status(code: Code, message: &str, error_code: &str) -> Status {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = AsciiMetadataValue::try_from(error_code) {
        metadata.insert(codes::ERROR_CODE, value);
    }
    if let Ok(value) = AsciiMetadataValue::try_from(random_uuid()) {
        metadata.insert(codes::RPC_ID, value);
    }
    if let Ok(value) = AsciiMetadataValue::try_from(format!("{code:?}")) {
        metadata.insert(codes::TYPE, value);
    }
    Status::with_metadata(code, message, metadata)
}

fn rpc_id() -> String {
    random_uuid()
}

struct Service(Arc<Shared>);

impl Service {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let get = |key: &str| {
            request
                .metadata()
                .get(key)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
        };
        let refused = |what: &str| {
            sf_status(
                Code::Unauthenticated,
                &format!("Authentication failed: {what}"),
                codes::AUTH_ERROR,
            )
        };
        let (Some(token), Some(instance), Some(tenant)) =
            (get("accesstoken"), get("instanceurl"), get("tenantid"))
        else {
            return Err(refused(
                "the accesstoken, instanceurl and tenantid metadata are required",
            ));
        };
        if !self.0.auth.check(token, instance, tenant) {
            return Err(refused("the access token is invalid or expired"));
        }
        Ok(())
    }

    async fn delay(&self) {
        let ms = self.0.delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    fn take_injected_failure(&self) -> Option<Fault> {
        let mut next = self
            .0
            .fail_next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (!next.is_empty()).then(|| next.remove(0))
    }

    fn record_demand(&self, asked: i64) {
        self.0
            .counters
            .max_requested_demand
            .fetch_max(asked, Ordering::Relaxed);
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PubSub for Service {
    type SubscribeStream = ResponseStream<FetchResponse>;
    type PublishStreamStream = ResponseStream<PublishResponse>;
    type ManagedSubscribeStream = ResponseStream<ManagedFetchResponse>;

    async fn subscribe(
        &self,
        request: Request<Streaming<FetchRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.0
            .counters
            .subscribe_calls
            .fetch_add(1, Ordering::Relaxed);
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let injected = self.take_injected_failure();
        if let Some(status) = injected.and_then(Fault::status) {
            return Err(status);
        }
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::cancelled("the client closed the stream before a request"))?;
        self.0
            .counters
            .fetch_requests
            .fetch_add(1, Ordering::Relaxed);
        let topic = first.topic_name.clone();
        if !self.0.bus.has_topic(&topic) {
            return Err(sf_status(
                Code::NotFound,
                &format!("The topic {topic:?} does not exist or you cannot access it."),
                sandbox_codes::TOPIC_NOT_FOUND,
            ));
        }
        if first.num_requested <= 0 {
            return Err(num_requested_invalid(first.num_requested));
        }
        let preset = ReplayPreset::try_from(first.replay_preset).unwrap_or(ReplayPreset::Latest);
        let Start::After(position) = self
            .0
            .bus
            .start(&topic, preset, &first.replay_id)
            .map_err(|problem| replay_refused(problem, &first.replay_id))?;
        self.record_demand(i64::from(first.num_requested));
        let pending = first.num_requested.min(self.0.opts.max_demand);
        let (tx, rx) = mpsc::channel(8);
        let stream = SubscribeStream {
            shared: Arc::clone(&self.0),
            topic,
            position,
            pending,
            stalled: injected == Some(Fault::Stall),
            tx,
        };
        self.0.counters.open_streams.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_schema(
        &self,
        request: Request<SchemaRequest>,
    ) -> Result<Response<SchemaInfo>, Status> {
        self.authorize(&request)?;
        self.delay().await;
        let schema_id = request.into_inner().schema_id;
        let schema_json = self.0.bus.schema_json(&schema_id).ok_or_else(|| {
            sf_status(
                Code::NotFound,
                &format!("The schema {schema_id:?} does not exist."),
                sandbox_codes::SCHEMA_NOT_FOUND,
            )
        })?;
        Ok(Response::new(SchemaInfo {
            schema_json,
            schema_id,
            rpc_id: rpc_id(),
        }))
    }

    async fn get_topic(
        &self,
        request: Request<TopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        self.authorize(&request)?;
        self.delay().await;
        let tenant = request
            .metadata()
            .get("tenantid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let topic_name = request.into_inner().topic_name;
        let schema_id = self.0.bus.schema_id(&topic_name).ok_or_else(|| {
            sf_status(
                Code::NotFound,
                &format!("The topic {topic_name:?} does not exist or you cannot access it."),
                sandbox_codes::TOPIC_NOT_FOUND,
            )
        })?;
        Ok(Response::new(TopicInfo {
            topic_name,
            tenant_guid: tenant,
            can_publish: true,
            can_subscribe: true,
            schema_id,
            rpc_id: rpc_id(),
        }))
    }

    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.authorize(&request)?;
        self.delay().await;
        publish(&self.0.bus, request.into_inner()).map(Response::new)
    }

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        self.authorize(&request)?;
        let mut inbound = request.into_inner();
        let bus = self.0.bus.clone();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                let item = match inbound.message().await {
                    Ok(Some(publish_request)) => publish(&bus, publish_request),
                    Ok(None) | Err(_) => return,
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn managed_subscribe(
        &self,
        request: Request<Streaming<ManagedFetchRequest>>,
    ) -> Result<Response<Self::ManagedSubscribeStream>, Status> {
        self.authorize(&request)?;
        Err(Status::unimplemented(
            "ManagedSubscribe (beta) is not emulated by the fulfilld sandbox; use Subscribe",
        ))
    }
}

fn publish(bus: &EventBus, request: PublishRequest) -> Result<PublishResponse, Status> {
    let results = bus
        .publish(&request.topic_name, request.events)
        .map_err(|err| match err {
            SandboxError::TooManyEvents(_) => sf_status(
                Code::InvalidArgument,
                &err.to_string(),
                sandbox_codes::PUBLISH_TOO_LARGE,
            ),
            SandboxError::UnknownTopic(_) => sf_status(
                Code::NotFound,
                &err.to_string(),
                sandbox_codes::TOPIC_NOT_FOUND,
            ),
            other => Status::internal(crate::error::chain(&other)),
        })?;
    Ok(PublishResponse {
        results,
        schema_id: bus.schema_id(&request.topic_name).unwrap_or_default(),
        rpc_id: rpc_id(),
    })
}

fn num_requested_invalid(n: i32) -> Status {
    sf_status(
        Code::InvalidArgument,
        &format!("num_requested must be greater than 0, got {n}."),
        sandbox_codes::NUM_REQUESTED_INVALID,
    )
}

fn replay_refused(problem: ReplayProblem, replay_id: &[u8]) -> Status {
    let what = match problem {
        ReplayProblem::Malformed => "is malformed",
        ReplayProblem::Expired => "is older than the retention window",
        ReplayProblem::Unknown => "is not a replay id of this topic",
    };
    sf_status(
        Code::InvalidArgument,
        &format!(
            "The Replay ID validation failed: the replay id {} {what}.",
            hex::encode(replay_id)
        ),
        codes::REPLAY_ID_CORRUPTED,
    )
}

/// One open Subscribe stream.
struct SubscribeStream {
    shared: Arc<Shared>,
    topic: String,
    /// Events after this replay id are still to be delivered.
    position: u64,
    pending: i32,
    stalled: bool,
    tx: mpsc::Sender<Result<FetchResponse, Status>>,
}

impl SubscribeStream {
    async fn run(mut self, mut inbound: Streaming<FetchRequest>) {
        self.serve(&mut inbound).await;
        self.shared
            .counters
            .open_streams
            .fetch_sub(1, Ordering::Relaxed);
    }

    async fn send(&self, response: Result<FetchResponse, Status>) -> bool {
        let ms = self.shared.delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.tx.send(response).await.is_ok()
    }

    async fn serve(&mut self, inbound: &mut Streaming<FetchRequest>) {
        let Some(mut changed) = self.shared.bus.watch(&self.topic) else {
            return;
        };
        let mut faults = self.shared.faults.subscribe();
        let opts = self.shared.opts.clone();
        let mut keepalive_at = Instant::now() + opts.keepalive_interval;
        let mut zero_since = (self.pending == 0).then(Instant::now);
        loop {
            // Faults take effect before anything else the stream would do next.
            match faults.try_recv() {
                Ok(Fault::Stall) => self.stalled = true,
                Ok(fault) => {
                    if let Some(status) = fault.status() {
                        let _ = self.tx.send(Err(status)).await;
                    }
                    return;
                }
                Err(_) => {}
            }
            if self.pending > 0 && !self.stalled {
                let max = usize::try_from(self.pending).unwrap_or(0);
                let (events, _) = self.shared.bus.fetch(&self.topic, self.position, max);
                if let Some((last, _)) = events.last() {
                    let last = *last;
                    let n = i32::try_from(events.len()).unwrap_or(i32::MAX);
                    self.position = last;
                    self.pending -= n;
                    let response = FetchResponse {
                        events: events
                            .into_iter()
                            .map(|(replay, event)| ConsumerEvent {
                                event: Some(event),
                                replay_id: replay.to_be_bytes().to_vec(),
                            })
                            .collect(),
                        latest_replay_id: last.to_be_bytes().to_vec(),
                        rpc_id: rpc_id(),
                        pending_num_requested: self.pending,
                    };
                    if !self.send(Ok(response)).await {
                        return;
                    }
                    self.shared
                        .counters
                        .events_delivered
                        .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                    keepalive_at = Instant::now() + opts.keepalive_interval;
                    if self.pending == 0 {
                        zero_since = Some(Instant::now());
                    }
                    continue;
                }
            }
            let zero_deadline = zero_since.map(|since| since + opts.zero_demand_timeout);
            tokio::select! {
                request = inbound.message() => match request {
                    Ok(Some(request)) => {
                        if let Err(status) = self.more(&request) {
                            let _ = self.send(Err(status)).await;
                            return;
                        }
                        if self.pending > 0 {
                            zero_since = None;
                        }
                    }
                    // The client is gone.
                    Ok(None) | Err(_) => return,
                },
                moved = changed.changed() => {
                    if moved.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(keepalive_at), if self.pending > 0 && !self.stalled => {
                    let latest = self.shared.bus.latest_replay_id(&self.topic);
                    let response = FetchResponse {
                        events: Vec::new(),
                        latest_replay_id: latest.map(|id| id.as_bytes().to_vec()).unwrap_or_default(),
                        rpc_id: rpc_id(),
                        pending_num_requested: self.pending,
                    };
                    if !self.send(Ok(response)).await {
                        return;
                    }
                    self.shared.counters.keepalives_sent.fetch_add(1, Ordering::Relaxed);
                    keepalive_at = Instant::now() + opts.keepalive_interval;
                }
                () = sleep_until_opt(zero_deadline), if zero_deadline.is_some() && !self.stalled => {
                    tracing::debug!(topic = %self.topic, "closing a stream whose demand stayed at zero");
                    self.shared.counters.streams_closed_for_zero_demand.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                fault = faults.recv() => match fault {
                    Ok(Fault::Stall) => self.stalled = true,
                    Ok(fault) => {
                        if let Some(status) = fault.status() {
                            let _ = self.tx.send(Err(status)).await;
                        }
                        return;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = self.tx.closed() => return,
            }
        }
    }

    /// A later FetchRequest: more demand, same topic.
    fn more(&mut self, request: &FetchRequest) -> Result<(), Status> {
        self.shared
            .counters
            .fetch_requests
            .fetch_add(1, Ordering::Relaxed);
        if !request.topic_name.is_empty() && request.topic_name != self.topic {
            return Err(sf_status(
                Code::InvalidArgument,
                &format!(
                    "The topic of a subscription cannot change: subscribed to {:?}, got {:?}.",
                    self.topic, request.topic_name
                ),
                sandbox_codes::TOPIC_CHANGED,
            ));
        }
        if request.num_requested <= 0 {
            return Err(num_requested_invalid(request.num_requested));
        }
        let asked = i64::from(self.pending) + i64::from(request.num_requested);
        self.shared
            .counters
            .max_requested_demand
            .fetch_max(asked, Ordering::Relaxed);
        self.pending = i32::try_from(asked.min(i64::from(self.shared.opts.max_demand)))
            .unwrap_or(self.shared.opts.max_demand);
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// TLS handshakes in progress at once; more wait to be accepted.
const MAX_HANDSHAKES: usize = 64;
/// A client that has not finished its TLS handshake by then is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection's byte stream, plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}
