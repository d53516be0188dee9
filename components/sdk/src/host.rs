//! The raw host interface and the trait a component implements.

use crate::types::{Event, Failure, HoldMode, HostError, Info, Level, Outcome};

/// The WIT imports, one method per import function, with JSON still as text.
///
/// In Wasm it is implemented by `WitHost` (wasm32 only) over the generated bindings; natively
/// the host's benchmark and test kit implement it, so the same rules run in both. Rules normally
/// use the typed layers ([`Salesforce`](crate::Salesforce), [`Whmcs`](crate::Whmcs),
/// [`Log`](crate::Log)) rather than these methods.
pub trait Host {
    /// `salesforce.query`: every matching record as `{"totalSize","done","records":[..]}`.
    fn sf_query(&self, soql: &str) -> Result<String, HostError>;
    /// `salesforce.update`: `fields_json` is a JSON object; `null` clears a field.
    fn sf_update(&self, sobject: &str, id: &str, fields_json: &str) -> Result<(), HostError>;
    /// `billing.call`: one WHMCS action; returns the response JSON on `result=success`.
    fn billing_call(&self, action: &str, params_json: &str) -> Result<String, HostError>;
    /// `log.emit`: never fails.
    fn log(&self, level: Level, step: &str, message: &str, fields: &[(String, String)]);
    /// `config.get`: a non-secret setting, `None` when not exposed.
    fn config(&self, key: &str) -> Option<String>;
    /// `clock.now-ms`: wall-clock milliseconds since the Unix epoch, as the host sees it.
    fn now_ms(&self) -> i64;

    /// `job.delivery` (WIT 1.1): 1 on a job's first run, more when it was handed out again
    /// after an earlier run died. The default (for native test hosts) is 1.
    fn delivery(&self) -> u32 {
        1
    }

    /// `holds.acquire` (WIT 1.1): waits for the named hold. Prefer [`Hold::take`], which
    /// releases it when dropped. The default (for single-threaded native test hosts, where
    /// nothing runs concurrently) grants every hold at once.
    fn acquire_hold(&self, name: &str, mode: HoldMode) -> Result<(), HostError> {
        let _ = (name, mode);
        Ok(())
    }

    /// `holds.release` (WIT 1.1).
    fn release_hold(&self, name: &str) {
        let _ = name;
    }
}

/// A hold taken through the host's `holds` import, released when dropped (the host also
/// releases every hold when the job ends).
pub struct Hold<'h> {
    host: &'h dyn Host,
    name: String,
}

impl<'h> Hold<'h> {
    /// Waits for `name` in `mode`; see the WIT `holds` interface for the semantics.
    pub fn take(host: &'h dyn Host, name: &str, mode: HoldMode) -> Result<Self, HostError> {
        host.acquire_hold(name, mode)?;
        Ok(Self {
            host,
            name: name.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.host.release_hold(&self.name);
    }
}

/// What a component implements; [`export_component!`](crate::export_component) exports it as the
/// WIT `handler` interface.
pub trait Fulfillment {
    /// Name and version, recorded with every job.
    fn info() -> Info;

    /// Provisions the Order named by `event`. `Err` is a business failure the rules have already
    /// recorded where operators look; the host never retries it automatically.
    fn fulfill(host: &dyn Host, event: Event) -> Result<Outcome, Failure>;
}
