//! Every integration test of `fulfilld`, in one test binary.
//!
//! One binary instead of one per file: a change to the host relinks one ~500 MB executable
//! instead of a dozen, which is most of the edit-test loop on a small machine. Each file is a
//! module named after what it tests; run one with `cargo test -p fulfilld --test integration
//! store::` (the module path filters).
//!
//! Tests that must run the real program use the built `fulfilld` binary
//! (`env!("CARGO_BIN_EXE_fulfilld")`), exactly as an operator does.

// `allow-unwrap-in-tests` (clippy.toml) covers `#[test]` functions only, not the helpers and
// fixtures these modules share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod authoring;
mod bad_input;
mod clients;
mod component_admin;
mod component_check;
mod console;
mod doctor;
mod failed_orders;
mod first_run;
mod journal;
mod listeners;
mod live;
mod manifest;
mod metrics;
mod operator_commands;
mod otel;
mod pipeline;
mod pubsub;
mod pubsub_server;
mod registry;
mod salesforce_package;
mod sandbox;
mod sandbox_admin;
mod scenarios;
mod store;
mod thirdparty;
mod topology;
