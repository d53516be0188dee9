//! The host's own `Failed` record on an Order a job left `Activating`.
//!
//! The component records every failure after its guard on the Order itself. A job can also end
//! where the component could not: the sandbox stopped it (`COMPONENT_TRAP`, `COMPONENT_TIMEOUT`,
//! `COMPONENT_MEMORY`, `COMPONENT_HOST_CALLS`), or it failed before the guard (the first read of
//! the Order answered 503 or timed out). The runbook (shared/runbook.md, "Ops: Manual Retry
//! Flow") says network errors, 5xx and timeouts mark the Order `Failed`, and its retry button
//! refuses an Order that is still `Activating`; so the host reads the Order and, only when it
//! is still `Activating`, writes `Failed` with the job's code and a short message, through its
//! own Salesforce client (not the component's capability gate: the runbook's three fields are
//! the host's to write here). An Order in any other state is left alone.
//!
//! One read and at most one write; a failing read or write is logged and not retried (the job
//! keeps its own record, and retrying against an org that is down would only add load). The read
//! and the write are two requests, and nothing stops another job on the same Order meanwhile: an
//! Order that job moved on can be marked `Failed` under it (docs/operations.md says so).

use serde_json::{Map, Value};

use crate::error::{CallError, chain};
use crate::runtime::{FailureSource, JobFailure};
use crate::services::Services;

/// `Activation_Error_Code__c` and `Activation_Error_Message__c` are Text(255). The host cuts to
/// 255 bytes, as the rules do (docs/operations.md says so), which is within 255 characters too.
pub const FIELD_MAX_BYTES: usize = 255;

const ACTIVATING: &str = "Activating";

/// What the host did about the Order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marked {
    /// The Order was `Activating` and is now `Failed` with the job's code.
    Failed,
    /// The Order is in another state (`Activated`, `Failed`, blank...): nothing written.
    LeftAlone {
        /// The Order's `Activation_Status__c` (clipped), empty when blank.
        status: String,
    },
    /// The failure is not one the host records (the host could not run the job: it is retried).
    NotApplicable,
}

/// The host could not record the failure; the Order stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum MarkFailedError {
    /// The event names no Order, or not a Salesforce id.
    #[error("the job names no usable Order id")]
    OrderId,
    /// Reading the Order's status failed.
    #[error("cannot read the Order's Activation_Status__c")]
    Read(#[source] CallError),
    /// The query answered but without the Order.
    #[error("the Order was not found")]
    NotFound,
    /// Writing `Failed` failed.
    #[error("cannot write Activation_Status__c = Failed on the Order")]
    Write(#[source] CallError),
}

/// Failures the host records on the Order: the component's (after the guard the component has
/// already written `Failed`, so the read finds it so and nothing is written) and the sandbox's.
/// A host failure (no free instance) is not an end: the job is handed out again.
pub fn host_records(failure: &JobFailure) -> bool {
    matches!(
        failure.source,
        FailureSource::Component | FailureSource::Sandbox
    )
}

/// Reads Order `order_id` and, when it is `Activating`, writes `Failed` with `failure`'s code and
/// message (each cut to 255 bytes, control characters replaced).
pub async fn mark_failed(
    services: &dyn Services,
    order_id: &str,
    failure: &JobFailure,
) -> Result<Marked, MarkFailedError> {
    if !host_records(failure) {
        return Ok(Marked::NotApplicable);
    }
    if !is_record_id(order_id) {
        return Err(MarkFailedError::OrderId);
    }
    let soql = format!("SELECT Id, Activation_Status__c FROM Order WHERE Id = '{order_id}'");
    let answer = services
        .sf_query(&soql)
        .await
        .map_err(MarkFailedError::Read)?;
    let record = answer
        .get("records")
        .and_then(Value::as_array)
        .and_then(|records| records.first())
        .ok_or(MarkFailedError::NotFound)?;
    let status = record
        .get("Activation_Status__c")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if status != ACTIVATING {
        return Ok(Marked::LeftAlone {
            status: field_text(status),
        });
    }
    let fields = Map::from_iter([
        ("Activation_Status__c".to_owned(), Value::from("Failed")),
        (
            "Activation_Error_Code__c".to_owned(),
            Value::from(field_text(&failure.code)),
        ),
        (
            "Activation_Error_Message__c".to_owned(),
            Value::from(field_text(&message(failure))),
        ),
    ]);
    services
        .sf_update("Order", order_id, &fields)
        .await
        .map_err(MarkFailedError::Write)?;
    Ok(Marked::Failed)
}

/// [`mark_failed`], logged: INFO when written, DEBUG when left alone, WARN when it could not be
/// done. Never retried. The result is for callers that report it (`fulfilld fulfill`).
pub async fn mark_failed_logged(
    services: &dyn Services,
    order_id: &str,
    failure: &JobFailure,
) -> Option<Marked> {
    match mark_failed(services, order_id, failure).await {
        Ok(Marked::Failed) => {
            tracing::info!(code = %failure.code, "the Order was still Activating: the host marked it Failed");
            Some(Marked::Failed)
        }
        Ok(Marked::LeftAlone { status }) => {
            tracing::debug!(status = %status, "the Order is not Activating: left as it is");
            Some(Marked::LeftAlone { status })
        }
        Ok(Marked::NotApplicable) => Some(Marked::NotApplicable),
        Err(err) => {
            tracing::warn!(code = %failure.code, error = %chain(&err), "could not mark the Order Failed; it stays as it was (not retried)");
            None
        }
    }
}

/// The message written on the Order. A component the sandbox stopped may have been stopped after
/// AddOrder and before it saved the WHMCS order id, so a plain retry could create a second WHMCS
/// order: the message says to check WHMCS first (as the rules' own `ETIMEOUT` on AddOrder does).
fn message(failure: &JobFailure) -> String {
    match failure.source {
        FailureSource::Sandbox => format!(
            "Stopped by the sandbox; check WHMCS for an order of this client before retry: {}",
            failure.message
        ),
        _ => failure.message.clone(),
    }
}

/// A Salesforce record id: 15 or 18 letters and digits. Anything else never reaches a query.
fn is_record_id(id: &str) -> bool {
    matches!(id.len(), 15 | 18) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `text` for a Text(255) field: control characters as spaces, at most 255 bytes cut at a
/// character boundary (ending in `…` when cut).
fn field_text(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= FIELD_MAX_BYTES {
        clean
    } else {
        // The `…` counts against the field's size.
        crate::domain::clip(&clean, FIELD_MAX_BYTES - '…'.len_utf8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_text_is_bounded_in_bytes_and_has_no_control_characters() {
        assert_eq!(field_text("trap\nat 0x1"), "trap at 0x1");
        let long = "é".repeat(300);
        let cut = field_text(&long);
        assert!(cut.len() <= FIELD_MAX_BYTES, "{}", cut.len());
        assert!(cut.len() >= FIELD_MAX_BYTES - 4, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let exact = "a".repeat(FIELD_MAX_BYTES);
        assert_eq!(field_text(&exact), exact);
    }

    #[test]
    fn only_salesforce_ids_are_queried() {
        assert!(is_record_id("801000000000001AAA"));
        assert!(is_record_id("801000000000001"));
        for bad in [
            "",
            "801' OR Id != '",
            "8010000000000/1AAA",
            "80100000000001AAA",
        ] {
            assert!(!is_record_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_host_failure_is_not_recorded() {
        let failure = |source| JobFailure {
            source,
            code: "X".into(),
            message: String::new(),
        };
        assert!(host_records(&failure(FailureSource::Sandbox)));
        assert!(host_records(&failure(FailureSource::Component)));
        assert!(!host_records(&failure(FailureSource::Host)));
    }
}
