//! The dead letters (`dead_letters` table): listing, reading, counting and requeueing.

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::EmbeddedStore;
use super::rows::{StoredJob, add_job, load_dead};
use super::tables::{
    Context as _, DEAD, channel_ids, count_channel, open_r, open_w, parse_id, recent_channel_ids,
};
use crate::domain::now_ms;
use crate::store::{DeadLetter, DeadLetterKind, DeadLetters, StoreError};

/// The dead letters `ids` of `channel`, in the order given (ids no longer there are skipped).
fn load_letters(
    table: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    channel: &str,
    ids: Vec<u64>,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(dead) = load_dead(table, channel, id)? {
            out.push(dead.into_dead_letter(channel, id));
        }
    }
    Ok(out)
}

impl DeadLetters for EmbeddedStore {
    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        let channel = channel.to_owned();
        self.read("list dead letters", move |txn| {
            let table = open_r(txn, DEAD)?;
            load_letters(&table, &channel, channel_ids(&table, &channel, limit)?)
        })
        .boxed()
    }

    fn recent_dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        let channel = channel.to_owned();
        self.read("list recent dead letters", move |txn| {
            let table = open_r(txn, DEAD)?;
            let ids = recent_channel_ids(&table, &channel, limit.max(1))?;
            load_letters(&table, &channel, ids)
        })
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<DeadLetter, StoreError>> {
        let channel = channel.to_owned();
        let text = id.to_owned();
        self.read("read a dead letter", move |txn| {
            let not_found =
                || StoreError::NotFound(format!("dead letter {text:?} of channel {channel}"));
            let id = parse_id(&text).ok_or_else(not_found)?;
            let dead = load_dead(&open_r(txn, DEAD)?, &channel, id)?.ok_or_else(not_found)?;
            Ok(dead.into_dead_letter(&channel, id))
        })
        .boxed()
    }

    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        let channel = channel.to_owned();
        let text = id.to_owned();
        async move {
            let new_id = self
                .write("requeue a dead letter", move |txn| {
                    let not_found = || {
                        StoreError::NotFound(format!("dead letter {text:?} of channel {channel}"))
                    };
                    let id = parse_id(&text).ok_or_else(not_found)?;
                    let mut dead_table = open_w(txn, DEAD)?;
                    let dead = load_dead(&dead_table, &channel, id)?.ok_or_else(not_found)?;
                    match dead.kind {
                        DeadLetterKind::Job => {}
                        DeadLetterKind::Undecodable => {
                            return Err(StoreError::Invalid(format!(
                                "dead letter {id} of channel {channel} is an undecodable event \
                                 (raw Avro bytes, not a serialized event): it cannot be requeued \
                                 as a job"
                            )));
                        }
                        DeadLetterKind::Damaged => {
                            return Err(StoreError::Invalid(format!(
                                "dead letter {id} of channel {channel} is a damaged queue entry \
                                 (not a job the host can read): it cannot be requeued"
                            )));
                        }
                    }
                    dead_table
                        .remove((channel.as_str(), id))
                        .context(|| format!("remove dead letter {id} of channel {channel}"))?;
                    drop(dead_table);
                    let now = now_ms();
                    let new_id = add_job(
                        txn,
                        &channel,
                        &StoredJob {
                            event_uuid: dead.event_uuid.clone(),
                            replay_id: dead.replay_id,
                            payload: dead.payload,
                            enqueued_at_ms: now,
                            deliveries: 0,
                            consumer: None,
                            touched_at_ms: now,
                        },
                    )?;
                    tracing::info!(
                        channel = %channel,
                        dead_letter = id,
                        job = new_id,
                        event_uuid = %dead.event_uuid,
                        "dead letter requeued"
                    );
                    Ok(new_id)
                })
                .await?;
            self.jobs_added.notify_waiters();
            Ok(new_id.to_string())
        }
        .boxed()
    }

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        let channel = channel.to_owned();
        self.read("count dead letters", move |txn| {
            count_channel(&open_r(txn, DEAD)?, &channel)
        })
        .boxed()
    }
}
