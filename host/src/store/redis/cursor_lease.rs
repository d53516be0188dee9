//! A channel's cursor, backfill request and lease, and the fenced ingest (one script).

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Value;

use super::codec::{array, bytes, text, ttl_ms};
use super::keys::GROUP;
use super::{RedisStore, unavailable};
use crate::domain::ReplayId;
use crate::domain::now_ms;
use crate::store::{
    CursorLease, DEDUPE_TTL, Detail, IngestBatch, IngestReport, Lease, LeaseInfo, StoreError,
    cursor_key,
};

impl CursorLease for RedisStore {
    fn cursor<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReplayId>, StoreError>> {
        async move {
            let key = cursor_key(channel);
            let value: Option<String> = self
                .query(redis::cmd("GET").arg(&key), "GET cursor")
                .await?;
            value
                .map(|text| {
                    ReplayId::parse(&text)
                        .map_err(|e| StoreError::Corrupt(Detail::caused_by(&key, e)))
                })
                .transpose()
        }
        .boxed()
    }

    fn set_cursor<'a>(
        &'a self,
        channel: &'a str,
        replay_id: Option<&'a ReplayId>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = cursor_key(channel);
            let cmd = match replay_id {
                Some(id) => {
                    let mut cmd = redis::cmd("SET");
                    cmd.arg(&key).arg(id.to_string());
                    cmd
                }
                None => {
                    let mut cmd = redis::cmd("DEL");
                    cmd.arg(&key);
                    cmd
                }
            };
            let _: Value = self.query(&cmd, "write cursor").await?;
            Ok(())
        }
        .boxed()
    }

    fn request_backfill<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let _: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(self.keys(channel).backfill)
                        .arg(now_ms()),
                    "SET backfill",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn backfill_requested<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let n: i64 = self
                .query(
                    redis::cmd("EXISTS").arg(self.keys(channel).backfill),
                    "EXISTS backfill",
                )
                .await?;
            Ok(n > 0)
        }
        .boxed()
    }

    fn acquire_lease<'a>(
        &'a self,
        channel: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        async move {
            let keys = self.keys(channel);
            let epoch: i64 = self
                .invoke(
                    self.scripts
                        .acquire
                        .key(&keys.lease)
                        .key(&keys.epoch)
                        .arg(holder)
                        .arg(ttl_ms(ttl)),
                    "acquire lease",
                )
                .await?;
            Ok(u64::try_from(epoch).ok().map(|epoch| Lease {
                channel: channel.to_owned(),
                holder: holder.to_owned(),
                epoch,
                ttl_ms: ttl_ms(ttl),
            }))
        }
        .boxed()
    }

    fn renew_lease<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Lease, StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let renewed: i64 = self
                .invoke(
                    self.scripts
                        .renew
                        .key(&keys.lease)
                        .arg(&lease.holder)
                        .arg(lease.epoch)
                        .arg(ttl_ms(ttl)),
                    "renew lease",
                )
                .await?;
            if renewed == 1 {
                Ok(Lease {
                    ttl_ms: ttl_ms(ttl),
                    ..lease.clone()
                })
            } else {
                Err(StoreError::Fenced {
                    channel: lease.channel.clone(),
                    detail: format!(
                        "lease epoch {} of {} expired or was taken over",
                        lease.epoch, lease.holder
                    ),
                })
            }
        }
        .boxed()
    }

    fn release_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let _: i64 = self
                .invoke(
                    self.scripts
                        .release
                        .key(&keys.lease)
                        .arg(&lease.holder)
                        .arg(lease.epoch),
                    "release lease",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn lease<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<LeaseInfo>, StoreError>> {
        async move {
            let keys = self.keys(channel);
            let mut conn = self.conn();
            let (holder, epoch, pttl): (Option<String>, Option<u64>, i64) = redis::pipe()
                .cmd("HGET")
                .arg(&keys.lease)
                .arg("holder")
                .cmd("HGET")
                .arg(&keys.lease)
                .arg("epoch")
                .cmd("PTTL")
                .arg(&keys.lease)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read lease", e))?;
            Ok(match (holder, epoch) {
                (Some(holder), Some(epoch)) if pttl > 0 => Some(LeaseInfo {
                    holder,
                    epoch,
                    expires_in_ms: u64::try_from(pttl).unwrap_or(0),
                }),
                _ => None,
            })
        }
        .boxed()
    }

    fn ingest<'a>(
        &'a self,
        lease: &'a Lease,
        batch: IngestBatch,
    ) -> BoxFuture<'a, Result<IngestReport, StoreError>> {
        async move {
            let keys = self.keys(&lease.channel);
            let mut invocation = self.scripts.ingest.prepare_invoke();
            invocation
                .key(&keys.lease)
                .key(&keys.cursor)
                .key(&keys.jobs)
                .key(&keys.dead)
                .key(&keys.backfill);
            for job in &batch.jobs {
                invocation.key(format!("{}{}", keys.dedupe_prefix, job.event_uuid));
            }
            invocation
                .arg(&lease.holder)
                .arg(lease.epoch)
                .arg(batch.jobs.len())
                .arg(batch.dead_letters.len())
                .arg(
                    batch
                        .cursor
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                )
                .arg(DEDUPE_TTL.as_secs())
                .arg(now_ms())
                .arg(GROUP);
            for job in &batch.jobs {
                invocation
                    .arg(&job.event_uuid)
                    .arg(job.replay_id.to_string())
                    .arg(job.payload.as_slice());
            }
            for letter in &batch.dead_letters {
                invocation
                    .arg(&letter.event_uuid)
                    .arg(letter.replay_id.to_string())
                    .arg(letter.payload.as_slice())
                    .arg(&letter.reason);
            }
            let reply: Value = self.invoke(&invocation, "ingest").await?;
            // The leader moves on once this returns: in cluster and sentinel modes, not before a
            // replica has the jobs and the cursor (a failover would otherwise lose them while
            // the stream goes on after them).
            self.replicated(&mut self.conn(), &keys.jobs).await;
            let mut reply = array(reply).into_iter();
            let status = reply.next().map(text).unwrap_or_default();
            if status == "fenced" {
                let holder = reply.next().map(text).unwrap_or_default();
                let epoch = reply.next().map(text).unwrap_or_default();
                return Err(StoreError::Fenced {
                    channel: lease.channel.clone(),
                    detail: if holder.is_empty() {
                        format!("lease epoch {} expired", lease.epoch)
                    } else {
                        format!("lease now held by {holder} at epoch {epoch}")
                    },
                });
            }
            if status != "ok" {
                return Err(StoreError::Corrupt(
                    format!("ingest script answered {status:?}").into(),
                ));
            }
            let flags = reply.next().map(bytes).unwrap_or_default();
            let mut report = IngestReport {
                dead_lettered: batch.dead_letters.len(),
                ..IngestReport::default()
            };
            for (job, flag) in batch.jobs.into_iter().zip(flags) {
                if flag == b'1' {
                    report.enqueued.push(job.event_uuid);
                } else {
                    report.duplicates.push(job.event_uuid);
                }
            }
            Ok(report)
        }
        .boxed()
    }
}
