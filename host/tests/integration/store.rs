//! The store conformance suite: one set of behaviour tests, run against every backend.
//!
//! Each backend provides a harness factory (`fn(tag: &str) -> Harness`); a [`Harness`] opens
//! fresh [`SharedStore`] handles over the same underlying data (the same redb file, the same
//! Redis namespace), so tests can check what survives a restart. `conformance!(name, factory)`
//! instantiates the whole suite as `name::<test>`.
//!
//! Channels are unique per test and per run (`/event/Conf<test>_<random><suffix>__e`), because
//! the Redis cursor key (`sf:pe:replay:<channel>`) is not namespaced.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fulfilld::domain::{ReplayId, random_uuid};
use fulfilld::store::embedded::EmbeddedStore;
use fulfilld::store::{Backend, CursorLease as _, SharedStore};
use futures::FutureExt as _;
use futures::future::BoxFuture;

/// Opens store handles over one backend's data, for one test.
pub struct Harness {
    tag: String,
    backend: Backend,
    opener: Box<dyn Fn() -> BoxFuture<'static, SharedStore> + Send + Sync>,
    /// Whatever keeps the data alive for the test (the embedded store's temporary directory).
    _keep: Box<dyn Any + Send + Sync>,
}

impl Harness {
    pub fn new(
        tag: &str,
        backend: Backend,
        keep: impl Any + Send + Sync,
        opener: impl Fn() -> BoxFuture<'static, SharedStore> + Send + Sync + 'static,
    ) -> Harness {
        Harness {
            tag: format!("{tag}_{}", &random_uuid()[..8]),
            backend,
            opener: Box::new(opener),
            _keep: Box::new(keep),
        }
    }

    /// A new handle over the harness's data. An embedded store locks its file: drop the
    /// previous handle first.
    pub async fn open(&self) -> SharedStore {
        (self.opener)().await
    }

    /// A channel name of this test's own.
    pub fn channel(&self, suffix: &str) -> String {
        format!("/event/Conf{}{suffix}__e", self.tag)
    }
}

/// The embedded backend: a redb file in a temporary directory (in a subdirectory the store
/// creates itself).
fn embedded_harness(tag: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("store.redb");
    Harness::new(tag, Backend::Embedded, dir, move || {
        let path = path.clone();
        async move { open_embedded(&path).await }.boxed()
    })
}

async fn open_embedded(path: &Path) -> SharedStore {
    // A blocking task of the previous handle may still be finishing; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match EmbeddedStore::open(path) {
            Ok(store) => return Arc::new(store),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("cannot open the embedded store {}: {err}", path.display()),
        }
    }
}

/// The Redis backend: `FULFILLD_TEST_REDIS_URL` (default the local Redis) with a namespace of the
/// test's own, so every handle a harness opens sees the same keys.
fn redis_harness(tag: &str) -> Harness {
    let url = std::env::var("FULFILLD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let namespace = format!("fulfilld-conf-{tag}-{}", &random_uuid()[..8]);
    Harness::new(tag, Backend::Redis, (), move || {
        let (url, namespace) = (url.clone(), namespace.clone());
        async move {
            let store = fulfilld::store::redis::RedisStore::connect(&url, &namespace)
                .await
                .unwrap_or_else(|err| panic!("cannot connect to Redis at {url}: {err}"));
            Arc::new(store) as SharedStore
        }
        .boxed()
    })
}

macro_rules! conformance {
    ($backend:ident, $harness:ident) => {
        conformance!(@tests $backend, $harness;
            ping_and_backend,
            cursor_round_trip,
            cursor_survives_reopen,
            backfill_cleared_by_ingest_only,
            lease_acquire_renew_release,
            lease_expiry_gives_a_higher_epoch,
            fenced_ingest_writes_nothing,
            ingest_dedupes_across_and_within_batches,
            undecodable_dead_letters_keep_raw_bytes,
            unknown_dead_letters_are_not_found,
            claim_oldest_first_up_to_max,
            claim_waits_for_ingest,
            claim_returns_empty_after_block,
            reclaim_after_min_idle,
            blocked_claim_picks_up_reclaimable_job,
            touch_prevents_reclaim,
            dead_letter_after_max_deliveries,
            complete_records_and_removes,
            dead_letter_job_moves_the_job,
            requeue_gives_a_fresh_job,
            queue_depth_and_dead_letter_count,
            dropped_claim_loses_nothing,
            channels_are_isolated,
            data_survives_reopen,
            holds_are_readers_writer_locks,
            holds_expire_and_a_holder_never_waits_for_itself,
            holds_are_renewed_by_their_holder_only,
            journal_keeps_order_and_finds_jobs_by_order,
            journal_is_bounded_and_expires,
            listings_by_state,
        );
    };
    (@tests $backend:ident, $harness:ident; $($test:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    let harness = super::$harness(stringify!($test));
                    super::suite::$test(&harness).await;
                }
            )+
        }
    };
}

conformance!(embedded, embedded_harness);
conformance!(redis, redis_harness);

mod suite {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use fulfilld::domain::{ReplayId, random_uuid};
    use fulfilld::holds::HoldMode;
    use fulfilld::store::{
        ClaimOptions, DeadLetterKind, IngestBatch, Job, JobRecord, Lease, NewDeadLetter, NewJob,
        SharedStore, StoreError,
    };

    use super::Harness;

    const LONG: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn uuids(n: usize) -> Vec<String> {
        (0..n).map(|_| random_uuid()).collect()
    }

    fn new_job(uuid: &str, replay: u64) -> NewJob {
        NewJob {
            event_uuid: uuid.to_owned(),
            replay_id: ReplayId::from_u64(replay),
            payload: format!(r#"{{"event_uuid":"{uuid}","n":{replay}}}"#).into_bytes(),
        }
    }

    fn jobs_batch(uuids: &[&str], first_replay: u64) -> IngestBatch {
        IngestBatch {
            jobs: uuids
                .iter()
                .zip(first_replay..)
                .map(|(u, r)| new_job(u, r))
                .collect(),
            dead_letters: Vec::new(),
            cursor: None,
        }
    }

    fn raw_dead_letter(uuid: &str, replay: u64) -> NewDeadLetter {
        NewDeadLetter {
            event_uuid: uuid.to_owned(),
            replay_id: ReplayId::from_u64(replay),
            payload: vec![0x00, 0x9f, 0xff, 0x80, 0x01, b'{', 0xc3],
            reason: "undecodable (schema abc123): unknown schema".into(),
        }
    }

    fn options(consumer: &str, max: usize, block: Duration, min_idle: Duration) -> ClaimOptions {
        ClaimOptions {
            consumer: consumer.to_owned(),
            max,
            block,
            min_idle,
            max_deliveries: 5,
            journal: None,
        }
    }

    /// Claims without waiting, with a reclaim time that never elapses in a test.
    fn quick(consumer: &str, max: usize) -> ClaimOptions {
        options(consumer, max, Duration::ZERO, LONG)
    }

    fn record_for(job: &Job, outcome: &str) -> JobRecord {
        JobRecord {
            event_uuid: job.event_uuid.clone(),
            replay_id: job.replay_id.to_string(),
            order_id: Some("801000000000001AAA".into()),
            outcome: outcome.to_owned(),
            code: None,
            message: format!("{outcome} by the conformance suite"),
            component: "fulfillment@1.0.0".into(),
            component_sha256: "ab".repeat(32),
            deliveries: job.deliveries,
            finished_at_ms: 1_700_000_000_000,
        }
    }

    async fn leader(store: &SharedStore, channel: &str) -> Lease {
        store
            .acquire_lease(channel, "leader", LONG)
            .await
            .unwrap()
            .expect("the lease is free")
    }

    async fn ingest_jobs(store: &SharedStore, lease: &Lease, uuids: &[&str]) {
        let report = store.ingest(lease, jobs_batch(uuids, 100)).await.unwrap();
        assert_eq!(report.enqueued, uuids.to_vec());
    }

    fn claimed_uuids(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|j| j.event_uuid.as_str()).collect()
    }

    pub async fn ping_and_backend(h: &Harness) {
        let store = h.open().await;
        assert_eq!(store.backend(), h.backend);
        let took = store.ping().await.unwrap();
        assert!(took < Duration::from_secs(5), "ping took {took:?}");
    }

    pub async fn cursor_round_trip(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        assert_eq!(store.cursor(&ch).await.unwrap(), None);

        let first = ReplayId::from_u64(42);
        store.set_cursor(&ch, Some(&first)).await.unwrap();
        assert_eq!(store.cursor(&ch).await.unwrap(), Some(first));

        // The largest value round-trips as its decimal text.
        let big = ReplayId::from_u64(u64::MAX);
        store.set_cursor(&ch, Some(&big)).await.unwrap();
        assert_eq!(store.cursor(&ch).await.unwrap(), Some(big));

        store.set_cursor(&ch, None).await.unwrap();
        assert_eq!(store.cursor(&ch).await.unwrap(), None);
        // Clearing an absent cursor is fine.
        store.set_cursor(&ch, None).await.unwrap();
        assert_eq!(store.cursor(&ch).await.unwrap(), None);
    }

    pub async fn cursor_survives_reopen(h: &Harness) {
        let ch = h.channel("");
        let store = h.open().await;
        store
            .set_cursor(&ch, Some(&ReplayId::from_u64(7_000_123)))
            .await
            .unwrap();
        drop(store);
        let store = h.open().await;
        assert_eq!(
            store.cursor(&ch).await.unwrap(),
            Some(ReplayId::from_u64(7_000_123))
        );
    }

    pub async fn backfill_cleared_by_ingest_only(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        assert!(!store.backfill_requested(&ch).await.unwrap());
        store.request_backfill(&ch).await.unwrap();
        assert!(store.backfill_requested(&ch).await.unwrap());

        // The operator's set_cursor leaves the request pending.
        store
            .set_cursor(&ch, Some(&ReplayId::from_u64(5)))
            .await
            .unwrap();
        assert!(store.backfill_requested(&ch).await.unwrap());

        // So does an ingest that writes no cursor.
        let lease = leader(&store, &ch).await;
        let [a, b] = [random_uuid(), random_uuid()];
        store.ingest(&lease, jobs_batch(&[&a], 10)).await.unwrap();
        assert!(store.backfill_requested(&ch).await.unwrap());

        // The first ingest that writes a cursor clears it.
        let mut batch = jobs_batch(&[&b], 11);
        batch.cursor = Some(ReplayId::from_u64(11));
        store.ingest(&lease, batch).await.unwrap();
        assert!(!store.backfill_requested(&ch).await.unwrap());
        assert_eq!(
            store.cursor(&ch).await.unwrap(),
            Some(ReplayId::from_u64(11))
        );
    }

    pub async fn lease_acquire_renew_release(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        assert_eq!(store.lease(&ch).await.unwrap(), None);

        let a = store
            .acquire_lease(&ch, "replica-a", LONG)
            .await
            .unwrap()
            .expect("a free lease is granted");
        assert_eq!(a.channel, ch);
        assert_eq!(a.holder, "replica-a");
        assert_eq!(a.ttl_ms, 30_000);
        let info = store.lease(&ch).await.unwrap().expect("a live lease");
        assert_eq!(info.holder, "replica-a");
        assert_eq!(info.epoch, a.epoch);
        assert!(info.expires_in_ms > 0 && info.expires_in_ms <= 30_000);

        // The holder acquiring again renews: same epoch.
        let again = store
            .acquire_lease(&ch, "replica-a", LONG)
            .await
            .unwrap()
            .expect("the holder keeps its lease");
        assert_eq!(again.epoch, a.epoch);
        let renewed = store
            .renew_lease(&a, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(renewed.epoch, a.epoch);
        assert_eq!(renewed.holder, "replica-a");
        assert_eq!(renewed.ttl_ms, 20_000);
        let info = store.lease(&ch).await.unwrap().unwrap();
        assert!(info.expires_in_ms <= 20_000, "{info:?}");

        // Another holder gets nothing while it is live.
        assert_eq!(
            store.acquire_lease(&ch, "replica-b", LONG).await.unwrap(),
            None
        );

        // Releasing someone else's lease is a no-op.
        let forged = Lease {
            holder: "replica-b".into(),
            ..a.clone()
        };
        store.release_lease(&forged).await.unwrap();
        assert_eq!(store.lease(&ch).await.unwrap().unwrap().holder, "replica-a");

        store.release_lease(&a).await.unwrap();
        assert_eq!(store.lease(&ch).await.unwrap(), None);
        // Releasing twice is a no-op too.
        store.release_lease(&a).await.unwrap();

        // After a release the next lease has a higher epoch; the old one is fenced.
        let b = store
            .acquire_lease(&ch, "replica-b", LONG)
            .await
            .unwrap()
            .expect("a released lease is free");
        assert!(b.epoch > a.epoch, "{} > {}", b.epoch, a.epoch);
        match store.renew_lease(&a, LONG).await {
            Err(StoreError::Fenced { channel, .. }) => assert_eq!(channel, ch),
            other => panic!("renewing a released lease: {other:?}"),
        }
        assert_eq!(store.lease(&ch).await.unwrap().unwrap().holder, "replica-b");
    }

    pub async fn lease_expiry_gives_a_higher_epoch(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let a = store
            .acquire_lease(&ch, "replica-a", ms(200))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(ms(400)).await;
        assert_eq!(store.lease(&ch).await.unwrap(), None, "expired");
        assert!(matches!(
            store.renew_lease(&a, LONG).await,
            Err(StoreError::Fenced { .. })
        ));

        // The same holder coming back after expiry gets a new term.
        let a2 = store
            .acquire_lease(&ch, "replica-a", ms(200))
            .await
            .unwrap()
            .unwrap();
        assert!(a2.epoch > a.epoch);
        tokio::time::sleep(ms(400)).await;

        // Another holder takes over an expired lease with a higher epoch.
        let b = store
            .acquire_lease(&ch, "replica-b", LONG)
            .await
            .unwrap()
            .expect("an expired lease is free");
        assert!(b.epoch > a2.epoch);
        let info = store.lease(&ch).await.unwrap().unwrap();
        assert_eq!((info.holder.as_str(), info.epoch), ("replica-b", b.epoch));

        // The old holder is fenced and cannot take it back or release it.
        for old in [&a, &a2] {
            assert!(matches!(
                store.renew_lease(old, LONG).await,
                Err(StoreError::Fenced { .. })
            ));
            store.release_lease(old).await.unwrap();
        }
        assert_eq!(
            store.acquire_lease(&ch, "replica-a", LONG).await.unwrap(),
            None
        );
        assert_eq!(store.lease(&ch).await.unwrap().unwrap().holder, "replica-b");
    }

    pub async fn fenced_ingest_writes_nothing(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let a = store
            .acquire_lease(&ch, "replica-a", ms(200))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(ms(400)).await;
        let [u1, u2] = [random_uuid(), random_uuid()];
        let batch = || IngestBatch {
            jobs: vec![new_job(&u1, 1)],
            dead_letters: vec![raw_dead_letter(&u2, 2)],
            cursor: Some(ReplayId::from_u64(2)),
        };

        // Expired, nobody else holds it yet: fenced.
        assert!(matches!(
            store.ingest(&a, batch()).await,
            Err(StoreError::Fenced { .. })
        ));
        // Taken over: fenced.
        let b = store
            .acquire_lease(&ch, "replica-b", LONG)
            .await
            .unwrap()
            .unwrap();
        match store.ingest(&a, batch()).await {
            Err(StoreError::Fenced { channel, .. }) => assert_eq!(channel, ch),
            other => panic!("ingest under a lost lease: {other:?}"),
        }
        // A forged lease with the current epoch but another holder: fenced.
        let forged = Lease {
            holder: "replica-a".into(),
            ..b.clone()
        };
        assert!(matches!(
            store.ingest(&forged, batch()).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 0);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 0);
        assert_eq!(store.cursor(&ch).await.unwrap(), None);
        assert!(store.claim(&ch, &quick("w", 10)).await.unwrap().is_empty());

        // Nothing was remembered for dedupe either: the new leader enqueues the event.
        let report = store.ingest(&b, batch()).await.unwrap();
        assert_eq!(report.enqueued, vec![u1.clone()]);
        assert_eq!(report.dead_lettered, 1);
        assert_eq!(
            store.cursor(&ch).await.unwrap(),
            Some(ReplayId::from_u64(2))
        );

        // A released lease is fenced too.
        store.release_lease(&b).await.unwrap();
        assert!(matches!(
            store.ingest(&b, jobs_batch(&[&random_uuid()], 3)).await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
    }

    pub async fn ingest_dedupes_across_and_within_batches(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let [u1, u2, u3] = [random_uuid(), random_uuid(), random_uuid()];

        let report = store
            .ingest(&lease, jobs_batch(&[&u1, &u2, &u1], 1))
            .await
            .unwrap();
        assert_eq!(report.enqueued, vec![u1.clone(), u2.clone()]);
        assert_eq!(report.duplicates, vec![u1.clone()]);
        assert_eq!(report.dead_lettered, 0);

        let report = store
            .ingest(&lease, jobs_batch(&[&u2, &u3], 4))
            .await
            .unwrap();
        assert_eq!(report.enqueued, vec![u3.clone()]);
        assert_eq!(report.duplicates, vec![u2.clone()]);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 3);

        // Still a duplicate once the job is done.
        let jobs = store.claim(&ch, &quick("w", 1)).await.unwrap();
        assert_eq!(claimed_uuids(&jobs), vec![u1.as_str()]);
        store
            .complete(&jobs[0], record_for(&jobs[0], "completed"))
            .await
            .unwrap();
        let report = store.ingest(&lease, jobs_batch(&[&u1], 9)).await.unwrap();
        assert!(report.enqueued.is_empty());
        assert_eq!(report.duplicates, vec![u1.clone()]);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 2);
    }

    pub async fn undecodable_dead_letters_keep_raw_bytes(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let [bad, good] = [random_uuid(), random_uuid()];
        let raw = raw_dead_letter(&bad, 77);
        let report = store
            .ingest(
                &lease,
                IngestBatch {
                    jobs: vec![new_job(&good, 78)],
                    dead_letters: vec![raw.clone()],
                    cursor: Some(ReplayId::from_u64(78)),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.dead_lettered, 1);
        assert_eq!(report.enqueued, vec![good.clone()]);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 1);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);

        let listed = store.dead_letters(&ch, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        let dead = &listed[0];
        assert_eq!(dead.channel, ch);
        assert_eq!(dead.event_uuid, bad);
        assert_eq!(dead.replay_id, ReplayId::from_u64(77));
        assert_eq!(dead.payload, raw.payload, "raw bytes kept exactly");
        assert_eq!(dead.kind, DeadLetterKind::Undecodable);
        assert_eq!(dead.reason, raw.reason);
        assert_eq!(dead.deliveries, 0);
        assert!(dead.dead_at_ms > 0);
        assert_eq!(&store.dead_letter(&ch, &dead.id).await.unwrap(), dead);

        match store.requeue(&ch, &dead.id).await {
            Err(StoreError::Invalid(why)) => assert!(!why.is_empty()),
            other => panic!("requeue of an undecodable dead letter: {other:?}"),
        }
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 1);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
    }

    pub async fn unknown_dead_letters_are_not_found(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        for id in ["99999999999", "not-an-id", ""] {
            assert!(
                matches!(
                    store.dead_letter(&ch, id).await,
                    Err(StoreError::NotFound(_))
                ),
                "dead_letter({id:?})"
            );
            assert!(
                matches!(store.requeue(&ch, id).await, Err(StoreError::NotFound(_))),
                "requeue({id:?})"
            );
        }
        assert!(store.dead_letters(&ch, 10).await.unwrap().is_empty());
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 0);
        assert_eq!(store.job_record(&random_uuid()).await.unwrap(), None);
    }

    pub async fn claim_oldest_first_up_to_max(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let ids = uuids(3);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        ingest_jobs(&store, &lease, &refs).await;

        let first = store.claim(&ch, &quick("w1", 2)).await.unwrap();
        assert_eq!(claimed_uuids(&first), vec![refs[0], refs[1]]);
        for (job, replay) in first.iter().zip(100..) {
            assert_eq!(job.channel, ch);
            assert_eq!(job.deliveries, 1);
            assert_eq!(job.replay_id, ReplayId::from_u64(replay));
            assert_eq!(job.payload, new_job(&job.event_uuid, replay).payload);
            assert!(job.enqueued_at_ms > 0);
        }
        assert_ne!(first[0].id, first[1].id);

        let rest = store.claim(&ch, &quick("w2", 5)).await.unwrap();
        assert_eq!(claimed_uuids(&rest), vec![refs[2]]);
        assert!(store.claim(&ch, &quick("w3", 5)).await.unwrap().is_empty());
        // Claimed jobs still count.
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 3);
    }

    pub async fn claim_waits_for_ingest(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let waiting = {
            let store = Arc::clone(&store);
            let ch = ch.clone();
            tokio::spawn(async move {
                store
                    .claim(&ch, &options("w", 1, Duration::from_secs(8), LONG))
                    .await
            })
        };
        tokio::time::sleep(ms(200)).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let jobs = waiting.await.unwrap().unwrap();
        assert_eq!(claimed_uuids(&jobs), vec![uuid.as_str()]);
    }

    pub async fn claim_returns_empty_after_block(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let started = Instant::now();
        let jobs = store
            .claim(&ch, &options("w", 1, ms(300), LONG))
            .await
            .unwrap();
        assert!(jobs.is_empty());
        assert!(
            started.elapsed() >= ms(200),
            "returned after {:?}, before the block time",
            started.elapsed()
        );
    }

    pub async fn reclaim_after_min_idle(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;

        // Wide enough that "not idle long enough yet" holds between two store calls on a
        // loaded machine.
        let idle = ms(2000);
        let first = store
            .claim(&ch, &options("w1", 1, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].deliveries, 1);
        assert!(
            store
                .claim(&ch, &options("w2", 1, Duration::ZERO, idle))
                .await
                .unwrap()
                .is_empty(),
            "not idle long enough yet"
        );

        tokio::time::sleep(idle + ms(200)).await;
        let again = store
            .claim(&ch, &options("w2", 1, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].id, first[0].id);
        assert_eq!(again[0].event_uuid, uuid);
        assert_eq!(again[0].deliveries, 2);
        assert_eq!(again[0].payload, first[0].payload);

        // The claim moved: the first worker can no longer touch it, the second can.
        assert!(matches!(
            store.touch(&first[0], "w1").await,
            Err(StoreError::NotFound(_))
        ));
        store.touch(&again[0], "w2").await.unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
    }

    pub async fn blocked_claim_picks_up_reclaimable_job(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let idle = ms(300);
        let first = store
            .claim(&ch, &options("w1", 1, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(first.len(), 1);
        // Nothing new arrives; the abandoned job becomes reclaimable while this claim waits.
        let jobs = store
            .claim(&ch, &options("w2", 1, Duration::from_secs(3), idle))
            .await
            .unwrap();
        assert_eq!(claimed_uuids(&jobs), vec![uuid.as_str()]);
        assert_eq!(jobs[0].deliveries, 2);
    }

    pub async fn touch_prevents_reclaim(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        ingest_jobs(&store, &lease, &[&random_uuid(), &random_uuid()]).await;
        // Both claimed, both left idle past `idle`; then one is touched. Another consumer
        // reclaims exactly the other one: the touch reset the idle time. (The touch and the
        // reclaim are two store calls apart, far less than `idle` on any machine.)
        let idle = ms(2000);
        let jobs = store
            .claim(&ch, &options("w1", 2, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 2);
        tokio::time::sleep(idle + ms(200)).await;
        store.touch(&jobs[0], "w1").await.unwrap();
        let reclaimed = store
            .claim(&ch, &options("w2", 2, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(reclaimed.len(), 1, "{reclaimed:?}");
        assert_eq!(reclaimed[0].event_uuid, jobs[1].event_uuid);
        match store.touch(&jobs[0], "w2").await {
            Err(StoreError::NotFound(_)) => {}
            other => panic!("touch by a consumer that does not hold the job: {other:?}"),
        }
    }

    pub async fn dead_letter_after_max_deliveries(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let opts = |consumer: &str| ClaimOptions {
            max_deliveries: 2,
            journal: Some(fulfilld::store::ClaimJournal {
                replica: "r1".into(),
                retention: LONG,
            }),
            ..options(consumer, 1, Duration::ZERO, ms(300))
        };

        let first = store.claim(&ch, &opts("w1")).await.unwrap();
        assert_eq!(first[0].deliveries, 1);
        tokio::time::sleep(ms(400)).await;
        let second = store.claim(&ch, &opts("w2")).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].deliveries, 2);
        tokio::time::sleep(ms(400)).await;
        assert!(store.claim(&ch, &opts("w3")).await.unwrap().is_empty());

        assert_eq!(store.queue_depth(&ch).await.unwrap(), 0);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 1);
        let dead = store.dead_letters(&ch, 10).await.unwrap();
        let dead = &dead[0];
        assert_eq!(dead.kind, DeadLetterKind::Job);
        assert_eq!(dead.event_uuid, uuid);
        assert_eq!(dead.deliveries, 2);
        assert_eq!(dead.payload, first[0].payload);
        assert!(
            dead.reason.contains("delivered") && dead.reason.contains('2'),
            "reason: {}",
            dead.reason
        );
        // The worker that still holds it finds it gone.
        assert!(matches!(
            store.touch(&second[0], "w2").await,
            Err(StoreError::NotFound(_))
        ));
        // Its journal says where it went and why.
        let journal = store.journal(&uuid).await.unwrap();
        assert!(
            journal.iter().any(|e| matches!(
                &e.event,
                fulfilld::store::JournalEvent::DeadLettered { reason } if reason.contains("delivered 2 times")
            )),
            "{journal:?}"
        );
    }

    pub async fn complete_records_and_removes(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let jobs = store.claim(&ch, &quick("w", 1)).await.unwrap();
        let job = &jobs[0];
        let record = record_for(job, "completed");
        store.complete(job, record.clone()).await.unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 0);
        assert_eq!(store.job_record(&uuid).await.unwrap(), Some(record.clone()));

        // Gone for good: not reclaimable even with no idle time, not touchable.
        let any = options("w2", 5, Duration::ZERO, Duration::ZERO);
        assert!(store.claim(&ch, &any).await.unwrap().is_empty());
        assert!(matches!(
            store.touch(job, "w").await,
            Err(StoreError::NotFound(_))
        ));

        // Completing again is fine and keeps the (latest) record.
        let failed = JobRecord {
            outcome: "failed".into(),
            code: Some("409".into()),
            ..record
        };
        store.complete(job, failed.clone()).await.unwrap();
        assert_eq!(store.job_record(&uuid).await.unwrap(), Some(failed));
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 0);
    }

    pub async fn dead_letter_job_moves_the_job(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let jobs = store.claim(&ch, &quick("w", 1)).await.unwrap();
        let job = &jobs[0];
        store
            .dead_letter_job(job, "COMPONENT_FUEL: out of fuel")
            .await
            .unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 0);
        let dead = store.dead_letters(&ch, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        let dead = &dead[0];
        assert_eq!(dead.kind, DeadLetterKind::Job);
        assert_eq!(dead.reason, "COMPONENT_FUEL: out of fuel");
        assert_eq!(dead.deliveries, 1);
        assert_eq!(dead.event_uuid, uuid);
        assert_eq!(dead.replay_id, job.replay_id);
        assert_eq!(dead.payload, job.payload);
        assert_eq!(dead.channel, ch);

        // A second time: the job is gone.
        assert!(matches!(
            store.dead_letter_job(job, "again").await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 1);
        assert!(store.claim(&ch, &quick("w", 1)).await.unwrap().is_empty());
    }

    pub async fn requeue_gives_a_fresh_job(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let idle = ms(300);
        let first = store
            .claim(&ch, &options("w1", 1, Duration::ZERO, idle))
            .await
            .unwrap();
        tokio::time::sleep(ms(400)).await;
        let second = store
            .claim(&ch, &options("w2", 1, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(second[0].deliveries, 2);
        store.dead_letter_job(&second[0], "gave up").await.unwrap();
        let dead = store.dead_letters(&ch, 1).await.unwrap().remove(0);
        assert_eq!(dead.deliveries, 2);

        let new_id = store.requeue(&ch, &dead.id).await.unwrap();
        assert_ne!(new_id, first[0].id);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 0);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
        assert!(matches!(
            store.dead_letter(&ch, &dead.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.requeue(&ch, &dead.id).await,
            Err(StoreError::NotFound(_))
        ));

        // Requeueing bypasses dedupe, and the job starts over.
        let jobs = store
            .claim(&ch, &options("w3", 5, Duration::ZERO, idle))
            .await
            .unwrap();
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(job.id, new_id);
        assert_eq!(job.deliveries, 1);
        assert_eq!(job.event_uuid, uuid);
        assert_eq!(job.replay_id, first[0].replay_id);
        assert_eq!(job.payload, first[0].payload);
        store
            .complete(job, record_for(job, "completed"))
            .await
            .unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 0);
    }

    pub async fn queue_depth_and_dead_letter_count(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let jobs = uuids(3);
        let dead = uuids(2);
        let report = store
            .ingest(
                &lease,
                IngestBatch {
                    jobs: jobs.iter().zip(1..).map(|(u, r)| new_job(u, r)).collect(),
                    dead_letters: dead
                        .iter()
                        .zip(10..)
                        .map(|(u, r)| raw_dead_letter(u, r))
                        .collect(),
                    cursor: Some(ReplayId::from_u64(11)),
                },
            )
            .await
            .unwrap();
        assert_eq!(report.enqueued.len(), 3);
        assert_eq!(report.dead_lettered, 2);
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 3);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 2);

        let claimed = store.claim(&ch, &quick("w", 2)).await.unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 3);
        store
            .complete(&claimed[0], record_for(&claimed[0], "skipped"))
            .await
            .unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 2);
        store.dead_letter_job(&claimed[1], "failed").await.unwrap();
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 3);

        // Oldest first, at most `limit`.
        let listed = store.dead_letters(&ch, 2).await.unwrap();
        let listed: Vec<&str> = listed.iter().map(|d| d.event_uuid.as_str()).collect();
        assert_eq!(listed, vec![dead[0].as_str(), dead[1].as_str()]);
        let all = store.dead_letters(&ch, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2].event_uuid, jobs[1]);
        assert_eq!(all[2].kind, DeadLetterKind::Job);
    }

    pub async fn dropped_claim_loses_nothing(h: &Harness) {
        let store = h.open().await;
        let ch = h.channel("");
        let lease = leader(&store, &ch).await;
        let uuid = random_uuid();
        ingest_jobs(&store, &lease, &[&uuid]).await;
        let idle = ms(300);
        // Abandon a claim at once: it may or may not have taken the job.
        let abandoned = tokio::time::timeout(
            Duration::from_micros(1),
            store.claim(&ch, &options("gone", 1, Duration::ZERO, idle)),
        )
        .await;
        let expected = match abandoned {
            Ok(jobs) => {
                let jobs = jobs.unwrap();
                assert_eq!(claimed_uuids(&jobs), vec![uuid.as_str()]);
                2
            }
            Err(_) => 0,
        };
        let jobs = store
            .claim(&ch, &options("w", 1, Duration::from_secs(3), idle))
            .await
            .unwrap();
        assert_eq!(claimed_uuids(&jobs), vec![uuid.as_str()]);
        if expected == 2 {
            assert_eq!(jobs[0].deliveries, 2);
        }
    }

    pub async fn holds_are_readers_writer_locks(h: &Harness) {
        let store = h.open().await;
        let name = format!("whmcs-client:{}", h.tag);
        let hold = |holder: &'static str, mode| {
            let (store, name) = (store.clone(), name.clone());
            async move { store.try_hold(&name, holder, mode, LONG).await.unwrap() }
        };
        assert!(hold("job-a", HoldMode::Shared).await);
        assert!(hold("job-b", HoldMode::Shared).await);
        // A writer waits for the readers and, while it waits, keeps new readers out.
        assert!(!hold("job-w", HoldMode::Exclusive).await);
        assert!(!hold("job-c", HoldMode::Shared).await);
        store.release_hold(&name, "job-a").await.unwrap();
        assert!(!hold("job-w", HoldMode::Exclusive).await);
        store.release_hold(&name, "job-b").await.unwrap();
        assert!(hold("job-w", HoldMode::Exclusive).await);
        assert!(!hold("job-x", HoldMode::Exclusive).await);
        assert!(!hold("job-c", HoldMode::Shared).await);
        // Other names are independent.
        assert!(
            store
                .try_hold(&format!("{name}-other"), "job-c", HoldMode::Exclusive, LONG)
                .await
                .unwrap()
        );
        store.release_hold(&name, "job-w").await.unwrap();
        assert!(hold("job-c", HoldMode::Shared).await);
        // Releasing what one does not hold changes nothing.
        store.release_hold(&name, "job-nobody").await.unwrap();
        assert!(!hold("job-w", HoldMode::Exclusive).await);
        store.release_hold(&name, "job-w").await.unwrap();
    }

    /// A run renews its holds while it holds them, even while a writer waits for the name; a
    /// holder that holds nothing there renews nothing. Without the renewal the reader's 2 s
    /// hold would have run out before the writer's second attempt.
    pub async fn holds_are_renewed_by_their_holder_only(h: &Harness) {
        let store = h.open().await;
        let name = format!("whmcs-client:{}", h.tag);
        // Wide enough that the steps before the renewal fit in it on a loaded machine.
        let short = Duration::from_millis(2000);
        assert!(
            store
                .try_hold(&name, "run-a", HoldMode::Shared, short)
                .await
                .unwrap()
        );
        assert!(
            !store
                .try_hold(&name, "run-b", HoldMode::Exclusive, short)
                .await
                .unwrap()
        );
        assert!(store.renew_hold(&name, "run-a", LONG).await.unwrap());
        assert!(!store.renew_hold(&name, "run-c", LONG).await.unwrap());
        tokio::time::sleep(short + Duration::from_millis(200)).await;
        assert!(
            !store
                .try_hold(&name, "run-b", HoldMode::Exclusive, short)
                .await
                .unwrap(),
            "the renewed shared hold still stands"
        );
        store.release_hold(&name, "run-a").await.unwrap();
        assert!(!store.renew_hold(&name, "run-a", LONG).await.unwrap());
        assert!(
            store
                .try_hold(&name, "run-b", HoldMode::Exclusive, LONG)
                .await
                .unwrap()
        );
        store.release_hold(&name, "run-b").await.unwrap();
    }

    pub async fn holds_expire_and_a_holder_never_waits_for_itself(h: &Harness) {
        let store = h.open().await;
        let name = format!("whmcs-client:{}", h.tag);
        // Wide enough that "another job waits" holds between store calls on a loaded machine.
        let short = Duration::from_millis(2000);
        // A job that died holding its shared hold: the same job, delivered again, is the same
        // holder and does not wait for it; another job waits until it expires.
        assert!(
            store
                .try_hold(&name, "uuid-1", HoldMode::Shared, short)
                .await
                .unwrap()
        );
        assert!(
            store
                .try_hold(&name, "uuid-1", HoldMode::Exclusive, LONG)
                .await
                .unwrap()
        );
        store.release_hold(&name, "uuid-1").await.unwrap();
        assert!(
            store
                .try_hold(&name, "uuid-2", HoldMode::Shared, short)
                .await
                .unwrap()
        );
        assert!(
            !store
                .try_hold(&name, "uuid-3", HoldMode::Exclusive, short)
                .await
                .unwrap()
        );
        tokio::time::sleep(short + Duration::from_millis(300)).await;
        // Both the dead reader and the writer's waiting registration have run out.
        assert!(
            store
                .try_hold(&name, "uuid-4", HoldMode::Exclusive, LONG)
                .await
                .unwrap()
        );
        store.release_hold(&name, "uuid-4").await.unwrap();
    }

    pub async fn channels_are_isolated(h: &Harness) {
        let store = h.open().await;
        let (a, b) = (h.channel("A"), h.channel("B"));
        let lease_a = store
            .acquire_lease(&a, "replica-1", LONG)
            .await
            .unwrap()
            .unwrap();
        let lease_b = store
            .acquire_lease(&b, "replica-2", LONG)
            .await
            .unwrap()
            .expect("each channel has its own lease");
        let [job_a, dead_a] = [random_uuid(), random_uuid()];
        store
            .ingest(
                &lease_a,
                IngestBatch {
                    jobs: vec![new_job(&job_a, 1)],
                    dead_letters: vec![raw_dead_letter(&dead_a, 2)],
                    cursor: Some(ReplayId::from_u64(2)),
                },
            )
            .await
            .unwrap();
        store.request_backfill(&a).await.unwrap();

        assert_eq!(store.cursor(&b).await.unwrap(), None);
        assert!(!store.backfill_requested(&b).await.unwrap());
        assert_eq!(store.queue_depth(&b).await.unwrap(), 0);
        assert_eq!(store.dead_letter_count(&b).await.unwrap(), 0);
        assert!(store.dead_letters(&b, 10).await.unwrap().is_empty());
        assert!(store.claim(&b, &quick("w", 10)).await.unwrap().is_empty());
        let dead_id = store.dead_letters(&a, 1).await.unwrap().remove(0).id;
        assert!(matches!(
            store.dead_letter(&b, &dead_id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.requeue(&b, &dead_id).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.lease(&b).await.unwrap().unwrap().holder, "replica-2");
        assert_eq!(store.lease(&a).await.unwrap().unwrap().holder, "replica-1");

        // B's leader writes B only.
        let job_b = random_uuid();
        let mut batch = jobs_batch(&[&job_b], 5);
        batch.cursor = Some(ReplayId::from_u64(5));
        store.ingest(&lease_b, batch).await.unwrap();
        assert_eq!(store.cursor(&a).await.unwrap(), Some(ReplayId::from_u64(2)));
        assert_eq!(store.cursor(&b).await.unwrap(), Some(ReplayId::from_u64(5)));
        assert!(store.backfill_requested(&a).await.unwrap());

        let got_a = store.claim(&a, &quick("w", 10)).await.unwrap();
        assert_eq!(claimed_uuids(&got_a), vec![job_a.as_str()]);
        let got_b = store.claim(&b, &quick("w", 10)).await.unwrap();
        assert_eq!(claimed_uuids(&got_b), vec![job_b.as_str()]);
        assert_eq!(got_b[0].channel, b);
    }

    pub async fn data_survives_reopen(h: &Harness) {
        let ch = h.channel("");
        let store = h.open().await;
        let lease = store
            .acquire_lease(&ch, "replica-a", ms(300))
            .await
            .unwrap()
            .unwrap();
        let [done, dead, waiting, raw] =
            [random_uuid(), random_uuid(), random_uuid(), random_uuid()];
        store
            .ingest(
                &lease,
                IngestBatch {
                    jobs: vec![new_job(&done, 1), new_job(&dead, 2), new_job(&waiting, 3)],
                    dead_letters: vec![raw_dead_letter(&raw, 4)],
                    cursor: Some(ReplayId::from_u64(4)),
                },
            )
            .await
            .unwrap();
        let claimed = store.claim(&ch, &quick("w", 2)).await.unwrap();
        assert_eq!(claimed_uuids(&claimed), vec![done.as_str(), dead.as_str()]);
        let record = record_for(&claimed[0], "completed");
        store.complete(&claimed[0], record.clone()).await.unwrap();
        store.dead_letter_job(&claimed[1], "gave up").await.unwrap();
        let mut seen_ids: BTreeSet<String> = claimed.iter().map(|j| j.id.clone()).collect();
        drop(store);

        let store = h.open().await;
        assert_eq!(
            store.cursor(&ch).await.unwrap(),
            Some(ReplayId::from_u64(4))
        );
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 1);
        assert_eq!(store.dead_letter_count(&ch).await.unwrap(), 2);
        assert_eq!(store.job_record(&done).await.unwrap(), Some(record));
        let dead_letters = store.dead_letters(&ch, 10).await.unwrap();
        assert_eq!(dead_letters[0].kind, DeadLetterKind::Undecodable);
        assert_eq!(dead_letters[0].payload, raw_dead_letter(&raw, 4).payload);
        assert_eq!(dead_letters[1].kind, DeadLetterKind::Job);
        assert_eq!(dead_letters[1].event_uuid, dead);

        // The epoch keeps increasing across the restart.
        tokio::time::sleep(ms(400)).await;
        let b = store
            .acquire_lease(&ch, "replica-b", LONG)
            .await
            .unwrap()
            .expect("the old lease expired");
        assert!(b.epoch > lease.epoch);
        assert!(matches!(
            store.ingest(&lease, jobs_batch(&[&random_uuid()], 9)).await,
            Err(StoreError::Fenced { .. })
        ));

        // Dedupe entries survive; new jobs get ids never used before.
        let fresh = random_uuid();
        let report = store
            .ingest(&b, jobs_batch(&[&done, &waiting, &fresh], 5))
            .await
            .unwrap();
        assert_eq!(report.enqueued, vec![fresh.clone()]);
        assert_eq!(report.duplicates, vec![done.clone(), waiting.clone()]);
        let jobs = store.claim(&ch, &quick("w", 5)).await.unwrap();
        assert_eq!(claimed_uuids(&jobs), vec![waiting.as_str(), fresh.as_str()]);
        for job in &jobs {
            assert!(seen_ids.insert(job.id.clone()), "id {} reused", job.id);
        }
        let requeued = store.requeue(&ch, &dead_letters[1].id).await.unwrap();
        assert!(seen_ids.insert(requeued.clone()), "id {requeued} reused");
        store.release_lease(&b).await.unwrap();
        drop(store);

        let store = h.open().await;
        let c = store
            .acquire_lease(&ch, "replica-c", LONG)
            .await
            .unwrap()
            .unwrap();
        assert!(c.epoch > b.epoch, "epoch after release and reopen");
        assert_eq!(store.queue_depth(&ch).await.unwrap(), 3);
    }

    fn entry(at_ms: i64, event: fulfilld::store::JournalEvent) -> fulfilld::store::JournalEntry {
        fulfilld::store::JournalEntry {
            at_ms,
            replica: "r1".into(),
            event,
        }
    }

    fn claimed(delivery: u32) -> fulfilld::store::JournalEvent {
        fulfilld::store::JournalEvent::Claimed {
            worker: "r1-w0".into(),
            delivery,
        }
    }

    pub async fn journal_keeps_order_and_finds_jobs_by_order(h: &Harness) {
        use fulfilld::store::JournalEvent;
        let store = h.open().await;
        let order = format!("801{}AAA", &random_uuid().replace('-', "")[..12]);
        let (first, second) = (random_uuid(), random_uuid());
        let hour = Duration::from_secs(3600);
        let enqueued = entry(
            1_000,
            JournalEvent::Enqueued {
                replay_id: "7".into(),
            },
        );
        store
            .append_journal(&first, Some(&order), std::slice::from_ref(&enqueued), hour)
            .await
            .unwrap();
        store
            .append_journal(
                &first,
                Some(&order),
                &[entry(1_001, claimed(1)), entry(1_002, claimed(2))],
                hour,
            )
            .await
            .unwrap();
        store
            .append_journal(&second, Some(&order), &[entry(5_000, claimed(1))], hour)
            .await
            .unwrap();
        let journal = store.journal(&first).await.unwrap();
        assert_eq!(journal.len(), 3);
        assert_eq!(journal[0], enqueued);
        assert_eq!(journal[2].event, claimed(2));
        // Newest job first (by each job's first entry).
        assert_eq!(
            store.jobs_of_order(&order).await.unwrap(),
            vec![second.clone(), first.clone()]
        );
        assert!(store.journal(&random_uuid()).await.unwrap().is_empty());
        assert!(
            store
                .jobs_of_order("801000000000000XYZ")
                .await
                .unwrap()
                .is_empty()
        );
        // Kept across a reopen.
        drop(store);
        let store = h.open().await;
        assert_eq!(store.journal(&second).await.unwrap().len(), 1);
    }

    pub async fn journal_is_bounded_and_expires(h: &Harness) {
        use fulfilld::store::journal::{MAX_ENTRIES_PER_JOB, MAX_JOBS_PER_ORDER};
        let store = h.open().await;
        let hour = Duration::from_secs(3600);
        // Entries per job: the newest are kept.
        let uuid = random_uuid();
        let many: Vec<_> = (0..MAX_ENTRIES_PER_JOB as u32 + 5)
            .map(|n| entry(i64::from(n), claimed(n)))
            .collect();
        store
            .append_journal(&uuid, None, &many, hour)
            .await
            .unwrap();
        let kept = store.journal(&uuid).await.unwrap();
        assert_eq!(kept.len(), MAX_ENTRIES_PER_JOB);
        assert_eq!(
            kept.last().unwrap().event,
            claimed(MAX_ENTRIES_PER_JOB as u32 + 4)
        );
        // Jobs per Order: the newest are kept.
        let order = format!("801{}AAA", &random_uuid().replace('-', "")[..12]);
        let mut jobs = Vec::new();
        for n in 0..MAX_JOBS_PER_ORDER + 3 {
            let job = random_uuid();
            store
                .append_journal(
                    &job,
                    Some(&order),
                    &[entry(10_000 + n as i64, claimed(1))],
                    hour,
                )
                .await
                .unwrap();
            jobs.push(job);
        }
        let listed = store.jobs_of_order(&order).await.unwrap();
        assert_eq!(listed.len(), MAX_JOBS_PER_ORDER);
        assert_eq!(listed[0], *jobs.last().unwrap());
        assert!(!listed.contains(&jobs[0]));
        // Retention: a journal whose retention passed is gone (Redis by key expiry; the
        // embedded store purges at the next write).
        let short = random_uuid();
        let order2 = format!("801{}AAA", &random_uuid().replace('-', "")[..12]);
        store
            .append_journal(&short, Some(&order2), &[entry(1, claimed(1))], ms(50))
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            tokio::time::sleep(ms(100)).await;
            // Another write gives the embedded store its chance to purge.
            store
                .append_journal(&random_uuid(), None, &[entry(2, claimed(1))], hour)
                .await
                .unwrap();
            if store.journal(&short).await.unwrap().is_empty()
                && store.jobs_of_order(&order2).await.unwrap().is_empty()
            {
                break;
            }
            assert!(start.elapsed() < LONG, "the expired journal is still there");
        }
    }

    pub async fn listings_by_state(h: &Harness) {
        use fulfilld::store::{JobState, list_jobs};
        let store = h.open().await;
        let channel = h.channel("");
        let lease = leader(&store, &channel).await;
        let ids = uuids(4);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        ingest_jobs(&store, &lease, &refs).await;
        let queued = list_jobs(store.as_ref(), &channel, JobState::Queued, 10)
            .await
            .unwrap();
        assert_eq!(
            queued
                .iter()
                .map(|j| j.event_uuid.as_str())
                .collect::<Vec<_>>(),
            refs
        );
        assert!(
            queued
                .iter()
                .all(|j| j.worker.is_none() && j.enqueued_at_ms.is_some())
        );
        // Two claimed: one completed failed, one left running; one dead-lettered.
        let claimed_jobs = store.claim(&channel, &quick("w1", 3)).await.unwrap();
        assert_eq!(claimed_jobs.len(), 3);
        let mut failed = record_for(&claimed_jobs[0], "failed");
        failed.code = Some("409".into());
        store.complete(&claimed_jobs[0], failed).await.unwrap();
        store
            .dead_letter_job(&claimed_jobs[2], "COMPONENT_TRAP: boom")
            .await
            .unwrap();
        let running = list_jobs(store.as_ref(), &channel, JobState::Running, 10)
            .await
            .unwrap();
        assert_eq!(running.len(), 1, "{running:?}");
        assert_eq!(running[0].event_uuid, claimed_jobs[1].event_uuid);
        assert_eq!(running[0].worker.as_deref(), Some("w1"));
        let queued = list_jobs(store.as_ref(), &channel, JobState::Queued, 10)
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].event_uuid, ids[3]);
        let failed = list_jobs(store.as_ref(), &channel, JobState::Failed, 10_000)
            .await
            .unwrap();
        let ours = failed
            .iter()
            .find(|j| j.event_uuid == claimed_jobs[0].event_uuid)
            .expect("the failed job is listed");
        assert_eq!(ours.code.as_deref(), Some("409"));
        let dead = list_jobs(store.as_ref(), &channel, JobState::Dead, 10)
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event_uuid, claimed_jobs[2].event_uuid);
        assert!(dead[0].dead_letter_id.is_some());
        assert_eq!(dead[0].message.as_deref(), Some("COMPONENT_TRAP: boom"));
        // Newest first, and the limit keeps the newest.
        let fourth = store.claim(&channel, &quick("w2", 1)).await.unwrap();
        assert_eq!(fourth[0].event_uuid, ids[3]);
        store
            .dead_letter_job(&fourth[0], "COMPONENT_TIMEOUT: slow")
            .await
            .unwrap();
        let dead = list_jobs(store.as_ref(), &channel, JobState::Dead, 10)
            .await
            .unwrap();
        let order: Vec<&str> = dead.iter().map(|j| j.event_uuid.as_str()).collect();
        assert_eq!(
            order,
            [ids[3].as_str(), claimed_jobs[2].event_uuid.as_str()]
        );
        let newest = list_jobs(store.as_ref(), &channel, JobState::Dead, 1)
            .await
            .unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!(newest[0].event_uuid, ids[3]);
        // A completed (not failed) job is in no listing.
        store
            .complete(&claimed_jobs[1], record_for(&claimed_jobs[1], "completed"))
            .await
            .unwrap();
        assert!(
            list_jobs(store.as_ref(), &channel, JobState::Running, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

/// A cursor the previous portal wrote (`SET sf:pe:replay:<channel> <decimal>`) is read as is, and
/// the host writes it back in the same form.
#[tokio::test]
async fn redis_cursor_written_by_the_previous_portal_is_honoured() {
    let url = std::env::var("FULFILLD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let channel = format!("/event/Portal{}__e", &random_uuid()[..8]);
    let key = format!("sf:pe:replay:{channel}");
    let client = ::redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(&key)
        .arg("8123456")
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = fulfilld::store::redis::RedisStore::connect(&url, "fulfilld-portal-test")
        .await
        .unwrap();
    assert_eq!(
        store.cursor(&channel).await.unwrap(),
        Some(ReplayId::from_u64(8_123_456))
    );
    store
        .set_cursor(&channel, Some(&ReplayId::from_u64(8_123_999)))
        .await
        .unwrap();
    let raw: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, "8123999");
    let _: () = ::redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}
