//! `fulfilld`: the native host for the `fulfillment` WebAssembly component.
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod fake;
pub mod holds;
pub mod pipeline;
pub mod pubsub;
pub mod registry;
pub mod runtime;
pub mod salesforce;
pub mod sandbox;
pub mod secret;
pub mod services;
pub mod store;
pub mod testkit;
pub mod whmcs;
