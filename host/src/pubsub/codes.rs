//! Error codes Salesforce's Pub/Sub API puts in the `error-code` trailer, shared by the
//! subscriber (which reacts to them) and the sandbox (which sends them).

use tonic::Status;

/// Trailer naming the error.
pub const ERROR_CODE: &str = "error-code";
/// Trailer identifying the call in Salesforce's logs.
pub const RPC_ID: &str = "rpc-id";
/// Trailer classifying the error.
pub const TYPE: &str = "type";

/// The token in `accesstoken` is missing, expired or revoked: mint a new one and resubscribe.
pub const AUTH_ERROR: &str = "sfdc.platform.eventbus.grpc.service.auth.error";
/// The `auth_refresh` token of a FetchRequest was refused.
pub const AUTH_REFRESH_INVALID: &str = "sfdc.platform.eventbus.grpc.service.auth.refresh.invalid";
/// Transient failure on Salesforce's side (status INTERNAL): retry with backoff.
pub const SERVICE_UNAVAILABLE: &str = "sfdc.platform.eventbus.grpc.service.unavailable";
/// The replay id is older than retention or malformed (status INVALID_ARGUMENT).
pub const REPLAY_ID_CORRUPTED: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted";
/// The replay id failed validation (seen in Salesforce's samples; treated like corrupted).
pub const REPLAY_ID_VALIDATION_FAILED: &str =
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed";
/// Too many concurrent clients for the org.
pub const CONCURRENT_CLIENT_LIMIT: &str =
    "sfdc.platform.eventbus.grpc.service.concurrent.client.limit.exceeded";
/// Too many subscriptions.
pub const SUBSCRIPTION_LIMIT: &str = "sfdc.platform.eventbus.grpc.subscription.limit.exceeded";

/// The `error-code` trailer of a status, if any.
pub fn error_code(status: &Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_CODE)
        .and_then(|value| value.to_str().ok())
}

/// Whether the status says the replay id the subscription started from can never work.
pub fn is_replay_id_rejected(status: &Status) -> bool {
    status.code() == tonic::Code::InvalidArgument
        && matches!(
            error_code(status),
            Some(REPLAY_ID_CORRUPTED | REPLAY_ID_VALIDATION_FAILED)
        )
}

/// Whether the status says the access token is no longer good.
pub fn is_auth_error(status: &Status) -> bool {
    status.code() == tonic::Code::Unauthenticated
        || matches!(error_code(status), Some(AUTH_ERROR | AUTH_REFRESH_INVALID))
}
