//! Component versions shared between replicas through the store, so a version deployed on one
//! replica runs on all of them. Only a store several replicas share offers it (Redis); see
//! [`super::Store::component_share`].

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// A component version as replicas share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedComponent {
    pub sha256: String,
    /// The registry's metadata, JSON.
    pub meta_json: String,
    pub wasm: Vec<u8>,
    /// Its base64 signature, when it came with one.
    pub signature: Option<String>,
}

/// The version every replica should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedActive {
    pub sha256: String,
    /// The replica that activated it.
    pub by: String,
    pub at_ms: i64,
}

/// Published component versions and the one every replica should run.
///
/// Guarantees: a version published with [`ComponentShare::share_component`] can be fetched by
/// every replica by its sha256; [`ComponentShare::shared_active`] answers the last version
/// recorded by any replica.
pub trait ComponentShare: Send + Sync {
    /// Publishes a deployed component version so other replicas can fetch it.
    fn share_component<'a>(
        &'a self,
        component: &'a SharedComponent,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A version another replica published, by sha256.
    fn shared_component<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedComponent>, StoreError>>;

    /// Records the version every replica should run.
    fn set_shared_active<'a>(
        &'a self,
        active: &'a SharedActive,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The version every replica should run, if one was recorded.
    fn shared_active(&self) -> BoxFuture<'_, Result<Option<SharedActive>, StoreError>>;
}
