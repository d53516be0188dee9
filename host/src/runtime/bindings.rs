//! Generated bindings for the `fulfillment` world. Private to the runtime: the rest of the host
//! speaks in its own types (`crate::error::CallError`, `crate::domain::Event`, ...).

wasmtime::component::bindgen!({
    world: "fulfillment",
    path: "../wit",
    imports: { default: async | trappable },
    exports: { default: async },
});

// `self::` because the generated `fulfilld` module (the WIT namespace) shares its name with this crate.
pub(crate) use self::fulfilld::fulfillment::{
    billing, clock, config, holds, job, log, salesforce, types,
};
