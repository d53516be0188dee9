//! A step's failure. [`fail`]`(STEP, code, message)` makes one: a rule's own code, or a host
//! error's code with a message of the step's own. [`StepErr::step_err`]`(STEP, "<call>")` is
//! `fail` for a failed host call: the host's code as is, the message `<call>: <host message>`.

use fulfillment_sdk::{Failure, HostError, truncate_field};

/// A failure of one step; `code` goes to `Activation_Error_Code__c` as is.
#[derive(Debug)]
pub(crate) struct StepFailure {
    pub(crate) step: &'static str,
    pub(crate) code: String,
    pub(crate) message: String,
}

/// `step` fails with `code` and `message`:
/// `return Err(fail(ORDER_DETAILS, codes::NO_ITEMS, "..."))`.
pub(crate) fn fail(
    step: &'static str,
    code: impl Into<String>,
    message: impl Into<String>,
) -> StepFailure {
    StepFailure {
        step,
        code: code.into(),
        message: message.into(),
    }
}

impl StepFailure {
    pub(crate) fn into_failure(self) -> Failure {
        Failure::new(self.code, truncate_field(&self.message))
    }
}

/// A failed host call fails the step:
/// `ctx.sf.order_items(&order.id).step_err(ORDER_DETAILS, "OrderItem query")?`.
pub(crate) trait StepErr<T> {
    /// The host's code as is, the message `<call>: <host message>`.
    fn step_err(self, step: &'static str, call: &str) -> Result<T, StepFailure>;
}

impl<T> StepErr<T> for Result<T, HostError> {
    fn step_err(self, step: &'static str, call: &str) -> Result<T, StepFailure> {
        self.map_err(|e| fail(step, e.code, format!("{call}: {}", e.message)))
    }
}
