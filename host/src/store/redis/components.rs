//! Component versions shared between replicas: a hash per version, a string for the active one.

use futures::FutureExt;
use futures::future::BoxFuture;

use super::RedisStore;
use crate::store::{ComponentShare, Detail, SharedActive, SharedComponent, StoreError};

impl ComponentShare for RedisStore {
    fn share_component<'a>(
        &'a self,
        component: &'a SharedComponent,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = self.component_key(&component.sha256);
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&key)
                .arg("meta")
                .arg(&component.meta_json)
                .arg("wasm")
                .arg(component.wasm.as_slice());
            if let Some(signature) = &component.signature {
                cmd.arg("signature").arg(signature);
            }
            let _: i64 = self.query(&cmd, "HSET component").await?;
            Ok(())
        }
        .boxed()
    }

    fn shared_component<'a>(
        &'a self,
        sha256: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedComponent>, StoreError>> {
        async move {
            let key = self.component_key(sha256);
            let (meta, wasm, signature): (Option<String>, Option<Vec<u8>>, Option<String>) = self
                .query(
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("meta")
                        .arg("wasm")
                        .arg("signature"),
                    "HMGET component",
                )
                .await?;
            Ok(match (meta, wasm) {
                (Some(meta_json), Some(wasm)) => Some(SharedComponent {
                    sha256: sha256.to_owned(),
                    meta_json,
                    wasm,
                    signature,
                }),
                _ => None,
            })
        }
        .boxed()
    }

    fn set_shared_active<'a>(
        &'a self,
        active: &'a SharedActive,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let json = serde_json::to_string(active)
                .map_err(|e| StoreError::Invalid(format!("active component: {e}")))?;
            let _: () = self
                .query(
                    redis::cmd("SET").arg(self.active_component_key()).arg(json),
                    "SET active component",
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn shared_active(&self) -> BoxFuture<'_, Result<Option<SharedActive>, StoreError>> {
        async move {
            let key = self.active_component_key();
            let json: Option<String> = self
                .query(redis::cmd("GET").arg(&key), "GET active component")
                .await?;
            json.map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(Detail::caused_by(&key, e)))
            })
            .transpose()
        }
        .boxed()
    }
}
