//! Named holds every replica sees (`crate::holds`): two keys per name, in one hash slot.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use super::RedisStore;
use super::codec::ttl_ms;
use crate::holds::{HoldBackend, HoldError, HoldMode};

impl HoldBackend for RedisStore {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        async move {
            let (shared, exclusive) = self.hold_keys(name);
            let held: i64 = self
                .invoke(
                    self.scripts
                        .hold
                        .key(&shared)
                        .key(&exclusive)
                        .arg(holder)
                        .arg(mode.as_str())
                        .arg(ttl_ms(ttl)),
                    "take a hold",
                )
                .await
                .map_err(HoldError::from)?;
            Ok(held == 1)
        }
        .boxed()
    }

    fn renew_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        async move {
            let (shared, exclusive) = self.hold_keys(name);
            let held: i64 = self
                .invoke(
                    self.scripts
                        .rehold
                        .key(&shared)
                        .key(&exclusive)
                        .arg(holder)
                        .arg(ttl_ms(ttl)),
                    "renew a hold",
                )
                .await
                .map_err(HoldError::from)?;
            Ok(held == 1)
        }
        .boxed()
    }

    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>> {
        async move {
            let (shared, exclusive) = self.hold_keys(name);
            let _: i64 = self
                .invoke(
                    self.scripts.unhold.key(&shared).key(&exclusive).arg(holder),
                    "release a hold",
                )
                .await
                .map_err(HoldError::from)?;
            Ok(())
        }
        .boxed()
    }
}
