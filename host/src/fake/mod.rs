//! Faithful in-memory stand-ins for Salesforce and WHMCS.
//!
//! - [`org::FakeOrg`] and [`whmcs::FakeWhmcs`] hold the state and answer requests in process
//!   (the test kit calls them directly);
//! - [`http`] serves them over real HTTP on a loopback listener so the real clients can be
//!   tested end to end, with injected failures.
//!
//! They are compiled into the library (not `cfg(test)`) because the test kit and a sandbox server
//! use them too; nothing in the production path refers to them.

pub mod http;
pub mod org;
pub mod schema;
mod soql;
pub mod whmcs;

pub use http::{
    FakeSalesforce, FakeSalesforceOptions, FakeServerError, FakeWhmcsOptions, FakeWhmcsServer,
    RecordedRequest, serve_fake_salesforce, serve_fake_whmcs,
};
pub use org::{FakeOrg, sf_error_body, sf_status_for};
pub use schema::Schema;
pub use whmcs::{
    FakeClient, FakeOrder, FakeOrderItem, FakePayMethod, FakeProduct, FakeWhmcs, decode_php_form,
};
