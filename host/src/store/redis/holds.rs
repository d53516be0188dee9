//! Named holds every replica sees (`crate::holds`): two keys per name, in one hash slot.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use redis::Script;

use super::RedisStore;
use super::codec::ttl_ms;
use crate::holds::{HoldBackend, HoldError, HoldMode};

impl RedisStore {
    /// Runs one of the hold scripts on `name`'s two keys, with `holder` and then `args` as its
    /// ARGV; its reply (1: held, for `hold` and `rehold`).
    async fn hold_script(
        &self,
        script: &Script,
        name: &str,
        holder: &str,
        args: &[String],
        what: &str,
    ) -> Result<i64, HoldError> {
        let (shared, exclusive) = self.hold_keys(name);
        let mut invocation = script.key(&shared);
        invocation.key(&exclusive).arg(holder);
        for arg in args {
            invocation.arg(arg);
        }
        self.invoke(&invocation, what)
            .await
            .map_err(HoldError::from)
    }
}

impl HoldBackend for RedisStore {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        async move {
            let args = [mode.as_str().to_owned(), ttl_ms(ttl).to_string()];
            let held = self
                .hold_script(&self.scripts.hold, name, holder, &args, "take a hold")
                .await?;
            if held == 1 {
                self.replicated(&mut self.conn(), &self.hold_keys(name).0)
                    .await;
            }
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
            let args = [ttl_ms(ttl).to_string()];
            let held = self
                .hold_script(&self.scripts.rehold, name, holder, &args, "renew a hold")
                .await?;
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
            self.hold_script(&self.scripts.unhold, name, holder, &[], "release a hold")
                .await?;
            Ok(())
        }
        .boxed()
    }
}
