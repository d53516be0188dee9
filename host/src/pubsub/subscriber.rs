//! The Pub/Sub subscriber: one long-lived, flow-controlled Subscribe stream per channel, kept
//! alive across everything the field throws at it.
//!
//! What it guarantees its consumer:
//! - items arrive in stream order through [`Subscription::next`]; a slow consumer slows the
//!   stream down (demand is only renewed as items are handed over), it never buffers unboundedly;
//! - demand is requested in batches of at most [`MAX_BATCH`] and renewed when half of it is used,
//!   so a busy stream never stalls and an idle one always has demand pending (Salesforce then
//!   sends keepalives instead of closing it);
//! - a keepalive's `latest_replay_id` surfaces as [`Delivery::Cursor`];
//! - an idle timeout (no message at all for longer than Salesforce's 270 s keepalive period)
//!   detects half-open connections, which are replaced; no HTTP/2 pings are sent unless asked
//!   for, and never more often than gRPC servers allow ([`MIN_PING_INTERVAL`]): a server answers
//!   more frequent pings with GOAWAY `too_many_pings`;
//! - every reconnect (exponential backoff with jitter) resumes strictly after the last cursor the
//!   consumer declared durable with [`Subscription::commit`], or from the configured start when
//!   nothing was committed yet;
//! - UNAUTHENTICATED drops the session, mints a new token and resubscribes;
//! - a replay id Salesforce refuses (older than retention, corrupted) is dropped with one loud
//!   error and one [`Delivery::ReplayIdRejected`], and the subscription falls back to the
//!   configured preset: it never resubscribes with the same id;
//! - an event that cannot be decoded becomes [`Delivery::Undecodable`] and the stream goes on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use apache_avro::Schema;
use futures::future::BoxFuture;
use rand::Rng as _;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use url::Url;

use super::proto::pub_sub_client::PubSubClient;
use super::proto::{
    ConsumerEvent, FetchRequest, FetchResponse, ReplayPreset, SchemaRequest, TopicRequest,
};
use super::{Delivery, Fallback, ReceivedEvent, UndecodableEvent, avro, codes};
use crate::domain::{Event, ReplayId};
use crate::error::{CallError, chain};
use crate::salesforce::{SalesforceClient, Session};

/// Salesforce's cap on outstanding demand per stream.
pub const MAX_BATCH: i32 = 100;

/// The shortest HTTP/2 ping interval the subscriber accepts: gRPC servers close a connection that
/// pings more often than every 5 minutes without data with GOAWAY `too_many_pings` (grpc-core's
/// `GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS` default).
pub const MIN_PING_INTERVAL: Duration = Duration::from_secs(300);

/// Salesforce sends a keepalive within this long while demand is pending and no events flow.
pub const SALESFORCE_KEEPALIVE: Duration = Duration::from_secs(270);

/// The default idle timeout: Salesforce's keepalive period plus a margin for the network.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a subscription starts when the consumer has committed nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Only events published after the subscription starts.
    Latest,
    /// The oldest retained event.
    Earliest,
    /// Strictly after this replay id (a cursor stored by an earlier run).
    After(ReplayId),
}

impl From<Fallback> for ReplayFrom {
    fn from(fallback: Fallback) -> Self {
        match fallback {
            Fallback::Latest => ReplayFrom::Latest,
            Fallback::Earliest => ReplayFrom::Earliest,
        }
    }
}

/// How to reach the Pub/Sub API and how to behave on it. [`SubscriberOptions::new`] fills in
/// values suited to Salesforce.
#[derive(Debug, Clone)]
pub struct SubscriberOptions {
    /// `https://api.pubsub.salesforce.com:7443` (TLS with public roots), or `http://host:port`
    /// for a local plaintext server.
    pub endpoint: Url,
    /// The topic, e.g. `/event/OrderProvisionRequested__e`.
    pub channel: String,
    /// Where to start when nothing has been committed.
    pub start: ReplayFrom,
    /// Where to go when Salesforce refuses a replay id (`SF_EVENTS_REPLAY`).
    pub fallback: Fallback,
    /// Events requested at a time, 1 to [`MAX_BATCH`].
    pub batch_size: i32,
    /// With no message at all (events or keepalives) for this long, the stream is considered
    /// half-open and replaced, resuming after the committed cursor. Salesforce sends a keepalive
    /// within 270 s while demand is pending ([`SALESFORCE_KEEPALIVE`]).
    pub idle_timeout: Duration,
    /// HTTP/2 ping interval: `None` (the default) sends no pings, the idle timeout does their
    /// job; otherwise at least [`MIN_PING_INTERVAL`].
    pub ping_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is dropped.
    pub ping_timeout: Duration,
    /// Bound on connecting, and on each unary call (GetTopic, GetSchema).
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles per failed attempt up to `backoff_max`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// An extra CA (PEM) to trust besides the public roots, for test servers.
    pub ca_pem: Option<String>,
}

impl SubscriberOptions {
    /// Options with Salesforce's timings.
    pub fn new(endpoint: Url, channel: impl Into<String>) -> Self {
        SubscriberOptions {
            endpoint,
            channel: channel.into(),
            start: ReplayFrom::Latest,
            fallback: Fallback::Latest,
            batch_size: MAX_BATCH,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            ca_pem: None,
        }
    }
}

/// The options cannot work; found before connecting.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    #[error("the Pub/Sub endpoint {0:?} is not an http:// or https:// URL with a host")]
    Endpoint(String),
    #[error("the Pub/Sub TLS settings are unusable")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the Pub/Sub batch size must be between 1 and {MAX_BATCH}, not {0}")]
    BatchSize(i32),
    #[error("the Pub/Sub channel must not be empty")]
    Channel,
    #[error(
        "the Pub/Sub HTTP/2 ping interval must be at least {} s (gRPC servers close connections that ping more often), not {:?}",
        MIN_PING_INTERVAL.as_secs(),
        .0
    )]
    PingInterval(Duration),
    #[error("the Pub/Sub idle timeout must be positive")]
    IdleTimeout,
}

/// Where Pub/Sub metadata comes from: the Salesforce session shared with the REST client.
pub trait SessionSource: Send + Sync + 'static {
    /// The current session, minting one when there is none.
    fn session(&self) -> BoxFuture<'_, Result<Arc<Session>, CallError>>;
    /// Forgets `stale` after Salesforce refused it.
    fn invalidate<'a>(&'a self, stale: &'a Session) -> BoxFuture<'a, ()>;
}

impl SessionSource for SalesforceClient {
    fn session(&self) -> BoxFuture<'_, Result<Arc<Session>, CallError>> {
        Box::pin(SalesforceClient::session(self))
    }

    fn invalidate<'a>(&'a self, stale: &'a Session) -> BoxFuture<'a, ()> {
        Box::pin(SalesforceClient::invalidate(self, stale))
    }
}

/// What the subscription is doing, for `/health` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionState {
    /// A Subscribe stream is open and has answered.
    pub connected: bool,
    /// Streams opened after the first one.
    pub reconnects: u64,
    /// Token re-mints after UNAUTHENTICATED.
    pub reauthentications: u64,
    /// When the last event arrived.
    pub last_event_at: Option<SystemTime>,
    /// The newest position the stream has reported (delivered, not necessarily durable).
    pub latest_replay_id: Option<ReplayId>,
    /// Why the last stream ended, if it failed.
    pub last_error: Option<String>,
}

/// A running subscription. Dropping it stops the stream.
#[derive(Debug)]
pub struct Subscription {
    deliveries: mpsc::Receiver<Delivery>,
    committed: Arc<Mutex<Option<ReplayId>>>,
    state: watch::Receiver<SubscriptionState>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Subscription {
    /// The next item, or `None` once the subscription has been closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// Declares every item up to `replay_id` durably handled: reconnects resume strictly after
    /// it.
    pub fn commit(&self, replay_id: ReplayId) {
        *lock(&self.committed) = Some(replay_id);
    }

    /// The cursor reconnects would resume after.
    pub fn committed(&self) -> Option<ReplayId> {
        lock(&self.committed).clone()
    }

    /// Watches the subscription's state.
    pub fn state(&self) -> watch::Receiver<SubscriptionState> {
        self.state.clone()
    }

    /// Stops reading and waits for the stream task to end. Items already received stay
    /// uncommitted: a later subscription resumes after the committed cursor.
    pub async fn close(mut self) {
        let _ = self.shutdown.send(true);
        self.deliveries.close();
        if let Some(task) = self.task.take()
            && let Err(err) = task.await
            && err.is_panic()
        {
            tracing::error!(error = %err, "the Pub/Sub subscriber task panicked");
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts subscribing to `opts.channel`. Fails only on options that cannot work; everything that
/// goes wrong later is retried and reported through [`Subscription::state`] and the logs.
pub fn subscribe(
    opts: SubscriberOptions,
    auth: Arc<dyn SessionSource>,
) -> Result<Subscription, SubscriberError> {
    if opts.channel.is_empty() {
        return Err(SubscriberError::Channel);
    }
    if !(1..=MAX_BATCH).contains(&opts.batch_size) {
        return Err(SubscriberError::BatchSize(opts.batch_size));
    }
    if let Some(interval) = opts.ping_interval
        && interval < MIN_PING_INTERVAL
    {
        return Err(SubscriberError::PingInterval(interval));
    }
    if opts.idle_timeout.is_zero() {
        return Err(SubscriberError::IdleTimeout);
    }
    let endpoint = endpoint(&opts)?;
    let buffer = usize::try_from(opts.batch_size).unwrap_or(100);
    let (deliveries_tx, deliveries) = mpsc::channel(buffer);
    let committed = Arc::new(Mutex::new(match &opts.start {
        ReplayFrom::After(id) => Some(id.clone()),
        _ => None,
    }));
    let (state_tx, state) = watch::channel(SubscriptionState::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let worker = Worker {
        default_start: opts.start.clone(),
        opts,
        endpoint,
        auth,
        deliveries: deliveries_tx,
        committed: Arc::clone(&committed),
        state: state_tx,
        schemas: HashMap::new(),
        shutdown: shutdown_rx,
    };
    let task = tokio::spawn(worker.run());
    Ok(Subscription {
        deliveries,
        committed,
        state,
        shutdown,
        task: Some(task),
    })
}

fn endpoint(opts: &SubscriberOptions) -> Result<Endpoint, SubscriberError> {
    let url = &opts.endpoint;
    let bad = || SubscriberError::Endpoint(url.to_string());
    let host = url.host_str().ok_or_else(bad)?;
    let mut endpoint = Endpoint::from_shared(url.as_str().trim_end_matches('/').to_owned())
        .map_err(|_| bad())?
        .connect_timeout(opts.connect_timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("fulfilld/", env!("CARGO_PKG_VERSION")))
        .map_err(|_| bad())?;
    if let Some(interval) = opts.ping_interval {
        // Only while a stream is open (never idle pings: servers refuse those even sooner).
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(opts.ping_timeout)
            .keep_alive_while_idle(false);
    }
    match url.scheme() {
        "http" => {}
        "https" => {
            crate::http::install_crypto_provider();
            let mut tls = ClientTlsConfig::new()
                .with_webpki_roots()
                .domain_name(host.trim_start_matches('[').trim_end_matches(']'));
            if let Some(pem) = &opts.ca_pem {
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(SubscriberError::Tls(
                        "the extra CA is not a PEM certificate".into(),
                    ));
                }
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| SubscriberError::Tls(err.into()))?;
        }
        _ => return Err(bad()),
    }
    Ok(endpoint)
}

/// What GetTopic answered for a channel, asked on a connection of its own (`fulfilld doctor`).
#[derive(Debug, Clone)]
pub struct TopicCheck {
    pub can_subscribe: bool,
    pub can_publish: bool,
    pub schema_id: String,
}

/// Asks GetTopic about `opts.channel` with `session`'s credentials, each step bounded by
/// `opts.connect_timeout`. The error text names the step and Salesforce's error code.
pub async fn get_topic(opts: &SubscriberOptions, session: &Session) -> Result<TopicCheck, String> {
    let endpoint = endpoint(opts).map_err(|err| chain(&err))?;
    let channel = match tokio::time::timeout(opts.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(err)) => {
            return Err(format!(
                "cannot connect to {}: {}",
                opts.endpoint,
                chain(&err)
            ));
        }
        Err(_) => return Err(format!("connecting to {} timed out", opts.endpoint)),
    };
    let metadata = call_metadata(session)?;
    let request = with_metadata(
        TopicRequest {
            topic_name: opts.channel.clone(),
        },
        &metadata,
    );
    let mut client = PubSubClient::new(channel);
    match tokio::time::timeout(opts.connect_timeout, client.get_topic(request)).await {
        Ok(Ok(topic)) => {
            let topic = topic.into_inner();
            Ok(TopicCheck {
                can_subscribe: topic.can_subscribe,
                can_publish: topic.can_publish,
                schema_id: topic.schema_id,
            })
        }
        Ok(Err(status)) => Err(match codes::error_code(&status) {
            Some(code) if !code.is_empty() => {
                format!(
                    "GetTopic: {:?} ({code}): {}",
                    status.code(),
                    status.message()
                )
            }
            _ => format!("GetTopic: {:?}: {}", status.code(), status.message()),
        }),
        Err(_) => Err("GetTopic timed out".to_owned()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a stream ended.
enum StreamEnd {
    /// Closing: the consumer asked or went away.
    Stop,
    /// The server refused the replay id the stream started from.
    ReplayRejected {
        replay_id: ReplayId,
        error_code: String,
        message: String,
    },
    /// The token was refused.
    Auth(Arc<Session>, String),
    /// Anything else worth a reconnect; `healthy` when the stream had been delivering.
    Failed { reason: String, healthy: bool },
}

struct Worker {
    opts: SubscriberOptions,
    endpoint: Endpoint,
    auth: Arc<dyn SessionSource>,
    deliveries: mpsc::Sender<Delivery>,
    committed: Arc<Mutex<Option<ReplayId>>>,
    /// Where to start while nothing is committed; becomes the fallback after a refusal.
    default_start: ReplayFrom,
    state: watch::Sender<SubscriptionState>,
    /// Writer schemas by id; they never change under an id, so this survives reconnects.
    schemas: HashMap<String, Arc<Schema>>,
    shutdown: watch::Receiver<bool>,
}

impl Worker {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut opened: u64 = 0;
        let mut last_was_auth = false;
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let from = match lock(&self.committed).clone() {
                Some(cursor) => ReplayFrom::After(cursor),
                None => self.default_start.clone(),
            };
            if opened > 0 {
                self.state.send_modify(|s| s.reconnects += 1);
            }
            opened += 1;
            let end = self.stream_once(&from).await;
            self.state.send_modify(|s| s.connected = false);
            let delay = match end {
                StreamEnd::Stop => return,
                StreamEnd::ReplayRejected {
                    replay_id,
                    error_code,
                    message,
                } => {
                    self.replay_rejected(replay_id, error_code, message).await;
                    last_was_auth = false;
                    Duration::ZERO
                }
                StreamEnd::Auth(session, reason) => {
                    tracing::warn!(
                        channel = %self.opts.channel,
                        reason = %reason,
                        "Pub/Sub refused the access token; minting a new one and resubscribing"
                    );
                    self.auth.invalidate(&session).await;
                    self.state.send_modify(|s| {
                        s.reauthentications += 1;
                        s.last_error = Some(reason);
                    });
                    // The first refusal is an expired token: retry at once. Refusals in a row
                    // mean something else is wrong, and back off like any failure.
                    let delay = if last_was_auth {
                        failures = failures.saturating_add(1);
                        self.backoff(failures)
                    } else {
                        Duration::ZERO
                    };
                    last_was_auth = true;
                    delay
                }
                StreamEnd::Failed { reason, healthy } => {
                    last_was_auth = false;
                    failures = if healthy {
                        1
                    } else {
                        failures.saturating_add(1)
                    };
                    let delay = self.backoff(failures);
                    tracing::warn!(
                        channel = %self.opts.channel,
                        reason = %reason,
                        retry_in_ms = delay.as_millis() as u64,
                        "Pub/Sub stream ended; reconnecting"
                    );
                    self.state.send_modify(|s| s.last_error = Some(reason));
                    delay
                }
            };
            if !delay.is_zero() {
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// Exponential backoff with jitter: a random delay in the upper half of the doubled window,
    /// so many replicas restarting together do not reconnect in lockstep.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(16);
        let window = self
            .opts
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.opts.backoff_max);
        let half = window / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    async fn replay_rejected(&mut self, replay_id: ReplayId, error_code: String, message: String) {
        let fallback = self.opts.fallback;
        tracing::error!(
            channel = %self.opts.channel,
            replay_id = %replay_id,
            error_code = %error_code,
            fallback = ?fallback,
            reason = %message,
            "Salesforce refused the stored replay id (older than the retention window or corrupted); \
             dropping it and resubscribing from the fallback. Events between the two positions \
             may need a backfill."
        );
        {
            let mut committed = lock(&self.committed);
            if committed.as_ref() == Some(&replay_id) {
                *committed = None;
            }
        }
        self.default_start = ReplayFrom::from(fallback);
        self.state
            .send_modify(|s| s.last_error = Some(format!("replay id {replay_id} refused")));
        let _ = self
            .deliveries
            .send(Delivery::ReplayIdRejected {
                replay_id,
                fallback,
                error_code,
                message,
            })
            .await;
    }

    /// Opens one Subscribe stream and reads it until it ends.
    async fn stream_once(&mut self, from: &ReplayFrom) -> StreamEnd {
        let session = match self.auth.session().await {
            Ok(session) => session,
            Err(err) => {
                return StreamEnd::Failed {
                    reason: format!("no Salesforce session: {err}"),
                    healthy: false,
                };
            }
        };
        let metadata = match call_metadata(&session) {
            Ok(metadata) => metadata,
            Err(reason) => {
                return StreamEnd::Failed {
                    reason,
                    healthy: false,
                };
            }
        };
        let mut shutdown = self.shutdown.clone();
        let connect = tokio::select! {
            connected = self.endpoint.connect() => connected,
            _ = shutdown.changed() => return StreamEnd::Stop,
        };
        let channel = match connect {
            Ok(channel) => channel,
            Err(err) => {
                return StreamEnd::Failed {
                    reason: format!("cannot connect to {}: {}", self.opts.endpoint, chain(&err)),
                    healthy: false,
                };
            }
        };
        let mut client = PubSubClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(4 * 1024 * 1024);

        if let Err(end) = self.check_topic(&mut client, &metadata, &session).await {
            return end;
        }

        let (requests, outbound) = mpsc::channel::<FetchRequest>(4);
        let (preset, replay_id) = match from {
            ReplayFrom::Latest => (ReplayPreset::Latest, Vec::new()),
            ReplayFrom::Earliest => (ReplayPreset::Earliest, Vec::new()),
            ReplayFrom::After(id) => (ReplayPreset::Custom, id.as_bytes().to_vec()),
        };
        let batch = self.opts.batch_size;
        let first = FetchRequest {
            topic_name: self.opts.channel.clone(),
            replay_preset: preset as i32,
            replay_id,
            num_requested: batch,
            auth_refresh: String::new(),
        };
        if requests.send(first).await.is_err() {
            return StreamEnd::Stop;
        }
        let request = with_metadata(ReceiverStream::new(outbound), &metadata);
        let opened = tokio::select! {
            opened = client.subscribe(request) => opened,
            _ = shutdown.changed() => return StreamEnd::Stop,
        };
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return self.classify(status, from, session, false),
        };
        tracing::info!(
            channel = %self.opts.channel,
            from = %describe(from),
            endpoint = %self.opts.endpoint,
            "Pub/Sub subscription started"
        );
        let mut outstanding = batch;
        let mut healthy = false;
        loop {
            let message = tokio::select! {
                message = tokio::time::timeout(self.opts.idle_timeout, inbound.message()) => message,
                _ = shutdown.changed() => return StreamEnd::Stop,
            };
            let response = match message {
                Err(_) => {
                    return StreamEnd::Failed {
                        reason: format!(
                            "no message (events or keepalive) for {} s: treating the stream as half-open",
                            self.opts.idle_timeout.as_secs_f64()
                        ),
                        healthy,
                    };
                }
                Ok(Ok(Some(response))) => response,
                Ok(Ok(None)) => {
                    return StreamEnd::Failed {
                        reason: "the server closed the stream".into(),
                        healthy,
                    };
                }
                Ok(Err(status)) => return self.classify(status, from, session, healthy),
            };
            if !healthy {
                healthy = true;
                self.state.send_modify(|s| {
                    s.connected = true;
                    s.last_error = None;
                });
            }
            let received = i32::try_from(response.events.len()).unwrap_or(i32::MAX);
            outstanding = outstanding.saturating_sub(received).max(0);
            match self.deliver(&mut client, &metadata, response).await {
                Ok(()) => {}
                Err(end) => return end,
            }
            // Renew demand once half of it is used, before it runs out: a busy stream never
            // waits for a round trip, an idle one always has demand (and so gets keepalives).
            if outstanding <= batch / 2 {
                let more = FetchRequest {
                    topic_name: self.opts.channel.clone(),
                    num_requested: batch - outstanding,
                    ..FetchRequest::default()
                };
                if requests.send(more).await.is_err() {
                    return StreamEnd::Failed {
                        reason: "the request stream closed".into(),
                        healthy,
                    };
                }
                outstanding = batch;
            }
        }
    }

    async fn check_topic(
        &self,
        client: &mut PubSubClient<Channel>,
        metadata: &MetadataMap,
        session: &Arc<Session>,
    ) -> Result<(), StreamEnd> {
        let request = with_metadata(
            TopicRequest {
                topic_name: self.opts.channel.clone(),
            },
            metadata,
        );
        let topic = match tokio::time::timeout(self.opts.connect_timeout, client.get_topic(request))
            .await
        {
            Ok(Ok(topic)) => topic.into_inner(),
            Ok(Err(status)) => {
                return Err(self.classify(status, &ReplayFrom::Latest, Arc::clone(session), false));
            }
            Err(_) => {
                return Err(StreamEnd::Failed {
                    reason: "GetTopic timed out".into(),
                    healthy: false,
                });
            }
        };
        if !topic.can_subscribe {
            return Err(StreamEnd::Failed {
                reason: format!(
                    "the integration user may not subscribe to {} (grant Platform Event read in a permission set)",
                    self.opts.channel
                ),
                healthy: false,
            });
        }
        Ok(())
    }

    fn classify(
        &self,
        status: Status,
        from: &ReplayFrom,
        session: Arc<Session>,
        healthy: bool,
    ) -> StreamEnd {
        let code = codes::error_code(&status).unwrap_or_default().to_owned();
        if codes::is_replay_id_rejected(&status)
            && let ReplayFrom::After(replay_id) = from
        {
            return StreamEnd::ReplayRejected {
                replay_id: replay_id.clone(),
                error_code: code,
                message: status.message().to_owned(),
            };
        }
        let reason = if code.is_empty() {
            format!("{:?}: {}", status.code(), status.message())
        } else {
            format!("{:?} ({code}): {}", status.code(), status.message())
        };
        if codes::is_auth_error(&status) {
            return StreamEnd::Auth(session, reason);
        }
        StreamEnd::Failed { reason, healthy }
    }

    /// Hands a response's events (or its keepalive cursor) to the consumer, in order.
    async fn deliver(
        &mut self,
        client: &mut PubSubClient<Channel>,
        metadata: &MetadataMap,
        response: FetchResponse,
    ) -> Result<(), StreamEnd> {
        if response.events.is_empty() {
            if response.latest_replay_id.is_empty() {
                return Ok(());
            }
            let cursor = ReplayId::from_bytes(response.latest_replay_id);
            tracing::debug!(channel = %self.opts.channel, cursor = %cursor, "Pub/Sub keepalive");
            self.state
                .send_modify(|s| s.latest_replay_id = Some(cursor.clone()));
            return self.send(Delivery::Cursor(cursor)).await;
        }
        let mut last = None;
        for consumer_event in response.events {
            let delivery = self.decode(client, metadata, consumer_event).await?;
            last = Some(delivery.replay_id().clone());
            self.send(delivery).await?;
        }
        self.state.send_modify(|s| {
            s.last_event_at = Some(SystemTime::now());
            if last.is_some() {
                s.latest_replay_id = last;
            }
        });
        Ok(())
    }

    async fn send(&self, delivery: Delivery) -> Result<(), StreamEnd> {
        self.deliveries
            .send(delivery)
            .await
            .map_err(|_| StreamEnd::Stop)
    }

    async fn decode(
        &mut self,
        client: &mut PubSubClient<Channel>,
        metadata: &MetadataMap,
        consumer_event: ConsumerEvent,
    ) -> Result<Delivery, StreamEnd> {
        let replay_id = ReplayId::from_bytes(consumer_event.replay_id);
        let event = consumer_event.event.unwrap_or_default();
        let channel = self.opts.channel.clone();
        let undecodable = |reason: String, event: super::proto::ProducerEvent| {
            Delivery::Undecodable(UndecodableEvent {
                replay_id: replay_id.clone(),
                event_uuid: event.id,
                schema_id: event.schema_id,
                channel: channel.clone(),
                payload: event.payload,
                reason,
            })
        };
        let schema = match self.schema(client, metadata, &event.schema_id).await {
            Ok(schema) => schema,
            Err(SchemaLookup::Unusable(reason)) => {
                let delivery = undecodable(reason, event);
                self.warn_undecodable(&delivery);
                return Ok(delivery);
            }
            Err(SchemaLookup::Failed(end)) => return Err(end),
        };
        match avro::decode(&schema, &event.payload) {
            Ok(payload) => {
                let created_date = payload
                    .get("CreatedDate")
                    .and_then(Value::as_i64)
                    .unwrap_or_default();
                Ok(Delivery::Event(ReceivedEvent {
                    event: Event {
                        event_uuid: event.id,
                        replay_id: replay_id.to_string(),
                        schema_id: event.schema_id,
                        channel: self.opts.channel.clone(),
                        created_date,
                        payload,
                        trace_parent: None,
                    },
                    replay_id,
                }))
            }
            Err(err) => {
                let delivery = undecodable(chain(&err), event);
                self.warn_undecodable(&delivery);
                Ok(delivery)
            }
        }
    }

    fn warn_undecodable(&self, delivery: &Delivery) {
        if let Delivery::Undecodable(event) = delivery {
            tracing::error!(
                channel = %self.opts.channel,
                event_uuid = %event.event_uuid,
                replay_id = %event.replay_id,
                schema_id = %event.schema_id,
                reason = %event.reason,
                "Undecodable Platform Event; passing it on with its raw payload"
            );
        }
    }

    async fn schema(
        &mut self,
        client: &mut PubSubClient<Channel>,
        metadata: &MetadataMap,
        schema_id: &str,
    ) -> Result<Arc<Schema>, SchemaLookup> {
        if let Some(schema) = self.schemas.get(schema_id) {
            return Ok(Arc::clone(schema));
        }
        let request = with_metadata(
            SchemaRequest {
                schema_id: schema_id.to_owned(),
            },
            metadata,
        );
        let info = match tokio::time::timeout(self.opts.connect_timeout, client.get_schema(request))
            .await
        {
            Ok(Ok(info)) => info.into_inner(),
            Ok(Err(status)) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => {
                return Err(SchemaLookup::Unusable(format!(
                    "schema {schema_id:?} is unknown to the server: {}",
                    status.message()
                )));
            }
            Ok(Err(status)) => {
                return Err(SchemaLookup::Failed(StreamEnd::Failed {
                    reason: format!("GetSchema {schema_id:?} failed: {status}"),
                    healthy: true,
                }));
            }
            Err(_) => {
                return Err(SchemaLookup::Failed(StreamEnd::Failed {
                    reason: format!("GetSchema {schema_id:?} timed out"),
                    healthy: true,
                }));
            }
        };
        let schema = avro::parse_schema(&info.schema_json)
            .map(Arc::new)
            .map_err(|err| {
                SchemaLookup::Unusable(format!("schema {schema_id:?}: {}", chain(&err)))
            })?;
        tracing::debug!(schema_id, "cached Pub/Sub writer schema");
        self.schemas
            .insert(schema_id.to_owned(), Arc::clone(&schema));
        Ok(schema)
    }
}

enum SchemaLookup {
    /// The schema cannot be had: the event is undecodable.
    Unusable(String),
    /// The call failed: the stream is replaced.
    Failed(StreamEnd),
}

fn describe(from: &ReplayFrom) -> String {
    match from {
        ReplayFrom::Latest => "LATEST".into(),
        ReplayFrom::Earliest => "EARLIEST".into(),
        ReplayFrom::After(id) => format!("after replay id {id}"),
    }
}

/// The metadata every call carries.
fn call_metadata(session: &Session) -> Result<MetadataMap, String> {
    let value = |text: &str, what: &str| {
        AsciiMetadataValue::try_from(text)
            .map_err(|_| format!("the session's {what} cannot be sent as gRPC metadata"))
    };
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "accesstoken",
        value(session.access_token.expose(), "access token")?,
    );
    metadata.insert(
        "instanceurl",
        value(
            session.instance_url.as_str().trim_end_matches('/'),
            "instance URL",
        )?,
    );
    metadata.insert("tenantid", value(&session.tenant_id, "tenant id")?);
    Ok(metadata)
}

fn with_metadata<T>(message: T, metadata: &MetadataMap) -> Request<T> {
    let mut request = Request::new(message);
    *request.metadata_mut() = metadata.clone();
    if let Ok(trace) = AsciiMetadataValue::try_from(crate::domain::random_uuid()) {
        request.metadata_mut().insert("x-client-trace-id", trace);
    }
    request
}
