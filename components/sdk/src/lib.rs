//! Guest SDK for `fulfilld` components.
//!
//! A component implements [`Fulfillment`] against the raw [`Host`] trait and uses the typed
//! layers on top of it: [`Salesforce`] (SOQL into [`Order`] / [`OrderItem`], updates from JSON
//! values), [`Whmcs`] (GetPayMethods, AddOrder, AcceptOrder, GetOrders) and [`Log`]
//! (step-scoped structured logs). [`export_component!`] exports the implementation as the WIT
//! `handler` when compiled for `wasm32-wasip2`; natively it expands to a trait check only, so
//! the same rules crate builds as an `rlib` for the host's benchmark and test kit, which call
//! `Rules::fulfill(&their_host, event)` directly.
//!
//! ```
//! use fulfillment_sdk::{export_component, Event, Failure, Fulfillment, Host, Info, Log, Outcome};
//!
//! pub struct Rules;
//!
//! impl Fulfillment for Rules {
//!     fn info() -> Info {
//!         Info { name: "my-rules".into(), version: env!("CARGO_PKG_VERSION").into() }
//!     }
//!     fn fulfill(host: &dyn Host, event: Event) -> Result<Outcome, Failure> {
//!         Log::new(host).step("validation").info("hello", &[]);
//!         Ok(Outcome::skipped("nothing to do"))
//!     }
//! }
//!
//! export_component!(Rules);
//! ```

mod host;
pub mod json;
mod log;
pub mod salesforce;
pub mod text;
mod types;
pub mod whmcs;

pub use host::{Fulfillment, Hold, Host};
pub use log::{Log, StepLog};
pub use salesforce::{
    AccountRef, ActivationStatus, Order, OrderItem, Product2Ref, QueryResult, Salesforce,
    soql_escape, soql_quote,
};
pub use text::{TEXT_FIELD_MAX, truncate, truncate_field};
pub use types::{
    Disposition, ErrorKind, Event, Failure, HoldMode, HostError, Info, Level, Outcome,
};
pub use whmcs::{
    AddOrder, AddOrderItem, AddOrderResult, BillingCycle, OrderStatus, PayMethod, Whmcs,
    WhmcsLineItem, WhmcsOrder,
};

/// Re-exported so rules build JSON values (`update` fields, `call` params) without their own
/// dependency.
pub use serde_json;

/// Bindings generated from the SDK's own copy of the WIT, `wit/fulfillment.wit` in this crate
/// (world `fulfillment`; the host's tests keep it byte-identical to the workspace's
/// `wit/fulfillment.wit`), so the SDK builds wherever it is copied. Public only because the
/// generated export macro is expanded in component crates; rules should not use it directly.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(unsafe_code, clippy::all, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "fulfillment",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export",
        default_bindings_module: "fulfillment_sdk::bindings",
    });
}

#[cfg(target_arch = "wasm32")]
mod wit;
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use wit::__private;
#[cfg(target_arch = "wasm32")]
pub use wit::WitHost;

/// Exports a [`Fulfillment`] implementation as the component's WIT `handler` interface.
///
/// Invoke once, at the root of a `cdylib` component crate: `export_component!(Rules);`.
/// On `wasm32` it generates the `handler` glue, converting WIT values to SDK types and back and
/// running the rules against `WitHost`. On other targets it only checks that the type
/// implements [`Fulfillment`], so the crate still builds natively (as an `rlib`).
#[macro_export]
macro_rules! export_component {
    ($rules:ty) => {
        const _: () = {
            fn __assert_fulfillment<T: $crate::Fulfillment + ?Sized>() {}
            let _ = __assert_fulfillment::<$rules>;
        };

        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct __FulfillmentSdkExport;

            impl $crate::__private::Guest for __FulfillmentSdkExport {
                fn fulfill(
                    event: $crate::__private::WitEvent,
                ) -> ::core::result::Result<
                    $crate::__private::WitOutcome,
                    $crate::__private::WitFailure,
                > {
                    $crate::__private::fulfill::<$rules>(event)
                }

                fn info() -> $crate::__private::WitInfo {
                    $crate::__private::info::<$rules>()
                }
            }

    $crate::bindings::export!(__FulfillmentSdkExport with_types_in $crate::bindings);
        };
    };
}
