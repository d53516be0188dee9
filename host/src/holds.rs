//! Named holds: the readers-writer locks components take through the `holds` import.
//!
//! A name is held `shared` by any number of holders or `exclusive` by one. Asking for
//! `exclusive` registers the holder at once, which stops new `shared` holds of the name; the
//! exclusive hold is granted when no other holder's `shared` hold is left. Every hold carries a
//! time-to-live, so the holds of a process that died expire on their own.
//!
//! The holder is one run of a job (its EventUuid, delivery and a random part): a second run of
//! the same job (handed out again while, or after, an earlier run held something) is another
//! holder and waits like any other, so a hold keeps two runs of one job apart too. A run's holds
//! are renewed while it holds them (every third of their time-to-live); once the run ends they
//! are released, and the holds of a run whose process died expire after their time-to-live.
//!
//! Backends: every store (a [`crate::store::Store`] is a [`HoldBackend`]; Redis holds are seen
//! by every replica) and [`HoldTable`], a process-local table used by the
//! embedded store and by the runtime when no store is attached (the test kit, `component run`).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

/// Longest hold name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    Shared,
    Exclusive,
}

impl HoldMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldMode::Shared => "shared",
            HoldMode::Exclusive => "exclusive",
        }
    }
}

impl fmt::Display for HoldMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a hold name is refused, or `None` when it is fine.
pub fn invalid_name(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Some(format!(
            "hold name must be 1 to {MAX_NAME_LEN} bytes, got {}",
            name.len()
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(format!(
            "hold name {name:?} must be printable ASCII without spaces"
        ));
    }
    None
}

/// Why a hold could not be taken or released (not that it is busy: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The backend keeping the holds failed (e.g. the store is unreachable); the cause says why.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A holder panicked while it had the process-local table locked.
    #[error("the hold table's lock is poisoned")]
    Poisoned,
}

/// Where holds live.
pub trait HoldBackend: Send + Sync + 'static {
    /// One attempt, never waiting: `true` when `holder` now holds `name` in `mode` (for
    /// `exclusive`: when no other holder's `shared` hold is left). A `false` exclusive attempt
    /// leaves the holder registered, blocking new `shared` holds until it retries, releases or
    /// its `ttl` runs out.
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>>;

    /// Extends every hold `holder` has on `name` to `ttl` from now, whoever waits for the name;
    /// `false` when it holds nothing there any more (its holds expired).
    fn renew_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>>;

    /// Drops every hold `holder` has on `name` (no-op when it has none).
    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>>;
}

/// Holds kept in this process's memory.
#[derive(Debug, Default)]
pub struct HoldTable {
    names: Mutex<HashMap<String, NameHolds>>,
}

#[derive(Debug, Default)]
struct NameHolds {
    shared: HashMap<String, Instant>,
    exclusive: Option<(String, Instant)>,
}

impl NameHolds {
    fn purge(&mut self, now: Instant) {
        self.shared.retain(|_, expires| *expires > now);
        if self.exclusive.as_ref().is_some_and(|(_, e)| *e <= now) {
            self.exclusive = None;
        }
    }

    fn is_empty(&self) -> bool {
        self.shared.is_empty() && self.exclusive.is_none()
    }
}

impl HoldTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`HoldBackend::try_hold`] without the future.
    pub fn try_hold_now(
        &self,
        name: &str,
        holder: &str,
        mode: HoldMode,
        ttl: Duration,
    ) -> Result<bool, HoldError> {
        let mut names = self.names.lock().map_err(|_| HoldError::Poisoned)?;
        let now = Instant::now();
        let holds = names.entry(name.to_owned()).or_default();
        holds.purge(now);
        if holds
            .exclusive
            .as_ref()
            .is_some_and(|(owner, _)| owner != holder)
        {
            return Ok(false);
        }
        let expires = now + ttl;
        match mode {
            HoldMode::Shared => {
                if holds.exclusive.is_none() {
                    holds.shared.insert(holder.to_owned(), expires);
                }
                Ok(true)
            }
            HoldMode::Exclusive => {
                holds.exclusive = Some((holder.to_owned(), expires));
                Ok(holds.shared.keys().all(|other| other == holder))
            }
        }
    }

    /// [`HoldBackend::renew_hold`] without the future.
    pub fn renew_now(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, HoldError> {
        let mut names = self.names.lock().map_err(|_| HoldError::Poisoned)?;
        let now = Instant::now();
        let Some(holds) = names.get_mut(name) else {
            return Ok(false);
        };
        holds.purge(now);
        let mut held = false;
        if let Some(expires) = holds.shared.get_mut(holder) {
            *expires = now + ttl;
            held = true;
        }
        if let Some((owner, expires)) = &mut holds.exclusive
            && owner == holder
        {
            *expires = now + ttl;
            held = true;
        }
        Ok(held)
    }

    /// [`HoldBackend::release`] without the future.
    pub fn release_now(&self, name: &str, holder: &str) -> Result<(), HoldError> {
        let mut names = self.names.lock().map_err(|_| HoldError::Poisoned)?;
        if let Some(holds) = names.get_mut(name) {
            holds.shared.remove(holder);
            if holds.exclusive.as_ref().is_some_and(|(h, _)| h == holder) {
                holds.exclusive = None;
            }
            holds.purge(Instant::now());
            if holds.is_empty() {
                names.remove(name);
            }
        }
        Ok(())
    }
}

impl HoldBackend for HoldTable {
    fn try_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        mode: HoldMode,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        Box::pin(async move { self.try_hold_now(name, holder, mode, ttl) })
    }

    fn renew_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, HoldError>> {
        Box::pin(async move { self.renew_now(name, holder, ttl) })
    }

    fn release_hold<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), HoldError>> {
        Box::pin(async move { self.release_now(name, holder) })
    }
}

/// A shared hold backend handle.
pub type SharedHolds = Arc<dyn HoldBackend>;

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn readers_share_and_a_writer_waits_for_them() {
        let t = HoldTable::new();
        assert!(t.try_hold_now("c", "a", HoldMode::Shared, TTL).unwrap());
        assert!(t.try_hold_now("c", "b", HoldMode::Shared, TTL).unwrap());
        assert!(!t.try_hold_now("c", "w", HoldMode::Exclusive, TTL).unwrap());
        // The waiting writer blocks new readers.
        assert!(!t.try_hold_now("c", "d", HoldMode::Shared, TTL).unwrap());
        t.release_now("c", "a").unwrap();
        t.release_now("c", "b").unwrap();
        assert!(t.try_hold_now("c", "w", HoldMode::Exclusive, TTL).unwrap());
        assert!(!t.try_hold_now("c", "x", HoldMode::Exclusive, TTL).unwrap());
        t.release_now("c", "w").unwrap();
        assert!(t.try_hold_now("c", "d", HoldMode::Shared, TTL).unwrap());
    }

    #[test]
    fn a_holder_does_not_wait_for_itself_and_holds_expire() {
        let t = HoldTable::new();
        assert!(t.try_hold_now("c", "job", HoldMode::Shared, TTL).unwrap());
        assert!(
            t.try_hold_now("c", "job", HoldMode::Exclusive, TTL)
                .unwrap()
        );
        t.release_now("c", "job").unwrap();
        let short = Duration::from_millis(20);
        assert!(
            t.try_hold_now("c", "dead", HoldMode::Shared, short)
                .unwrap()
        );
        assert!(!t.try_hold_now("c", "w", HoldMode::Exclusive, TTL).unwrap());
        std::thread::sleep(Duration::from_millis(40));
        assert!(t.try_hold_now("c", "w", HoldMode::Exclusive, TTL).unwrap());
    }

    #[test]
    fn names_are_checked() {
        assert!(invalid_name("whmcs-client:7").is_none());
        assert!(invalid_name("").is_some());
        assert!(invalid_name("a b").is_some());
        assert!(invalid_name(&"x".repeat(MAX_NAME_LEN + 1)).is_some());
    }
}
