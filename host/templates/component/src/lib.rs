//! {{name}}: fulfilld's default provisioning rules (vendor/fulfillment), changed only where
//! this file overrides one of their extension points (`fulfillment::Extensions`).
//!
//! The default rules run every step of the runbook (validation, sf_status_update,
//! order_details, mapping, whmcs_create, whmcs_accept, sf_success_update), record failures on
//! the Order and reconcile with WHMCS when a job is delivered again. An `Extensions` method you
//! do not write here keeps the default behaviour:
//!
//! - `map_item`: how an OrderItem becomes a WHMCS line (`add_order_lines`: the AddOrder lines
//!   one line becomes, e.g. `fulfillment::split_quantity`);
//! - `validate`: extra checks of the Order before anything is written;
//! - `add_order_params` / `accept_order_params`: extra AddOrder / AcceptOrder parameters;
//! - `success_fields`: extra Order fields written together with `Activation_Status__c =
//!   Activated` (each one must be listed under `[capabilities.update]` in component.toml).

use fulfillment::{Extensions, fulfill_with_extensions};
use fulfillment_sdk::serde_json::{Map, Value};
use fulfillment_sdk::{
    Event, Failure, Fulfillment, Host, Info, Log, Order, Outcome, export_component,
};

/// A config key this rule reads (declared with its default in component.toml, `[config]`).
const PROVISIONING_NOTE: &str = "PROVISIONING_NOTE";

pub struct Rules;

impl Fulfillment for Rules {
    fn info() -> Info {
        // Must equal `name` and `version` under [component] in component.toml.
        Info {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn fulfill(host: &dyn Host, event: Event) -> Result<Outcome, Failure> {
        fulfill_with_extensions(host, event, &Rules)
    }
}

impl Extensions for Rules {
    /// Logs the provisioning note (config `PROVISIONING_NOTE`) in `sf_success_update` and, as
    /// shipped, writes no extra field.
    fn success_fields(
        &self,
        host: &dyn Host,
        _order: &Order,
        _whmcs_order_id: u64,
    ) -> Map<String, Value> {
        let note = host.config(PROVISIONING_NOTE).unwrap_or_default();
        Log::new(host)
            .step("sf_success_update")
            .info("provisioning note", &[("note", &note)]);
        // To write it on the Order as well, add the field to [capabilities.update] in
        // component.toml, declare it for the test kit's org in scenarios/_seed.toml
        // (`[schema]` `"Order.Provisioning_Note__c" = "Text(255)"`: the org refuses fields it
        // does not define) and return it here:
        //     let mut fields = Map::new();
        //     fields.insert("Provisioning_Note__c".into(), note.into());
        //     fields
        Map::new()
    }
}

export_component!(Rules);
