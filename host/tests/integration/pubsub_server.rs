//! The sandbox Pub/Sub server seen by a raw client (the generated tonic client, as any
//! third-party client written against Salesforce would use it): it refuses what Salesforce
//! refuses, with the same status codes and `error-code` trailers, and serves the documented
//! semantics.

use std::sync::Arc;
use std::time::Duration;

use fulfilld::pubsub::codes;
use fulfilld::pubsub::proto::pub_sub_client::PubSubClient;
use fulfilld::pubsub::proto::{
    FetchRequest, FetchResponse, ProducerEvent, PublishRequest, ReplayPreset, SchemaRequest,
    TopicRequest,
};
use fulfilld::sandbox::{
    ORDER_EVENT_TOPIC, PubSubOptions, PubSubSandbox, StaticToken, order_event_schema_v2,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};

const TOKEN: &str = "00Dsandbox!token";

async fn sandbox(opts: PubSubOptions) -> PubSubSandbox {
    PubSubSandbox::start(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        opts,
        Arc::new(StaticToken(TOKEN.into())),
    )
    .await
    .unwrap()
}

async fn client(server: &PubSubSandbox) -> PubSubClient<Channel> {
    PubSubClient::connect(server.endpoint().to_string())
        .await
        .unwrap()
}

fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let md = request.metadata_mut();
    md.insert("accesstoken", TOKEN.parse().unwrap());
    md.insert(
        "instanceurl",
        "https://acme.my.salesforce.com".parse().unwrap(),
    );
    md.insert("tenantid", "00D8d0000000001EAA".parse().unwrap());
    request
}

fn fetch(preset: ReplayPreset, replay_id: Vec<u8>, n: i32) -> FetchRequest {
    FetchRequest {
        topic_name: ORDER_EVENT_TOPIC.into(),
        replay_preset: preset as i32,
        replay_id,
        num_requested: n,
        auth_refresh: String::new(),
    }
}

/// Opens a Subscribe stream; returns the sender for later requests and the response stream.
async fn open(
    client: &mut PubSubClient<Channel>,
    first: FetchRequest,
) -> Result<(mpsc::Sender<FetchRequest>, Streaming<FetchResponse>), Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let response = client.subscribe(authed(ReceiverStream::new(rx))).await?;
    Ok((tx, response.into_inner()))
}

async fn next(stream: &mut Streaming<FetchResponse>) -> Result<FetchResponse, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no response in time")
        .map(|m| m.expect("stream ended"))
}

fn assert_refused(status: &Status, code: Code, error_code: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(codes::error_code(status), Some(error_code), "{status:?}");
    assert!(
        status.metadata().get(codes::RPC_ID).is_some(),
        "rpc-id trailer"
    );
}

#[tokio::test]
async fn calls_without_valid_auth_metadata_are_unauthenticated() {
    let server = sandbox(PubSubOptions::default()).await;
    let mut client = client(&server).await;
    let topic = || TopicRequest {
        topic_name: ORDER_EVENT_TOPIC.into(),
    };
    // No metadata at all.
    let status = client.get_topic(Request::new(topic())).await.unwrap_err();
    assert_refused(&status, Code::Unauthenticated, codes::AUTH_ERROR);
    // One key missing.
    let mut request = authed(topic());
    request.metadata_mut().remove("tenantid");
    let status = client.get_topic(request).await.unwrap_err();
    assert_refused(&status, Code::Unauthenticated, codes::AUTH_ERROR);
    // A wrong token, on the streaming call too.
    let mut request = authed(topic());
    request
        .metadata_mut()
        .insert("accesstoken", "expired".parse().unwrap());
    let status = client.get_topic(request).await.unwrap_err();
    assert_refused(&status, Code::Unauthenticated, codes::AUTH_ERROR);
    let (tx, rx) = mpsc::channel(1);
    tx.send(fetch(ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    let status = client
        .subscribe(Request::new(ReceiverStream::new(rx)))
        .await
        .unwrap_err();
    assert_refused(&status, Code::Unauthenticated, codes::AUTH_ERROR);
    // With the metadata, the same call works.
    let info = client
        .get_topic(authed(topic()))
        .await
        .unwrap()
        .into_inner();
    assert!(info.can_subscribe && info.can_publish);
    assert_eq!(
        info.schema_id,
        server.bus().schema_id(ORDER_EVENT_TOPIC).unwrap()
    );
}

#[tokio::test]
async fn num_requested_must_be_positive_on_every_request() {
    let server = sandbox(PubSubOptions::default()).await;
    let mut client = client(&server).await;
    for n in [0, -5] {
        let status = open(&mut client, fetch(ReplayPreset::Latest, vec![], n))
            .await
            .map(|_| ())
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(codes::error_code(&status).is_some());
    }
    let (tx, mut stream) = open(&mut client, fetch(ReplayPreset::Latest, vec![], 5))
        .await
        .unwrap();
    tx.send(fetch(ReplayPreset::Latest, vec![], 0))
        .await
        .unwrap();
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_later_request_naming_another_topic_is_refused() {
    let server = sandbox(PubSubOptions::default()).await;
    let mut client = client(&server).await;
    let (tx, mut stream) = open(&mut client, fetch(ReplayPreset::Latest, vec![], 5))
        .await
        .unwrap();
    let mut other = fetch(ReplayPreset::Latest, vec![], 5);
    other.topic_name = "/event/Other__e".into();
    tx.send(other).await.unwrap();
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // An unknown topic on the first request.
    let mut unknown = fetch(ReplayPreset::Latest, vec![], 5);
    unknown.topic_name = "/event/Nope__e".into();
    let status = open(&mut client, unknown)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn malformed_and_expired_replay_ids_fail_with_the_corrupted_trailer() {
    let server = sandbox(PubSubOptions::default()).await;
    let bus = server.bus();
    let old = bus
        .publish_order(ORDER_EVENT_TOPIC, "801OLD", "u-old")
        .unwrap();
    assert_eq!(bus.expire_through(ORDER_EVENT_TOPIC, &old), 1);
    let kept = bus
        .publish_order(ORDER_EVENT_TOPIC, "801NEW", "u-new")
        .unwrap();
    let mut client = client(&server).await;
    for bad in [
        vec![1, 2, 3],
        old.as_bytes().to_vec(),
        (u64::MAX).to_be_bytes().to_vec(),
    ] {
        let status = open(&mut client, fetch(ReplayPreset::Custom, bad.clone(), 5))
            .await
            .map(|_| ())
            .expect_err("a bad replay id was accepted");
        assert_refused(&status, Code::InvalidArgument, codes::REPLAY_ID_CORRUPTED);
    }
    // The retained event's id is fine: strictly after it there is nothing yet.
    let (_tx, mut stream) = open(
        &mut client,
        fetch(ReplayPreset::Custom, kept.as_bytes().to_vec(), 5),
    )
    .await
    .unwrap();
    let newer = bus
        .publish_order(ORDER_EVENT_TOPIC, "801NEWER", "u-newer")
        .unwrap();
    let response = next(&mut stream).await.unwrap();
    assert_eq!(response.events.len(), 1);
    assert_eq!(response.events[0].replay_id, newer.as_bytes());
}

#[tokio::test]
async fn demand_is_capped_at_100_and_reported_with_every_response() {
    let server = sandbox(PubSubOptions::default()).await;
    let bus = server.bus();
    for i in 0..250 {
        bus.publish_order(ORDER_EVENT_TOPIC, &format!("801D{i}"), &format!("u-{i}"))
            .unwrap();
    }
    let mut client = client(&server).await;
    let (tx, mut stream) = open(&mut client, fetch(ReplayPreset::Earliest, vec![], 500))
        .await
        .unwrap();
    let mut received = 0;
    while received < 100 {
        let response = next(&mut stream).await.unwrap();
        received += response.events.len();
        assert_eq!(
            response.pending_num_requested,
            100 - i32::try_from(received).unwrap()
        );
        let last = response.events.last().unwrap();
        assert_eq!(
            response.latest_replay_id, last.replay_id,
            "latest = last event"
        );
    }
    assert_eq!(received, 100, "no more than the cap");
    assert_eq!(server.stats().max_requested_demand, 500);
    // Replay ids are 8-byte big-endian and increasing.
    tx.send(fetch(ReplayPreset::Latest, vec![], 3))
        .await
        .unwrap();
    let response = next(&mut stream).await.unwrap();
    assert_eq!(response.events.len(), 3);
    let ids: Vec<u64> = response
        .events
        .iter()
        .map(|e| u64::from_be_bytes(e.replay_id.as_slice().try_into().unwrap()))
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

#[tokio::test]
async fn keepalives_carry_the_latest_replay_id_and_zero_demand_closes_the_stream() {
    let server = sandbox(PubSubOptions {
        keepalive_interval: Duration::from_millis(100),
        zero_demand_timeout: Duration::from_millis(300),
        ..PubSubOptions::default()
    })
    .await;
    let bus = server.bus();
    let latest = bus.publish_order(ORDER_EVENT_TOPIC, "801K", "u-k").unwrap();
    let mut client = client(&server).await;
    let (_tx, mut stream) = open(&mut client, fetch(ReplayPreset::Latest, vec![], 1))
        .await
        .unwrap();
    for _ in 0..2 {
        let keepalive = next(&mut stream).await.unwrap();
        assert!(keepalive.events.is_empty());
        assert_eq!(keepalive.latest_replay_id, latest.as_bytes());
        assert_eq!(keepalive.pending_num_requested, 1);
    }
    // Use up the demand and ask for no more: the server closes the stream.
    bus.publish_order(ORDER_EVENT_TOPIC, "801K2", "u-k2")
        .unwrap();
    let response = next(&mut stream).await.unwrap();
    assert_eq!(response.pending_num_requested, 0);
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream stayed open with zero demand");
    assert!(matches!(end, Ok(None) | Err(_)));
    assert_eq!(server.stats().streams_closed_for_zero_demand, 1);
}

#[tokio::test]
async fn schemas_publish_and_evolution() {
    let server = sandbox(PubSubOptions::default()).await;
    let mut client = client(&server).await;
    let v1 = server.bus().schema_id(ORDER_EVENT_TOPIC).unwrap();
    let schema = client
        .get_schema(authed(SchemaRequest {
            schema_id: v1.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(schema.schema_json.contains("OrderProvisionRequested__e"));
    assert_eq!(v1.len(), 22, "Salesforce-style schema id");
    let status = client
        .get_schema(authed(SchemaRequest {
            schema_id: "unknown".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let v2 = server
        .bus()
        .evolve_schema(ORDER_EVENT_TOPIC, order_event_schema_v2())
        .unwrap();
    for id in [&v1, &v2] {
        client
            .get_schema(authed(SchemaRequest {
                schema_id: id.clone(),
            }))
            .await
            .unwrap();
    }
    let response = client
        .publish(authed(PublishRequest {
            topic_name: ORDER_EVENT_TOPIC.into(),
            events: vec![
                ProducerEvent {
                    id: "e-1".into(),
                    schema_id: v1.clone(),
                    payload: vec![0],
                    headers: vec![],
                },
                ProducerEvent {
                    id: "e-2".into(),
                    schema_id: "nope".into(),
                    payload: vec![0],
                    headers: vec![],
                },
            ],
            auth_refresh: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.schema_id, v2);
    assert_eq!(response.results[0].correlation_key, "e-1");
    assert_eq!(response.results[0].replay_id.len(), 8);
    assert!(response.results[0].error.is_none());
    assert!(response.results[1].error.is_some());
    let too_many = PublishRequest {
        topic_name: ORDER_EVENT_TOPIC.into(),
        events: vec![ProducerEvent::default(); 201],
        auth_refresh: String::new(),
    };
    let status = client.publish(authed(too_many)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// Reads one HTTP/2 frame: (type, flags, payload), or `None` at the end of the stream.
async fn read_frame(tcp: &mut tokio::net::TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt as _;
    let mut header = [0u8; 9];
    tcp.read_exact(&mut header).await.ok()?;
    let len =
        (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((header[3], header[4], payload))
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        kind,
        flags,
        0,
        0,
        0,
        0,
    ];
    f.extend_from_slice(payload);
    f
}

/// Issue 13, item 8: the sandbox enforces gRPC servers' ping policy (grpc-core's defaults:
/// 5 minutes between pings without data, 2 strikes). A raw HTTP/2 client that sends four pings
/// in a row gets its first three answered and then GOAWAY ENHANCE_YOUR_CALM `too_many_pings`,
/// and the connection is closed.
#[tokio::test]
async fn a_raw_http2_client_that_pings_too_often_gets_goaway_too_many_pings() {
    use tokio::io::AsyncWriteExt as _;
    let server = sandbox(PubSubOptions::default()).await;
    let endpoint = server.endpoint();
    let addr = format!(
        "{}:{}",
        endpoint.host_str().unwrap(),
        endpoint.port().unwrap()
    );
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, &[])); // SETTINGS
    tcp.write_all(&out).await.unwrap();
    let exchange = async {
        // Each ping waits for its answer: the first three are answered (strikes 0, 1, 2), the
        // fourth (strike 3) gets the GOAWAY.
        for n in 0..4u8 {
            tcp.write_all(&frame(0x6, 0, &[n; 8])).await.unwrap();
            loop {
                let (kind, flags, payload) = read_frame(&mut tcp)
                    .await
                    .unwrap_or_else(|| panic!("closed without GOAWAY after ping {n}"));
                match kind {
                    0x6 if flags & 1 == 1 => {
                        assert!(n < 3, "ping {n} answered");
                        break;
                    }
                    0x7 => {
                        assert_eq!(n, 3, "GOAWAY after ping {n}");
                        return payload;
                    }
                    _ => {}
                }
            }
        }
        panic!("no GOAWAY after four pings");
    };
    let goaway = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("no answer in time");
    assert_eq!(&goaway[4..8], &0xbu32.to_be_bytes(), "ENHANCE_YOUR_CALM");
    assert_eq!(&goaway[8..], b"too_many_pings");
    // Then the connection is closed.
    let rest = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tcp))
        .await
        .expect("the connection stayed open");
    assert!(rest.is_none(), "{rest:?}");
    assert_eq!(server.stats().connections_closed_for_pings, 1);
}

/// The same with a tonic client whose HTTP/2 keepalive pings every 50 ms: its Subscribe stream
/// is cut by the GOAWAY. Data the server sends clears the strikes, as in grpc-core: with
/// keepalives flowing more often than the client pings, the same client is left alone.
#[tokio::test]
async fn a_grpc_client_with_a_short_keepalive_is_closed_unless_data_flows() {
    let pinging = |server: &PubSubSandbox| {
        let endpoint = server.endpoint().to_string();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .http2_keep_alive_interval(Duration::from_millis(50))
                .keep_alive_while_idle(true)
                .connect()
                .await
                .unwrap();
            PubSubClient::new(channel)
        }
    };
    let quiet = sandbox(PubSubOptions::default()).await;
    let mut client = pinging(&quiet).await;
    let (_tx, mut stream) = open(&mut client, fetch(ReplayPreset::Latest, Vec::new(), 10))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("the stream was not closed");
    assert!(ended.is_err(), "{ended:?}");
    assert_eq!(quiet.stats().connections_closed_for_pings, 1);

    // Keepalives every 10 ms (data) while the client pings every 50 ms: no strikes add up.
    let busy = sandbox(PubSubOptions {
        keepalive_interval: Duration::from_millis(10),
        ..PubSubOptions::default()
    })
    .await;
    let mut client = pinging(&busy).await;
    let (_tx, mut stream) = open(&mut client, fetch(ReplayPreset::Latest, Vec::new(), 10))
        .await
        .unwrap();
    for _ in 0..100 {
        next(&mut stream).await.unwrap();
    }
    assert_eq!(busy.stats().connections_closed_for_pings, 0);
    assert_eq!(busy.stats().open_streams, 1);
}
