//! `fulfilld:fulfillment/salesforce`: SOQL query and record update, performed by the host.

use super::super::JobState;
use super::super::bindings::{salesforce, types};
use super::json_object;
use crate::error::CallError;

/// The longest SOQL statement Salesforce accepts (100,000 characters); anything longer is refused
/// before it is parsed or sent.
const MAX_SOQL_BYTES: usize = 100_000;

/// A query over [`MAX_SOQL_BYTES`] is `invalid-input`.
fn check_size(soql: &str) -> Result<(), CallError> {
    if soql.len() > MAX_SOQL_BYTES {
        Err(CallError::invalid_input(format!(
            "the query is {} bytes; Salesforce accepts at most {MAX_SOQL_BYTES}",
            soql.len()
        )))
    } else {
        Ok(())
    }
}

impl salesforce::Host for JobState {
    async fn query(&mut self, soql: String) -> wasmtime::Result<Result<String, types::Error>> {
        const OP: &str = "salesforce.query";
        self.gate.admit(OP)?;
        self.job.held.check()?;
        if let Err(error) = check_size(&soql) {
            let target = crate::domain::clip(&soql, 200);
            return Ok(Err(self.gate.refuse(OP, target, None, error).into()));
        }
        if let Err(error) = self.gate.policy().check_query(&soql) {
            return Ok(Err(self.gate.refuse(OP, soql, None, error).into()));
        }
        let result = self
            .gate
            .perform(OP, soql.clone(), None, |services| async move {
                services.sf_query(&soql).await
            })
            .await
            .map(|records| records.to_string());
        Ok(self.gate.bounded(OP, result).map_err(types::Error::from))
    }

    async fn update(
        &mut self,
        sobject: String,
        id: String,
        fields: String,
    ) -> wasmtime::Result<Result<(), types::Error>> {
        const OP: &str = "salesforce.update";
        self.gate.admit(OP)?;
        self.job.held.check()?;
        let target = format!("{sobject}/{id}");
        let fields = match json_object("fields", &fields) {
            Ok(fields) => fields,
            Err(error) => return Ok(Err(self.gate.refuse(OP, target, None, error).into())),
        };
        let request = Some(serde_json::Value::Object(fields.clone()));
        if id.trim().is_empty() {
            let error = CallError::invalid_input("record id is empty");
            return Ok(Err(self.gate.refuse(OP, target, request, error).into()));
        }
        if let Err(error) = self.gate.policy().check_update(&sobject, &fields) {
            return Ok(Err(self.gate.refuse(OP, target, request, error).into()));
        }
        let scope = self.gate.order_scope.as_deref();
        if let Err(error) = self.gate.policy().check_record(&sobject, &id, scope) {
            return Ok(Err(self.gate.refuse(OP, target, request, error).into()));
        }
        let result = self
            .gate
            .perform(OP, target, request, |services| async move {
                services.sf_update(&sobject, &id, &fields).await
            })
            .await;
        Ok(result.map_err(types::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_query_longer_than_salesforce_accepts_is_invalid_input() {
        assert!(check_size(&"a".repeat(MAX_SOQL_BYTES)).is_ok());
        let err = check_size(&"a".repeat(MAX_SOQL_BYTES + 1)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidInput);
        assert!(err.message.contains("at most 100000"), "{}", err.message);
    }
}
