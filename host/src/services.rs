//! The backends behind the component's imports.
//!
//! The runtime's gate (policy, span, timeout, counters, journal) sits in front of a [`Services`]
//! implementation: [`LiveServices`] talks to the real Salesforce org and WHMCS; the test kit's
//! fake services answer from an in-memory org and WHMCS. Both classify failures into the same
//! [`CallError`]s, so a component cannot tell them apart.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::CallError;
use crate::salesforce::SalesforceClient;
use crate::whmcs::WhmcsClient;

/// What the host does on a component's behalf. Arguments have been validated and allowed by the
/// capability policy before a method is called.
pub trait Services: Send + Sync + 'static {
    /// A SOQL query, all pages merged: `{"totalSize", "done": true, "records": [...]}`.
    fn sf_query<'a>(&'a self, soql: &'a str) -> BoxFuture<'a, Result<Value, CallError>>;

    /// Updates `fields` of one record.
    fn sf_update<'a>(
        &'a self,
        sobject: &'a str,
        id: &'a str,
        fields: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>>;

    /// One WHMCS API action; `Ok` is the `result=success` response.
    fn billing_call<'a>(
        &'a self,
        action: &'a str,
        params: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, CallError>>;

    /// A non-secret setting exposed to components.
    fn config(&self, key: &str) -> Option<String>;

    /// Wall-clock time, milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The production backends: the real Salesforce org and WHMCS, with the host's credentials.
#[derive(Clone)]
pub struct LiveServices {
    salesforce: SalesforceClient,
    whmcs: WhmcsClient,
    exposed: BTreeMap<String, String>,
}

impl LiveServices {
    /// `exposed` holds the non-secret settings components may read (e.g. `PORTAL_PRICEBOOK_ID`).
    pub fn new(
        salesforce: SalesforceClient,
        whmcs: WhmcsClient,
        exposed: BTreeMap<String, String>,
    ) -> Self {
        LiveServices {
            salesforce,
            whmcs,
            exposed,
        }
    }
}

impl Services for LiveServices {
    fn sf_query<'a>(&'a self, soql: &'a str) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(self.salesforce.query(soql))
    }

    fn sf_update<'a>(
        &'a self,
        sobject: &'a str,
        id: &'a str,
        fields: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(self.salesforce.update(sobject, id, fields))
    }

    fn billing_call<'a>(
        &'a self,
        action: &'a str,
        params: &'a Map<String, Value>,
    ) -> BoxFuture<'a, Result<Value, CallError>> {
        Box::pin(self.whmcs.call(action, params))
    }

    fn config(&self, key: &str) -> Option<String> {
        self.exposed.get(key).cloned()
    }

    fn now_ms(&self) -> i64 {
        crate::domain::now_ms()
    }
}
