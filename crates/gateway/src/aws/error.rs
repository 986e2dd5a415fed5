//! Failures of AWS calls, classified once from the SDK's errors.

use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::operation::RequestId;

/// What kind of failure an AWS call had, as far as a caller needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    AlreadyExists,
    NotFound,
    /// The resource is in a state that forbids the call (snapshot or cluster state, KMS key).
    FailedPrecondition,
    QuotaExceeded,
    /// Throttled, still, after the SDK's retries.
    Throttled,
    /// AWS could not be reached, timed out, or failed on its side (5xx).
    Unavailable,
    /// AWS refused the request's parameters.
    InvalidRequest,
    /// AWS refused the gateway's own credentials or permissions.
    AccessDenied,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{action} failed: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    pub kind: AwsErrorKind,
    /// The RDS action that failed.
    pub action: &'static str,
    /// The AWS error code, when AWS answered.
    pub code: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
}

impl AwsErrorKind {
    /// The outcome label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            AwsErrorKind::AlreadyExists => "already_exists",
            AwsErrorKind::NotFound => "not_found",
            AwsErrorKind::FailedPrecondition => "failed_precondition",
            AwsErrorKind::QuotaExceeded => "quota_exceeded",
            AwsErrorKind::Throttled => "throttled",
            AwsErrorKind::Unavailable => "unavailable",
            AwsErrorKind::InvalidRequest => "invalid_request",
            AwsErrorKind::AccessDenied => "access_denied",
            AwsErrorKind::Other => "other",
        }
    }
}

impl AwsError {
    pub fn from_sdk<E>(action: &'static str, err: SdkError<E, aws_sdk_rds::config::http::HttpResponse>) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let request_id = err.request_id().map(str::to_owned);
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().map(str::to_owned);
                let message = service.err().message().unwrap_or("no message").to_owned();
                let kind = classify(code.as_deref(), status);
                AwsError { kind, action, code, message, request_id }
            }
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => AwsError {
                kind: AwsErrorKind::Unavailable,
                action,
                code: None,
                message: format!("AWS did not answer: {}", aws_sdk_rds::error::DisplayErrorContext(&err)),
                request_id,
            },
            _ => AwsError {
                kind: AwsErrorKind::Other,
                action,
                code: None,
                message: format!("{}", aws_sdk_rds::error::DisplayErrorContext(&err)),
                request_id,
            },
        }
    }
}

/// Classifies an AWS error code (and the HTTP status, for codes not listed).
pub(crate) fn classify(code: Option<&str>, http_status: u16) -> AwsErrorKind {
    match code.unwrap_or_default() {
        "DBClusterSnapshotAlreadyExistsFault" => AwsErrorKind::AlreadyExists,
        "DBClusterSnapshotNotFoundFault" | "DBClusterNotFoundFault" => AwsErrorKind::NotFound,
        "InvalidDBClusterSnapshotStateFault" | "InvalidDBClusterStateFault" | "KMSKeyNotAccessibleFault" => {
            AwsErrorKind::FailedPrecondition
        }
        "SnapshotQuotaExceeded" => AwsErrorKind::QuotaExceeded,
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" => {
            AwsErrorKind::Throttled
        }
        "InvalidParameterValue" | "InvalidParameterCombination" | "MissingParameter" => AwsErrorKind::InvalidRequest,
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "UnrecognizedClientException" => AwsErrorKind::AccessDenied,
        "InternalFailure" | "ServiceUnavailable" => AwsErrorKind::Unavailable,
        _ if http_status >= 500 => AwsErrorKind::Unavailable,
        _ if http_status == 404 => AwsErrorKind::NotFound,
        _ => AwsErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_faults_are_classified() {
        assert_eq!(classify(Some("DBClusterSnapshotAlreadyExistsFault"), 400), AwsErrorKind::AlreadyExists);
        assert_eq!(classify(Some("DBClusterSnapshotNotFoundFault"), 404), AwsErrorKind::NotFound);
        assert_eq!(classify(Some("KMSKeyNotAccessibleFault"), 400), AwsErrorKind::FailedPrecondition);
        assert_eq!(classify(Some("SnapshotQuotaExceeded"), 400), AwsErrorKind::QuotaExceeded);
        assert_eq!(classify(Some("ThrottlingException"), 400), AwsErrorKind::Throttled);
        assert_eq!(classify(Some("SomethingNew"), 503), AwsErrorKind::Unavailable);
        assert_eq!(classify(None, 400), AwsErrorKind::Other);
    }
}
