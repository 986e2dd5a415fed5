//! The gateway's errors, typed once, and the one place they become gRPC statuses with
//! `google.rpc` details. The full cause goes to the log; the caller gets a clean message.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::aws::{AwsError, AwsErrorKind};

/// One broken rule of a request: the field (as named in the proto, `tags[2].key`) and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> FieldViolation {
        FieldViolation { field: field.into(), description: description.into() }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request cannot be valid, whatever the state of AWS.
    #[error("invalid request: {}", summary(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The request is refused because of the state of the resources it names.
    #[error("{}", summary(.0))]
    FailedPrecondition(Vec<FieldViolation>),
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("the deadline expired before the call completed")]
    DeadlineExceeded,
    /// What a request names does not exist (or is not visible to the gateway's credentials).
    #[error("{what} {name} not found")]
    NotFound { what: &'static str, name: String },
    /// What the request would make exists already, made another way.
    #[error("{0}")]
    AlreadyExists(String),
    /// The gateway cannot serve the call now; a retry may (a stopped poller, for instance).
    #[error("{0}; retry")]
    Unavailable(String),
    /// A caller past its share of the gateway's calls, of its calls in progress, or of the AWS
    /// calls its requests cause.
    #[error("{caller} is over its share of {of}; retry in {} s", retry_secs(*.retry_after))]
    OverShare { caller: String, of: &'static str, retry_after: Duration },
    #[error("too many open WatchCopy streams (at most {0}); retry later")]
    TooManyStreams(usize),
    #[error("the server is shutting down; reconnect to resume watching")]
    ShuttingDown,
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// No policy permits the call, or a policy forbids it.
    #[error("{}", denial(action, policies))]
    PermissionDenied { action: &'static str, policies: Vec<String> },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Whole seconds to wait, rounded up, at least one.
fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + 1
}

fn denial(action: &str, policies: &[String]) -> String {
    if policies.is_empty() {
        format!("{action} denied: no policy permits it")
    } else {
        format!("{action} denied by policy {}", policies.join(", "))
    }
}

/// The `google.rpc.ErrorInfo` domain of the gateway's own refusals.
pub(crate) const SNAPGATE_DOMAIN: &str = "snapgate";

pub(crate) fn summary(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

/// The `google.rpc.ErrorInfo` domain of errors that come from AWS.
pub(crate) const AWS_DOMAIN: &str = "rds.amazonaws.com";

fn bad_request(violations: &[FieldViolation]) -> ErrorDetails {
    let violations: Vec<tonic_types::FieldViolation> =
        violations.iter().map(|v| tonic_types::FieldViolation::new(v.field.clone(), v.description.clone())).collect();
    ErrorDetails::with_bad_request(violations)
}

fn aws_status(err: &AwsError) -> Status {
    let code = match err.kind {
        AwsErrorKind::AlreadyExists => Code::AlreadyExists,
        AwsErrorKind::NotFound => Code::NotFound,
        AwsErrorKind::FailedPrecondition => Code::FailedPrecondition,
        AwsErrorKind::QuotaExceeded => Code::ResourceExhausted,
        AwsErrorKind::Throttled | AwsErrorKind::Unavailable => Code::Unavailable,
        AwsErrorKind::InvalidRequest => Code::InvalidArgument,
        AwsErrorKind::AccessDenied | AwsErrorKind::Other => Code::Internal,
    };
    let message = match err.kind {
        AwsErrorKind::Throttled => format!("AWS is throttling {} calls; retry later", err.action),
        AwsErrorKind::Unavailable => format!("AWS did not complete {}; retry later", err.action),
        AwsErrorKind::AccessDenied => {
            format!("AWS refused the gateway's credentials for {}", err.action)
        }
        AwsErrorKind::Other => format!("{} failed unexpectedly", err.action),
        _ => err.message.clone(),
    };
    let mut metadata = HashMap::from([("action".to_owned(), err.action.to_owned())]);
    if let Some(id) = &err.request_id {
        metadata.insert("aws_request_id".to_owned(), id.clone());
    }
    let reason = err.code.clone().unwrap_or_else(|| format!("{:?}", err.kind).to_ascii_uppercase());
    let mut details = ErrorDetails::with_error_info(reason, AWS_DOMAIN, metadata);
    match err.kind {
        AwsErrorKind::Throttled => {
            details.set_retry_info(Some(Duration::from_secs(2)));
        }
        AwsErrorKind::Unavailable => {
            details.set_retry_info(Some(Duration::from_secs(1)));
        }
        _ => {}
    }
    Status::with_error_details(code, message, details)
}

/// The HTTP status of a gRPC code, by the standard mapping (`google/rpc/code.proto`), for the
/// HTTP/JSON listener.
pub(crate) fn http_status(code: Code) -> http::StatusCode {
    use http::StatusCode as H;
    match code {
        Code::Ok => H::OK,
        Code::Cancelled => H::from_u16(499).unwrap_or(H::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => H::BAD_REQUEST,
        Code::DeadlineExceeded => H::GATEWAY_TIMEOUT,
        Code::NotFound => H::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => H::CONFLICT,
        Code::PermissionDenied => H::FORBIDDEN,
        Code::Unauthenticated => H::UNAUTHORIZED,
        Code::ResourceExhausted => H::TOO_MANY_REQUESTS,
        Code::Unimplemented => H::NOT_IMPLEMENTED,
        Code::Unavailable => H::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => H::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        match &err {
            Error::InvalidArgument(v) => {
                Status::with_error_details(Code::InvalidArgument, err.to_string(), bad_request(v))
            }
            Error::FailedPrecondition(v) => {
                Status::with_error_details(Code::FailedPrecondition, err.to_string(), bad_request(v))
            }
            Error::Aws(aws) => {
                match aws.kind {
                    AwsErrorKind::AccessDenied | AwsErrorKind::Other => {
                        tracing::error!(error = %aws, "AWS call failed")
                    }
                    AwsErrorKind::Throttled | AwsErrorKind::Unavailable => {
                        tracing::warn!(error = %aws, "AWS call failed")
                    }
                    _ => tracing::debug!(error = %aws, "AWS refused the call"),
                }
                aws_status(aws)
            }
            Error::DeadlineExceeded => Status::deadline_exceeded(err.to_string()),
            Error::Unauthenticated(_) => Status::unauthenticated(err.to_string()),
            Error::PermissionDenied { action, policies } => {
                let mut metadata = HashMap::from([("action".to_owned(), (*action).to_owned())]);
                if !policies.is_empty() {
                    metadata.insert("policies".to_owned(), policies.join(","));
                }
                let details = ErrorDetails::with_error_info("POLICY_DENIED", SNAPGATE_DOMAIN, metadata);
                Status::with_error_details(Code::PermissionDenied, err.to_string(), details)
            }
            Error::NotFound { what, name } => {
                let metadata = HashMap::from([("name".to_owned(), name.clone())]);
                let reason = format!("{}_NOT_FOUND", what.to_ascii_uppercase());
                let details = ErrorDetails::with_error_info(reason, SNAPGATE_DOMAIN, metadata);
                Status::with_error_details(Code::NotFound, err.to_string(), details)
            }
            Error::AlreadyExists(_) => {
                let details = ErrorDetails::with_error_info("ALREADY_EXISTS", SNAPGATE_DOMAIN, HashMap::new());
                Status::with_error_details(Code::AlreadyExists, err.to_string(), details)
            }
            Error::Unavailable(why) => {
                tracing::warn!(%why, "call answered UNAVAILABLE");
                Status::with_error_details(
                    Code::Unavailable,
                    err.to_string(),
                    ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
                )
            }
            Error::OverShare { caller, of, retry_after } => {
                let metadata =
                    HashMap::from([("caller".to_owned(), caller.clone()), ("share".to_owned(), (*of).to_owned())]);
                let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(retry_secs(*retry_after))));
                details.set_error_info("OVER_SHARE", SNAPGATE_DOMAIN, metadata);
                Status::with_error_details(Code::ResourceExhausted, err.to_string(), details)
            }
            Error::TooManyStreams(_) => Status::with_error_details(
                Code::ResourceExhausted,
                err.to_string(),
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            Error::ShuttingDown => Status::with_error_details(
                Code::Unavailable,
                err.to_string(),
                ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            ),
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Status::internal("internal error; the gateway's log has the cause")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(kind: AwsErrorKind, code: &str) -> Error {
        Error::Aws(AwsError {
            kind,
            action: "CopyDBClusterSnapshot",
            code: Some(code.into()),
            message: "m".into(),
            request_id: Some("req-1".into()),
        })
    }

    #[test]
    fn invalid_arguments_carry_field_violations() {
        let status =
            Status::from(Error::InvalidArgument(vec![FieldViolation::new("target_snapshot_id", "is required")]));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let v = &details.bad_request().unwrap().field_violations[0];
        assert_eq!((v.field.as_str(), v.description.as_str()), ("target_snapshot_id", "is required"));
    }

    #[test]
    fn aws_faults_map_to_codes_with_error_info() {
        let cases = [
            (AwsErrorKind::AlreadyExists, "DBClusterSnapshotAlreadyExistsFault", Code::AlreadyExists),
            (AwsErrorKind::NotFound, "DBClusterSnapshotNotFoundFault", Code::NotFound),
            (AwsErrorKind::FailedPrecondition, "KMSKeyNotAccessibleFault", Code::FailedPrecondition),
            (AwsErrorKind::QuotaExceeded, "SnapshotQuotaExceeded", Code::ResourceExhausted),
            (AwsErrorKind::Throttled, "ThrottlingException", Code::Unavailable),
            (AwsErrorKind::Other, "Weird", Code::Internal),
        ];
        for (kind, code, expected) in cases {
            let status = Status::from(aws(kind, code));
            assert_eq!(status.code(), expected, "{code}");
            let info = status.get_error_details().error_info().cloned().unwrap();
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (code, AWS_DOMAIN));
            assert_eq!(info.metadata.get("aws_request_id").map(String::as_str), Some("req-1"));
        }
        let throttled = Status::from(aws(AwsErrorKind::Throttled, "ThrottlingException"));
        assert!(throttled.get_error_details().retry_info().is_some());
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let status = Status::from(Error::Internal("secret path /etc/x".into()));
        assert!(!status.message().contains("/etc/x"));
    }
}
