//! Holds in this process's memory: the embedded store belongs to one process, and a hold dies
//! with the process that took it.

use std::time::Duration;

use futures::future::BoxFuture;

use super::EmbeddedStore;
use crate::holds::{HoldBackend, HoldError, HoldMode};

impl HoldBackend for EmbeddedStore {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        self.holds.try_hold(name, holder, mode, ttl)
    }

    fn renew_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        self.holds.renew_hold(name, holder, ttl)
    }

    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>> {
        self.holds.release_hold(name, holder)
    }
}
