//! The dead letters (a stream per channel).

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Value;

use super::RedisStore;
use super::codec::{array, dead_letter_from_entry, is_stream_id, text};
use super::keys::GROUP;
use crate::domain::now_ms;
use crate::store::{DeadLetter, DeadLetters, StoreError};

impl RedisStore {
    /// At most `limit` dead letters of `channel`, read with `command` (`XRANGE` oldest first,
    /// `XREVRANGE` newest first) over `bounds`.
    async fn read_dead(
        &self,
        channel: &str,
        command: &str,
        bounds: [&str; 2],
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let keys = self.keys(channel);
        let value: Value = self
            .query(
                redis::cmd(command)
                    .arg(&keys.dead)
                    .arg(bounds[0])
                    .arg(bounds[1])
                    .arg("COUNT")
                    .arg(limit.max(1)),
                &format!("{command} dead letters"),
            )
            .await?;
        Ok(array(value)
            .into_iter()
            .map(|entry| dead_letter_from_entry(channel, entry))
            .collect())
    }
}

impl DeadLetters for RedisStore {
    fn dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        self.read_dead(channel, "XRANGE", ["-", "+"], limit).boxed()
    }

    fn recent_dead_letters<'a>(
        &'a self,
        channel: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, StoreError>> {
        self.read_dead(channel, "XREVRANGE", ["+", "-"], limit)
            .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<DeadLetter, StoreError>> {
        async move {
            let not_found = || StoreError::NotFound(format!("dead letter {id} of {channel}"));
            if !is_stream_id(id) {
                return Err(not_found());
            }
            let keys = self.keys(channel);
            let value: Value = self
                .query(
                    redis::cmd("XRANGE").arg(&keys.dead).arg(id).arg(id),
                    "XRANGE dead letter",
                )
                .await?;
            match array(value).into_iter().next() {
                Some(entry) => Ok(dead_letter_from_entry(channel, entry)),
                None => Err(not_found()),
            }
        }
        .boxed()
    }

    fn requeue<'a>(
        &'a self,
        channel: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        async move {
            let not_found = || StoreError::NotFound(format!("dead letter {id} of {channel}"));
            if !is_stream_id(id) {
                return Err(not_found());
            }
            let keys = self.keys(channel);
            let reply: Value = self
                .invoke(
                    self.scripts
                        .requeue
                        .key(&keys.dead)
                        .key(&keys.jobs)
                        .arg(id)
                        .arg(now_ms())
                        .arg(GROUP),
                    "requeue dead letter",
                )
                .await?;
            let mut reply = array(reply).into_iter();
            match reply.next().map(text).as_deref() {
                Some("ok") => Ok(reply.next().map(text).unwrap_or_default()),
                Some("undecodable") => Err(StoreError::Invalid(format!(
                    "dead letter {id} is an undecodable event (raw Avro): it cannot be requeued; \
                     fix the schema or the publisher and replay it from Salesforce"
                ))),
                Some("damaged") => Err(StoreError::Invalid(format!(
                    "dead letter {id} is a damaged queue entry (not a job the host can read): it \
                     cannot be requeued; `dead-letters show {id}` prints what it held"
                ))),
                _ => Err(not_found()),
            }
        }
        .boxed()
    }

    fn dead_letter_count<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let n: u64 = self
                .query(
                    redis::cmd("XLEN").arg(self.keys(channel).dead),
                    "XLEN dead letters",
                )
                .await?;
            Ok(n)
        }
        .boxed()
    }
}
