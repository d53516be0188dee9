//! `fulfilld:fulfillment/billing`: WHMCS API actions, called by the host with its credentials.

use super::super::JobState;
use super::super::bindings::{billing, types};
use super::json_object;

impl billing::Host for JobState {
    async fn call(
        &mut self,
        action: String,
        params: String,
    ) -> wasmtime::Result<Result<String, types::Error>> {
        const OP: &str = "billing.call";
        self.gate.admit(OP)?;
        self.job.held.check()?;
        let params = match json_object("params", &params) {
            Ok(params) => params,
            Err(error) => return Ok(Err(self.gate.refuse(OP, action, None, error).into())),
        };
        let request = Some(serde_json::Value::Object(params.clone()));
        if let Err(error) = self.gate.policy().check_billing(&action) {
            return Ok(Err(self.gate.refuse(OP, action, request, error).into()));
        }
        let target = action.clone();
        let result = self
            .gate
            .perform(OP, target, request, |services| async move {
                services.billing_call(&action, &params).await
            })
            .await
            .map(|response| response.to_string());
        Ok(self.gate.bounded(OP, result).map_err(types::Error::from))
    }
}
