//! The backends behind the component's imports.
//!
//! The runtime's gate (policy, span, timeout, counters, journal) sits in front of a [`Services`]
//! implementation: [`LiveServices`] talks to the real Salesforce org and WHMCS; the test kit's
//! fake services answer from an in-memory org and WHMCS. Both classify failures into the same
//! [`CallError`]s, so a component cannot tell them apart.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use crate::error::CallError;
use crate::http::{HttpClientError, http_client, http_client_trusting};
use crate::salesforce::{SalesforceClient, SalesforceConfig, SalesforceConfigError};
use crate::whmcs::{WhmcsClient, WhmcsConfig};

/// The settings a component without a manifest may read through the `config` import (a component
/// with one reads the keys its manifest lists). Nothing secret is ever listed.
pub const EXPOSED_SETTINGS: [&str; 2] = ["PORTAL_PRICEBOOK_ID", "SF_PROVISION_EVENT_CHANNEL"];

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

/// The live backends could not be built from the settings; found before any request is made.
#[derive(Debug, thiserror::Error)]
pub enum LiveServicesError {
    #[error("cannot build the HTTP client")]
    Http(#[from] HttpClientError),
    #[error("invalid Salesforce settings")]
    Salesforce(#[from] SalesforceConfigError),
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
    fn new(
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

    /// The one wiring of the production clients, used by `serve`, `fulfill` and anything else
    /// that talks to the real services (through [`crate::config::Config::live_services`]): one
    /// HTTP client bounded by `call_timeout`, shared by the Salesforce and WHMCS clients. Checks
    /// the Salesforce key; contacts nothing.
    ///
    /// `salesforce_ca_pem` (`SF_CA_FILE`): an extra CA the Salesforce client trusts (the
    /// sandbox's test CA); then Salesforce gets its own HTTP client, so WHMCS never trusts it.
    pub fn from_settings(
        salesforce: SalesforceConfig,
        whmcs: WhmcsConfig,
        call_timeout: Duration,
        exposed: BTreeMap<String, String>,
        salesforce_ca_pem: Option<&str>,
    ) -> Result<Self, LiveServicesError> {
        let http = http_client(call_timeout)?;
        let sf_http = match salesforce_ca_pem {
            None => http.clone(),
            Some(pem) => http_client_trusting(call_timeout, Some(pem))?,
        };
        let salesforce = SalesforceClient::new(salesforce, sf_http)?;
        let whmcs = WhmcsClient::new(whmcs, http);
        Ok(LiveServices::new(salesforce, whmcs, exposed))
    }

    /// The Salesforce client, whose session the Pub/Sub subscriber shares.
    pub fn salesforce(&self) -> &SalesforceClient {
        &self.salesforce
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
