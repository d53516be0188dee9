//! The subscriber against the sandbox Pub/Sub server, over real gRPC on loopback sockets, with
//! the fake org minting the tokens both sides check.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fulfilld::domain::ReplayId;
use fulfilld::fake::{FakeOrg, FakeSalesforce, FakeSalesforceOptions, serve_fake_salesforce};
use fulfilld::http::http_client;
use fulfilld::pubsub::{
    Delivery, Fallback, ReplayFrom, SubscriberError, SubscriberOptions, Subscription, subscribe,
};
use fulfilld::salesforce::{SalesforceClient, SalesforceConfig};
use fulfilld::sandbox::{
    EventBus, Fault, ORDER_EVENT_TOPIC, PingPolicy, PubSubOptions, PubSubSandbox, TokenCheck,
    order_event_schema_v1, order_event_schema_v2,
};
use fulfilld::secret::Secret;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PRIVATE_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/test_private.pem"
));
const PUBLIC_KEY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/keys/test_public.pem"
));

/// How long a test waits for something that should happen in milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Accepts the tokens the fake org issued.
struct OrgTokens(Arc<FakeSalesforce>);

impl TokenCheck for OrgTokens {
    fn check(&self, access_token: &str, _instance_url: &str, _tenant_id: &str) -> bool {
        self.0.token_is_valid(access_token)
    }
}

struct Env {
    org: Arc<FakeSalesforce>,
    sandbox: PubSubSandbox,
    client: SalesforceClient,
}

impl Env {
    async fn start(opts: PubSubOptions) -> Env {
        let options = FakeSalesforceOptions {
            public_key_pem: PUBLIC_KEY.into(),
            ..FakeSalesforceOptions::default()
        };
        let org = Arc::new(
            serve_fake_salesforce(
                listener().await,
                options.clone(),
                Arc::new(Mutex::new(FakeOrg::new())),
            )
            .await
            .unwrap(),
        );
        let sandbox = PubSubSandbox::start(
            listener().await,
            opts,
            Arc::new(OrgTokens(Arc::clone(&org))),
        )
        .await
        .unwrap();
        let config = SalesforceConfig {
            login_url: org.url(),
            client_id: options.client_id,
            username: options.username,
            private_key_pem: Secret::new(PRIVATE_KEY),
            audience: options.audience,
            api_version: "v66.0".into(),
            timeout: Duration::from_secs(5),
        };
        let client =
            SalesforceClient::new(config, http_client(Duration::from_secs(5)).unwrap()).unwrap();
        Env {
            org,
            sandbox,
            client,
        }
    }

    fn bus(&self) -> EventBus {
        self.sandbox.bus()
    }

    fn options(&self, start: ReplayFrom) -> SubscriberOptions {
        let mut opts = SubscriberOptions::new(self.sandbox.endpoint(), ORDER_EVENT_TOPIC);
        opts.start = start;
        opts.backoff_initial = Duration::from_millis(20);
        opts.backoff_max = Duration::from_millis(200);
        opts.ca_pem = self.sandbox.ca_pem();
        opts
    }

    fn subscribe(&self, opts: SubscriberOptions) -> Subscription {
        subscribe(opts, Arc::new(self.client.clone())).unwrap()
    }

    fn publish(&self, order: &str) -> ReplayId {
        self.bus()
            .publish_order(ORDER_EVENT_TOPIC, order, &uuid_for(order))
            .unwrap()
    }
}

fn uuid_for(order: &str) -> String {
    fulfilld::testkit::test_uuid(order)
}

fn quick() -> PubSubOptions {
    PubSubOptions {
        keepalive_interval: Duration::from_millis(100),
        ..PubSubOptions::default()
    }
}

async fn next(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("no delivery in time")
        .expect("subscription ended")
}

/// The next event, skipping keepalive cursors.
async fn next_event(sub: &mut Subscription) -> Delivery {
    loop {
        match next(sub).await {
            Delivery::Cursor(_) => continue,
            other => return other,
        }
    }
}

/// Waits for the first keepalive: the subscription is live and positioned.
async fn live(sub: &mut Subscription) -> ReplayId {
    loop {
        if let Delivery::Cursor(id) = next(sub).await {
            return id;
        }
    }
}

fn order_of(delivery: &Delivery) -> String {
    match delivery {
        Delivery::Event(event) => event.event.order_id().unwrap_or_default().to_owned(),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn latest_earliest_and_a_stored_cursor_deliver_exactly_the_expected_events() {
    let env = Env::start(quick()).await;
    let before: Vec<ReplayId> = (1..=3).map(|i| env.publish(&format!("801A{i}"))).collect();

    // LATEST: only what is published after the subscription is live.
    let mut latest = env.subscribe(env.options(ReplayFrom::Latest));
    let position = live(&mut latest).await;
    assert_eq!(
        position, before[2],
        "keepalive reports the topic's position"
    );
    let after: Vec<ReplayId> = (4..=5).map(|i| env.publish(&format!("801A{i}"))).collect();
    for (i, replay_id) in after.iter().enumerate() {
        let delivery = next_event(&mut latest).await;
        assert_eq!(order_of(&delivery), format!("801A{}", i + 4));
        assert_eq!(delivery.replay_id(), replay_id);
    }

    // EARLIEST: everything retained, in order, with every field the component receives.
    let mut earliest = env.subscribe(env.options(ReplayFrom::Earliest));
    let all: Vec<ReplayId> = before.iter().chain(&after).cloned().collect();
    for (i, replay_id) in all.iter().enumerate() {
        let Delivery::Event(received) = next_event(&mut earliest).await else {
            panic!("expected an event");
        };
        let order = format!("801A{}", i + 1);
        assert_eq!(&received.replay_id, replay_id);
        let event = &received.event;
        assert_eq!(event.order_id(), Some(order.as_str()));
        assert_eq!(event.event_uuid, uuid_for(&order));
        assert_eq!(event.replay_id, replay_id.to_string());
        assert_eq!(event.channel, ORDER_EVENT_TOPIC);
        assert_eq!(
            event.schema_id,
            env.bus().schema_id(ORDER_EVENT_TOPIC).unwrap()
        );
        assert!(event.created_date > 1_700_000_000_000, "CreatedDate in ms");
        assert_eq!(event.payload["CreatedDate"], json!(event.created_date));
        assert!(event.payload["CreatedById"].is_string());
    }

    // A stored cursor: strictly after it.
    let mut resumed = env.subscribe(env.options(ReplayFrom::After(before[1].clone())));
    for (i, replay_id) in all[2..].iter().enumerate() {
        let delivery = next_event(&mut resumed).await;
        assert_eq!(order_of(&delivery), format!("801A{}", i + 3));
        assert_eq!(delivery.replay_id(), replay_id);
    }
    // ... and nothing else.
    assert!(matches!(next(&mut resumed).await, Delivery::Cursor(_)));
}

#[tokio::test]
async fn events_written_with_an_older_schema_decode_after_the_schema_evolved() {
    let env = Env::start(quick()).await;
    let bus = env.bus();
    let v1 = bus.schema_id(ORDER_EVENT_TOPIC).unwrap();
    let mut sub = env.subscribe(env.options(ReplayFrom::Earliest));
    env.publish("801V1");

    let v2 = bus
        .evolve_schema(ORDER_EVENT_TOPIC, order_event_schema_v2())
        .unwrap();
    assert_ne!(v1, v2);
    let mut fields = Map::new();
    fields.insert("CreatedDate".into(), json!(1_764_000_000_000_i64));
    fields.insert("CreatedById".into(), json!("005xx000001Sv6eAAC"));
    fields.insert("OrderId__c".into(), json!("801V2"));
    fields.insert("Source__c".into(), json!("portal"));
    bus.publish_fields(ORDER_EVENT_TOPIC, &uuid_for("801V2"), &fields)
        .unwrap();
    // A producer still on the old schema, after the evolution.
    fields.remove("Source__c");
    fields.insert("OrderId__c".into(), json!("801OLD"));
    bus.publish_fields_with_schema(ORDER_EVENT_TOPIC, &v1, &uuid_for("801OLD"), &fields)
        .unwrap();

    let expect = [
        ("801V1", &v1, None),
        ("801V2", &v2, Some("portal")),
        ("801OLD", &v1, None),
    ];
    for (order, schema, source) in expect {
        let Delivery::Event(received) = next_event(&mut sub).await else {
            panic!("{order}: expected a decoded event");
        };
        let event = received.event;
        assert_eq!(event.order_id(), Some(order));
        assert_eq!(&event.schema_id, schema);
        assert_eq!(
            event.payload.get("Source__c").and_then(Value::as_str),
            source,
            "{order}"
        );
        assert_eq!(event.payload.contains_key("Source__c"), schema == &v2);
    }
}

#[tokio::test]
async fn ten_thousand_events_in_bursts_arrive_complete_and_demand_stays_within_100() {
    let env = Env::start(quick()).await;
    let mut sub = env.subscribe(env.options(ReplayFrom::Latest));
    live(&mut sub).await;
    let bus = env.bus();
    let publisher = tokio::spawn(async move {
        for burst in 0..50 {
            for i in 0..200 {
                let order = format!("801B{:05}", burst * 200 + i);
                bus.publish_order(ORDER_EVENT_TOPIC, &order, &uuid_for(&order))
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut last: Option<ReplayId> = None;
    for n in 0..10_000 {
        let delivery = next_event(&mut sub).await;
        assert_eq!(order_of(&delivery), format!("801B{n:05}"));
        let replay_id = delivery.replay_id().clone();
        assert!(last.as_ref().is_none_or(|prev| prev < &replay_id));
        sub.commit(replay_id.clone());
        last = Some(replay_id);
    }
    publisher.await.unwrap();
    let stats = env.sandbox.stats();
    assert!(
        stats.max_requested_demand <= 100,
        "the client asked for {} outstanding events",
        stats.max_requested_demand
    );
    assert_eq!(stats.events_delivered, 10_000);

    // Idle for several keepalive intervals: the stream stays open and reports the cursor.
    let last = last.unwrap();
    let mut cursors = 0;
    let idle_until = tokio::time::Instant::now() + Duration::from_millis(600);
    while tokio::time::Instant::now() < idle_until {
        match next(&mut sub).await {
            Delivery::Cursor(id) => {
                assert_eq!(id, last);
                cursors += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(cursors >= 3, "only {cursors} keepalives in 6 intervals");
    let stats = env.sandbox.stats();
    assert_eq!(stats.subscribe_calls, 1, "the stream was never replaced");
    assert_eq!(stats.streams_closed_for_zero_demand, 0);
    assert_eq!(sub.state().borrow().reconnects, 0);
    assert!(sub.state().borrow().connected);
}

/// Publishes `count` orders named `<prefix><n>`.
fn publish_many(env: &Env, prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let order = format!("{prefix}{i:03}");
            env.publish(&order);
            order
        })
        .collect()
}

/// Consumes until every order in `expected` arrived, committing each event as a durable consumer
/// would. Returns the orders seen more than once, with their replay ids.
async fn consume_all(
    sub: &mut Subscription,
    expected: &[String],
    seen: &mut HashSet<String>,
) -> Vec<(String, ReplayId)> {
    let mut repeated = Vec::new();
    while !expected.iter().all(|order| seen.contains(order)) {
        let delivery = next_event(sub).await;
        let order = order_of(&delivery);
        if !seen.insert(order.clone()) {
            repeated.push((order, delivery.replay_id().clone()));
        }
        sub.commit(delivery.replay_id().clone());
    }
    repeated
}

async fn survives(fault: Fault) -> (Env, Subscription) {
    let env = Env::start(quick()).await;
    let mut sub = env.subscribe(env.options(ReplayFrom::Latest));
    live(&mut sub).await;
    let mut seen = HashSet::new();
    let first = publish_many(&env, "801F", 50);
    assert!(consume_all(&mut sub, &first, &mut seen).await.is_empty());
    let durable = sub.committed().unwrap();

    env.sandbox.inject(fault);
    let second = publish_many(&env, "801S", 50);
    let repeated = consume_all(&mut sub, &second, &mut seen).await;
    for (order, replay_id) in &repeated {
        assert!(
            replay_id > &durable,
            "{order} ({replay_id}) was repeated although the cursor {durable} covered it"
        );
    }
    assert_eq!(seen.len(), 100, "nothing lost");
    assert!(env.sandbox.stats().subscribe_calls >= 2, "it reconnected");
    assert!(sub.state().borrow().reconnects >= 1);
    (env, sub)
}

#[tokio::test]
async fn a_dropped_stream_is_resumed_after_the_durable_cursor() {
    survives(Fault::DropStreams).await;
}

#[tokio::test]
async fn service_unavailable_is_retried_and_resumed() {
    survives(Fault::ServiceUnavailable).await;
}

#[tokio::test]
async fn a_token_rejected_mid_stream_is_reminted_and_the_stream_resumed() {
    let env = Env::start(quick()).await;
    let mut sub = env.subscribe(env.options(ReplayFrom::Latest));
    live(&mut sub).await;
    let mut seen = HashSet::new();
    let first = publish_many(&env, "801F", 20);
    consume_all(&mut sub, &first, &mut seen).await;
    let tokens_before = env.org.token_requests();

    // The org revokes the session and the server rejects the token mid-stream.
    env.org.expire_sessions();
    env.sandbox.inject(Fault::AuthError);
    let second = publish_many(&env, "801S", 20);
    consume_all(&mut sub, &second, &mut seen).await;
    assert_eq!(seen.len(), 40);
    assert_eq!(env.org.token_requests(), tokens_before + 1, "one new token");
    assert_eq!(sub.state().borrow().reauthentications, 1);
}

#[tokio::test]
async fn a_stalled_stream_is_detected_by_the_idle_timeout_and_replaced() {
    let env = Env::start(quick()).await;
    let mut opts = env.options(ReplayFrom::Latest);
    opts.idle_timeout = Duration::from_millis(700);
    let mut sub = env.subscribe(opts);
    // A durable consumer stores keepalive cursors too; the reconnect resumes after it.
    let position = live(&mut sub).await;
    sub.commit(position);
    env.sandbox.inject(Fault::Stall);
    let mut seen = HashSet::new();
    let orders = publish_many(&env, "801H", 10);
    consume_all(&mut sub, &orders, &mut seen).await;
    assert!(env.sandbox.stats().subscribe_calls >= 2);
    let error = sub.state().borrow().last_error.clone();
    assert!(sub.state().borrow().reconnects >= 1, "{error:?}");
}

/// A TCP relay that can freeze its open connections: bytes stop flowing both ways but nothing
/// is closed, which is what a half-open connection looks like from either end.
struct Relay {
    addr: std::net::SocketAddr,
    freeze: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let (freeze, _) = watch::channel(false);
        let frozen = freeze.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                // New connections always work; only the ones open at freeze time hang.
                frozen.send_replace(false);
                let freeze = frozen.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::spawn(pump(ri, wo, freeze.clone()));
                    tokio::spawn(pump(ro, wi, freeze));
                });
            }
        });
        Relay { addr, freeze }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut freeze: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if *freeze.borrow() {
                    break;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = freeze.changed() => {
                if changed.is_err() || *freeze.borrow() {
                    break;
                }
            }
        }
    }
    // Frozen: hold both halves open and swallow everything.
    let _hold = to;
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    std::future::pending::<()>().await;
}

/// Issue 13, item 8: no HTTP/2 pings (servers refuse frequent ones); a half-open connection is
/// found by Salesforce's keepalive going missing, and the stream resumes after the cursor.
#[tokio::test]
async fn a_half_open_connection_is_detected_by_the_missing_keepalive_and_replaced() {
    let env = Env::start(PubSubOptions {
        keepalive_interval: Duration::from_millis(100),
        ..PubSubOptions::default()
    })
    .await;
    let target = format!(
        "{}:{}",
        env.sandbox.endpoint().host_str().unwrap(),
        env.sandbox.endpoint().port().unwrap()
    );
    let relay = Relay::start(target.parse().unwrap()).await;
    let mut opts = env.options(ReplayFrom::Latest);
    opts.endpoint = format!("http://{}", relay.addr).parse().unwrap();
    opts.idle_timeout = Duration::from_millis(1000);
    assert_eq!(opts.ping_interval, None);
    let mut sub = env.subscribe(opts);
    let position = live(&mut sub).await;
    sub.commit(position);
    let mut seen = HashSet::new();
    let first = publish_many(&env, "801P", 5);
    consume_all(&mut sub, &first, &mut seen).await;

    relay.freeze.send_replace(true);
    let second = publish_many(&env, "801Q", 5);
    consume_all(&mut sub, &second, &mut seen).await;
    assert_eq!(seen.len(), 10);
    let state = sub.state().borrow().clone();
    assert!(state.reconnects >= 1, "{state:?}");
    assert_eq!(env.sandbox.stats().connections_closed_for_pings, 0);
}

/// Issue 13, item 8: against a server that tolerates one ping at most an hour without data,
/// the subscriber stays on its one stream over an idle period of many keepalive periods and
/// still receives events on it.
#[tokio::test]
async fn the_subscriber_outlives_a_strict_ping_policy_over_a_long_idle_period() {
    let env = Env::start(PubSubOptions {
        keepalive_interval: Duration::from_millis(50),
        ping_policy: PingPolicy {
            min_interval: Duration::from_secs(3600),
            max_strikes: 1,
        },
        ..PubSubOptions::default()
    })
    .await;
    let mut opts = env.options(ReplayFrom::Latest);
    opts.idle_timeout = Duration::from_secs(5);
    let mut sub = env.subscribe(opts);
    let mut keepalives = 0;
    while keepalives < 40 {
        if let Delivery::Cursor(_) = next(&mut sub).await {
            keepalives += 1;
        }
    }
    let mut seen = HashSet::new();
    let orders = publish_many(&env, "801K", 3);
    consume_all(&mut sub, &orders, &mut seen).await;
    let stats = env.sandbox.stats();
    assert_eq!(stats.connections_closed_for_pings, 0);
    assert_eq!(stats.subscribe_calls, 1);
    assert_eq!(sub.state().borrow().reconnects, 0);
}

#[tokio::test]
async fn pings_more_often_than_servers_allow_are_refused_up_front() {
    let env = Env::start(quick()).await;
    let mut opts = env.options(ReplayFrom::Latest);
    opts.ping_interval = Some(Duration::from_secs(30));
    let err = subscribe(opts, Arc::new(env.client.clone())).unwrap_err();
    assert!(matches!(err, SubscriberError::PingInterval(_)), "{err}");
    assert!(err.to_string().contains("at least 300 s"), "{err}");
    let mut opts = env.options(ReplayFrom::Latest);
    opts.ping_interval = Some(Duration::from_secs(300));
    assert!(subscribe(opts, Arc::new(env.client.clone())).is_ok());
    let mut opts = env.options(ReplayFrom::Latest);
    opts.idle_timeout = Duration::ZERO;
    assert!(matches!(
        subscribe(opts, Arc::new(env.client.clone())).unwrap_err(),
        SubscriberError::IdleTimeout
    ));
}

#[tokio::test]
async fn a_replay_id_past_retention_is_dropped_once_and_the_subscription_falls_back() {
    let env = Env::start(quick()).await;
    let expired = env.publish("801OLD");
    // Retention drops it (at once: no race between a short retention and a slow subscribe).
    assert_eq!(env.bus().expire_through(ORDER_EVENT_TOPIC, &expired), 1);
    let kept = env.publish("801NEW");

    let mut opts = env.options(ReplayFrom::After(expired.clone()));
    opts.fallback = Fallback::Earliest;
    let mut sub = env.subscribe(opts);
    match next(&mut sub).await {
        Delivery::ReplayIdRejected {
            replay_id,
            fallback,
            error_code,
            ..
        } => {
            assert_eq!(replay_id, expired);
            assert_eq!(fallback, Fallback::Earliest);
            assert_eq!(
                error_code,
                "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
            );
        }
        other => panic!("expected the refusal first, got {other:?}"),
    }
    let delivery = next_event(&mut sub).await;
    assert_eq!(order_of(&delivery), "801NEW");
    assert_eq!(delivery.replay_id(), &kept);
    assert_eq!(sub.committed(), None, "the refused cursor was dropped");
    // Several keepalives later: still one refusal, two Subscribe calls, no loop.
    for _ in 0..3 {
        assert!(matches!(next(&mut sub).await, Delivery::Cursor(_)));
    }
    assert_eq!(env.sandbox.stats().subscribe_calls, 2);
}

#[tokio::test]
async fn a_refused_replay_id_falls_back_to_latest_when_so_configured() {
    let env = Env::start(quick()).await;
    let expired = env.publish("801OLD");
    assert_eq!(env.bus().expire_through(ORDER_EVENT_TOPIC, &expired), 1);
    env.publish("801SKIPPED");
    let mut opts = env.options(ReplayFrom::After(expired));
    opts.fallback = Fallback::Latest;
    let mut sub = env.subscribe(opts);
    assert!(matches!(
        next(&mut sub).await,
        Delivery::ReplayIdRejected {
            fallback: Fallback::Latest,
            ..
        }
    ));
    live(&mut sub).await;
    env.publish("801AFTER");
    assert_eq!(order_of(&next_event(&mut sub).await), "801AFTER");
}

#[tokio::test]
async fn a_malformed_payload_is_surfaced_and_the_stream_goes_on() {
    let env = Env::start(quick()).await;
    let bus = env.bus();
    let schema = bus.schema_id(ORDER_EVENT_TOPIC).unwrap();
    env.publish("801M1");
    let garbage = vec![0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let bad = bus
        .publish_raw(
            ORDER_EVENT_TOPIC,
            &schema,
            "bad-event-uuid",
            garbage.clone(),
        )
        .unwrap();
    // An event under a schema the server no longer has: published under it while it was the
    // current one, then the topic moves on and the schema is dropped, so GetSchema answers
    // NOT_FOUND for it.
    let gone = bus
        .evolve_schema(ORDER_EVENT_TOPIC, order_event_schema_v2())
        .unwrap();
    let unknown_schema = bus
        .publish_raw(ORDER_EVENT_TOPIC, &gone, "unknown-schema-uuid", vec![2, 0])
        .unwrap();
    assert_eq!(
        bus.evolve_schema(ORDER_EVENT_TOPIC, order_event_schema_v1())
            .unwrap(),
        schema
    );
    assert!(bus.forget_schema(&gone));
    assert!(bus.schema_json(&gone).is_none());
    env.publish("801M2");

    let mut sub = env.subscribe(env.options(ReplayFrom::Earliest));
    assert_eq!(order_of(&next_event(&mut sub).await), "801M1");
    match next_event(&mut sub).await {
        Delivery::Undecodable(event) => {
            assert_eq!(event.replay_id, bad);
            assert_eq!(event.event_uuid, "bad-event-uuid");
            assert_eq!(event.schema_id, schema);
            assert_eq!(event.payload, garbage);
            assert!(!event.reason.is_empty());
        }
        other => panic!("expected an undecodable event, got {other:?}"),
    }
    match next_event(&mut sub).await {
        Delivery::Undecodable(event) => {
            assert_eq!(event.replay_id, unknown_schema);
            assert_eq!(event.event_uuid, "unknown-schema-uuid");
            assert_eq!(event.schema_id, gone);
            assert!(
                event.reason.contains("unknown to the server"),
                "{}",
                event.reason
            );
        }
        other => panic!("expected an undecodable event, got {other:?}"),
    }
    assert_eq!(order_of(&next_event(&mut sub).await), "801M2");
}

#[tokio::test]
async fn tls_with_a_test_ca() {
    let env = Env::start(PubSubOptions {
        tls: true,
        ..quick()
    })
    .await;
    assert_eq!(env.sandbox.endpoint().scheme(), "https");
    let mut sub = env.subscribe(env.options(ReplayFrom::Earliest));
    env.publish("801TLS");
    assert_eq!(order_of(&next_event(&mut sub).await), "801TLS");

    // Without the CA the server is not trusted, and the subscriber says why.
    let mut opts = env.options(ReplayFrom::Earliest);
    opts.ca_pem = None;
    let untrusted = env.subscribe(opts);
    let mut state = untrusted.state();
    tokio::time::timeout(PATIENCE, state.wait_for(|s| s.last_error.is_some()))
        .await
        .unwrap()
        .unwrap();
    assert!(!state.borrow().connected);
}

#[tokio::test]
async fn options_that_cannot_work_are_refused_up_front() {
    let env = Env::start(quick()).await;
    let auth = Arc::new(env.client.clone());
    let mut opts = env.options(ReplayFrom::Latest);
    opts.endpoint = "ftp://example.com".parse().unwrap();
    assert!(matches!(
        subscribe(opts, auth.clone()),
        Err(SubscriberError::Endpoint(_))
    ));
    for batch in [0, 101] {
        let mut opts = env.options(ReplayFrom::Latest);
        opts.batch_size = batch;
        let err = subscribe(opts, auth.clone()).unwrap_err();
        assert!(err.to_string().contains("batch size"), "{err}");
    }
    let mut opts = env.options(ReplayFrom::Latest);
    opts.endpoint = "https://127.0.0.1:1".parse().unwrap();
    opts.ca_pem = Some("not a certificate".into());
    assert!(matches!(
        subscribe(opts, auth),
        Err(SubscriberError::Tls(_))
    ));
}

#[tokio::test]
async fn closing_stops_the_stream() {
    let env = Env::start(quick()).await;
    let mut sub = env.subscribe(env.options(ReplayFrom::Latest));
    live(&mut sub).await;
    sub.close().await;
    tokio::time::timeout(PATIENCE, async {
        while env.sandbox.stats().open_streams > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server still sees the stream open");
}

/// Issue 13, item 3: `SF_EVENTS_REPLAY=ALL` is the runbook's one-time backfill. With a stored
/// cursor, `serve` replays from EARLIEST, says so in a WARN that tells the operator to revert,
/// and EventUuid deduplication keeps every Order to one WHMCS order; with `LATEST` it resumes
/// after the stored cursor as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_all_backfills_from_earliest_despite_a_stored_cursor_and_latest_resumes_after_it() {
    use crate::pipeline::{Rig, ServeProcess, redis_url, wait_cursor};
    let rig = Rig::new().await.with_redis(&redis_url());
    let orders = rig.orders(1, 4);
    let store = rig.store().await;
    let latest = [("SF_EVENTS_REPLAY", "LATEST")];
    let all = [("SF_EVENTS_REPLAY", "ALL")];
    let limit = Duration::from_secs(60);
    let metrics = |serve: &ServeProcess| {
        let url = format!("{}/metrics", serve.http);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };

    // Two Orders provisioned; the cursor is stored.
    let first = ServeProcess::start(&rig, "replica-latest", &latest);
    first.wait_role("leader", limit).await;
    for order in &orders[..2] {
        rig.publish(order);
    }
    rig.wait_activated(&orders[..2], limit).await;
    wait_cursor(store.as_ref(), &rig.channel, &rig.latest(), limit).await;
    let cursor = rig.latest();
    drop(first);

    // ALL with a stored cursor: from EARLIEST, the two done events are duplicates, the third
    // (published while no host ran) is provisioned; still one WHMCS order per Order.
    rig.publish(&orders[2]);
    let backfill = ServeProcess::start(&rig, "replica-all", &all);
    backfill.wait_role("leader", limit).await;
    rig.wait_activated(&orders[..3], limit).await;
    wait_cursor(store.as_ref(), &rig.channel, &rig.latest(), limit).await;
    let log = plain(&backfill.log_text());
    assert!(
        log.contains("SF_EVENTS_REPLAY=ALL: backfill from EARLIEST although a replay cursor is stored; revert SF_EVENTS_REPLAY to LATEST once the backfill is done")
            && log.contains(&format!("cursor={cursor}"))
            && log.contains("WARN"),
        "{log}"
    );
    assert!(log.contains("from=EARLIEST"), "{log}");
    let text = metrics(&backfill).await;
    // At least the two events done before; more if a lease renewal was missed under load and a
    // new leadership term replayed again, which is exactly what deduplication is for.
    let duplicates: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("fulfilld_events_duplicate_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(duplicates >= 2, "{text}");
    assert!(text.contains("fulfilld_events_enqueued_total 1"), "{text}");
    rig.assert_exactly_once(&orders[..3]);
    let cursor = rig.latest();
    drop(backfill);

    // LATEST with a stored cursor: strictly after it, no warning, nothing replayed.
    rig.publish(&orders[3]);
    let resumed = ServeProcess::start(&rig, "replica-resume", &latest);
    resumed.wait_role("leader", limit).await;
    rig.wait_activated(&orders, limit).await;
    wait_cursor(store.as_ref(), &rig.channel, &rig.latest(), limit).await;
    let log = plain(&resumed.log_text());
    assert!(
        log.contains(&format!("from=after replay id {cursor}")),
        "{log}"
    );
    assert!(!log.contains("SF_EVENTS_REPLAY=ALL"), "{log}");
    let text = metrics(&resumed).await;
    assert!(text.contains("fulfilld_events_received_total 1"), "{text}");
    assert!(text.contains("fulfilld_events_duplicate_total 0"), "{text}");
    rig.assert_exactly_once(&orders);
}

/// A log without its ANSI colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
