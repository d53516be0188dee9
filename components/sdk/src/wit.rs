//! The Wasm side (compiled for `wasm32` only): [`WitHost`] over the generated imports and the
//! conversions [`export_component!`](crate::export_component) uses for the `handler` export.

use crate::bindings::exports::fulfilld::fulfillment::handler as wit_handler;
use crate::bindings::fulfilld::fulfillment::{
    billing, clock, config, holds, job, log, salesforce, types,
};
use crate::host::{Fulfillment, Host};
use crate::types::{Disposition, ErrorKind, Event, HoldMode, HostError, Level};

/// [`Host`] implemented by the component's WIT imports.
#[derive(Debug, Clone, Copy, Default)]
pub struct WitHost;

impl Host for WitHost {
    fn sf_query(&self, soql: &str) -> Result<String, HostError> {
        salesforce::query(soql).map_err(host_error)
    }

    fn sf_update(&self, sobject: &str, id: &str, fields_json: &str) -> Result<(), HostError> {
        salesforce::update(sobject, id, fields_json).map_err(host_error)
    }

    fn billing_call(&self, action: &str, params_json: &str) -> Result<String, HostError> {
        billing::call(action, params_json).map_err(host_error)
    }

    fn log(&self, level: Level, step: &str, message: &str, fields: &[(String, String)]) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::emit(level, step, message, fields);
    }

    fn config(&self, key: &str) -> Option<String> {
        config::get(key)
    }

    fn now_ms(&self) -> i64 {
        clock::now_ms()
    }

    fn delivery(&self) -> u32 {
        job::delivery()
    }

    fn acquire_hold(&self, name: &str, mode: HoldMode) -> Result<(), HostError> {
        let mode = match mode {
            HoldMode::Shared => holds::HoldMode::Shared,
            HoldMode::Exclusive => holds::HoldMode::Exclusive,
        };
        holds::acquire(name, mode).map_err(host_error)
    }

    fn release_hold(&self, name: &str) {
        holds::release(name);
    }
}

fn host_error(e: types::Error) -> HostError {
    let kind = match e.kind {
        types::ErrorKind::Forbidden => ErrorKind::Forbidden,
        types::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
        types::ErrorKind::Rejected => ErrorKind::Rejected,
        types::ErrorKind::HttpStatus => ErrorKind::HttpStatus,
        types::ErrorKind::Timeout => ErrorKind::Timeout,
        types::ErrorKind::Network => ErrorKind::Network,
        types::ErrorKind::BadResponse => ErrorKind::BadResponse,
        types::ErrorKind::Auth => ErrorKind::Auth,
    };
    HostError {
        kind,
        code: e.code,
        message: e.message,
    }
}

/// Used by the expansion of `export_component!`; not a stable API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use crate::bindings::exports::fulfilld::fulfillment::handler::Guest;
    pub type WitEvent = wit_handler::Event;
    pub type WitOutcome = wit_handler::Outcome;
    pub type WitFailure = wit_handler::Failure;
    pub type WitInfo = wit_handler::ComponentInfo;

    pub fn fulfill<R: Fulfillment + ?Sized>(event: WitEvent) -> Result<WitOutcome, WitFailure> {
        let event = Event {
            payload: Event::parse_payload(&event.payload),
            event_uuid: event.event_uuid,
            replay_id: event.replay_id,
            schema_id: event.schema_id,
            channel: event.channel,
            created_date: event.created_date,
        };
        match R::fulfill(&WitHost, event) {
            Ok(outcome) => Ok(WitOutcome {
                disposition: match outcome.disposition {
                    Disposition::Completed => types::Disposition::Completed,
                    Disposition::Skipped => types::Disposition::Skipped,
                },
                message: outcome.message,
            }),
            Err(failure) => Err(WitFailure {
                code: failure.code,
                message: failure.message,
            }),
        }
    }

    pub fn info<R: Fulfillment + ?Sized>() -> WitInfo {
        let info = R::info();
        WitInfo {
            name: info.name,
            version: info.version,
        }
    }
}
