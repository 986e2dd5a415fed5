//! HTTP for the emulator: the query-protocol endpoint at `/` and the admin endpoint under
//! `/_emulator/` (faults, call counts, KMS keys, cluster states) for tests and benchmarks.

use std::time::{Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;

use crate::Emulator;
use crate::actions::{self, Ctx};
use crate::faults::{Faults, Verdict};
use crate::presign;
use crate::query::{AwsError, CredentialScope, Params, SIGV4_QUERY_PARAMS};
use crate::xml;

pub(crate) fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/", post(query_endpoint).get(query_endpoint))
        .route("/_emulator/calls", get(get_calls).delete(reset_calls))
        .route("/_emulator/faults", get(get_faults).put(put_faults))
        .route("/_emulator/copies", get(get_copies))
        .route("/_emulator/kms-keys", post(post_kms_key))
        .route("/_emulator/cluster-status", put(put_cluster_status))
        .route("/_emulator/health", get(|| async { "ok" }))
        .with_state(emulator)
}

fn xml_response(status: StatusCode, request_id: &str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", id);
    }
    response
}

/// An answer whose connection drops half way: the status line, the headers and half the body,
/// then the connection is closed (hyper aborts a response whose body fails).
fn cut_off(request_id: &str, body: String) -> Response {
    let body = Bytes::from(body);
    let half = body.slice(..body.len() / 2);
    let chunks: [Result<Bytes, std::io::Error>; 2] =
        [Ok(half), Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "dropped by the emulator's faults"))];
    let mut response = xml_response(StatusCode::OK, request_id, String::new());
    // The length of the whole answer: the client expects more than it gets.
    response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *response.body_mut() = Body::from_stream(futures_util::stream::iter(chunks));
    response
}

fn error_response(err: &AwsError, request_id: &str) -> Response {
    xml_response(err.status, request_id, xml::error(err, request_id))
}

async fn query_endpoint(State(emulator): State<Emulator>, request: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    match handle(&emulator, request, &request_id).await {
        Ok(body) if emulator.fault_state().drops(rand::random::<f64>()) => cut_off(&request_id, body),
        Ok(body) => xml_response(StatusCode::OK, &request_id, body),
        Err(err) => {
            tracing::debug!(code = %err.code, message = %err.message, "emulator answered an error");
            error_response(&err, &request_id)
        }
    }
}

async fn handle(emulator: &Emulator, request: Request, request_id: &str) -> Result<String, AwsError> {
    let (parts, body) = request.into_parts();
    let limit = emulator.config().max_body_bytes;
    let body: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        AwsError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("Request body is larger than {limit} bytes"),
        )
    })?;
    let mut params = Params::default();
    if let Some(query) = parts.uri.query() {
        params.decode_into(query.as_bytes())?;
    }
    params.decode_into(&body)?;
    let scope = credential_scope(&parts.headers, &mut params)?;
    let action = params
        .take("Action")
        .filter(|a| !a.is_empty())
        .ok_or_else(|| AwsError::client("MissingAction", "The request must contain the parameter Action"))?;
    emulator.fault_state().counts.remember(&action, request_id);
    match params.take("Version").as_deref() {
        None | Some("") => return Err(AwsError::missing("Version")),
        Some("2014-10-31") => {}
        Some(other) => {
            return Err(AwsError::client(
                "InvalidAction",
                format!("Could not find operation {action} for version {other}"),
            ));
        }
    }
    let account = emulator.config().account_for(&scope.access_key).to_owned();
    let (verdict, latency, fail_copies, answer_delay) = {
        let mut faults = emulator.fault_state();
        let known = actions::ACTIONS.contains(&action.as_str());
        let counted = if known { action.as_str() } else { "(unknown action)" };
        let verdict = faults.admit(counted, &account, &scope.region, Instant::now(), rand::random::<f64>());
        (verdict, faults.latency(), faults.faults.clone(), faults.answer_delay())
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match verdict {
        Verdict::Throttled => return Err(AwsError::client("ThrottlingException", "Rate exceeded")),
        Verdict::InternalFailure => {
            return Err(AwsError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "The request processing has failed because of an unknown error, exception or failure.",
            ));
        }
        Verdict::Proceed => {}
    }
    // Carried out in a block: what it borrows is gone before the answer waits.
    let answer = {
        let fail_at = |target: &str| fail_copies.fail_at_percent(target);
        let secret_for = |key: &str| emulator.config().secret_keys.get(key).cloned();
        let presigned = |url: &str, expected: &actions::PresignedExpectation| match presign::verify(
            url,
            expected,
            SystemTime::now(),
            &secret_for,
        )? {
            presign::Verified::Signed => Ok(()),
            presign::Verified::UnknownKey(key) if emulator.config().strict_presign => {
                Err(format!("it is signed with an access key this service does not know ({key})"))
            }
            presign::Verified::UnknownKey(key) => {
                tracing::info!(access_key = %key, "a presigned URL passed every check but its signature, whose key's secret is not configured (secret_keys)");
                Ok(())
            }
        };
        let ctx = Ctx {
            account: &account,
            region: &scope.region,
            request_id,
            now: Instant::now(),
            copy_gib_per_sec: emulator.config().copy_gib_per_sec,
            snapshot_quota: emulator.config().snapshot_quota,
            cross_region_copy_limit: emulator.config().cross_region_copy_limit,
            backup_interval: emulator.config().backup_interval_secs.map(std::time::Duration::from_secs),
            fail_at_percent: &fail_at,
            presigned: &presigned,
        };
        let mut world = emulator.world();
        actions::dispatch(&mut world, &ctx, &action, params)
    };
    // Copied, but the answer is late: a client that gives up meanwhile had its copy made.
    if action == "CopyDBClusterSnapshot" && answer.is_ok() && !answer_delay.is_zero() {
        tokio::time::sleep(answer_delay).await;
    }
    answer
}

/// The SigV4 credential scope from the `Authorization` header, or from the query string of a
/// presigned request (whose signing parameters are then consumed).
fn credential_scope(headers: &HeaderMap, params: &mut Params) -> Result<CredentialScope, AwsError> {
    let missing = || {
        AwsError::new(StatusCode::FORBIDDEN, "MissingAuthenticationToken", "Request is missing Authentication Token")
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| missing())?;
        return CredentialScope::from_authorization(value).ok_or_else(|| {
            AwsError::new(
                StatusCode::FORBIDDEN,
                "IncompleteSignature",
                "The Authorization header is not a valid AWS4-HMAC-SHA256 signature",
            )
        });
    }
    let credential = params.peek("X-Amz-Credential").map(str::to_owned).ok_or_else(missing)?;
    for name in SIGV4_QUERY_PARAMS {
        params.take(name);
    }
    CredentialScope::parse(&credential)
        .ok_or_else(|| AwsError::new(StatusCode::FORBIDDEN, "IncompleteSignature", "X-Amz-Credential is malformed"))
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn get_calls(State(emulator): State<Emulator>) -> Response {
    Json(emulator.calls()).into_response()
}

async fn get_copies(State(emulator): State<Emulator>) -> Response {
    Json(emulator.copies()).into_response()
}

async fn reset_calls(State(emulator): State<Emulator>) -> StatusCode {
    emulator.reset_calls();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(emulator): State<Emulator>) -> Response {
    Json(emulator.faults()).into_response()
}

async fn put_faults(State(emulator): State<Emulator>, body: Body) -> Response {
    let faults: Faults = match parse_json(body).await {
        Ok(f) => f,
        Err(e) => return bad_request(e),
    };
    match emulator.set_faults(faults) {
        Ok(()) => Json(emulator.faults()).into_response(),
        Err(e) => bad_request(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKmsKey {
    account: Option<String>,
    region: String,
    alias: Option<String>,
}

async fn post_kms_key(State(emulator): State<Emulator>, body: Body) -> Response {
    let key: NewKmsKey = match parse_json(body).await {
        Ok(k) => k,
        Err(e) => return bad_request(e),
    };
    if let Some(alias) = &key.alias
        && !matches!(
            snapgate_domain::rules::KmsKeyRef::parse(alias),
            Ok(snapgate_domain::rules::KmsKeyRef::AliasName(_))
        )
    {
        return bad_request("alias must look like alias/NAME".into());
    }
    let account = key.account.unwrap_or_else(|| emulator.config().default_account.clone());
    let arn = emulator.add_kms_key(&account, &key.region, key.alias.as_deref());
    (StatusCode::CREATED, Json(serde_json::json!({ "arn": arn }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterStatus {
    account: Option<String>,
    region: String,
    cluster: String,
    status: String,
}

async fn put_cluster_status(State(emulator): State<Emulator>, body: Body) -> Response {
    let change: ClusterStatus = match parse_json(body).await {
        Ok(c) => c,
        Err(e) => return bad_request(e),
    };
    let account = change.account.unwrap_or_else(|| emulator.config().default_account.clone());
    if emulator.set_cluster_status(&account, &change.region, &change.cluster, &change.status) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "no such cluster" }))).into_response()
    }
}

async fn parse_json<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, String> {
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Property test: whatever a client sends to the query endpoint (any action, any parameters,
/// any values, presigned URLs and credential scopes included), the emulator answers with an
/// AWS response or error and never panics.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;
    use crate::EmulatorConfig;

    const ACTIONS: &[&str] = &[
        "CopyDBClusterSnapshot",
        "DescribeDBClusterSnapshots",
        "DescribeDBClusters",
        "DeleteDBClusterSnapshot",
        "CreateDBCluster",
        "CreateDBClusterSnapshot",
        "AddTagsToResource",
        "ListTagsForResource",
        "ModifyDBClusterSnapshotAttribute",
        "Nope",
    ];
    const PARAMS: &[&str] = &[
        "SourceDBClusterSnapshotIdentifier",
        "TargetDBClusterSnapshotIdentifier",
        "DBClusterSnapshotIdentifier",
        "DBClusterIdentifier",
        "KmsKeyId",
        "PreSignedUrl",
        "CopyTags",
        "SourceRegion",
        "Tags.Tag.1.Key",
        "Tags.Tag.1.Value",
        "Tags.Tag.2.Key",
        "MaxRecords",
        "Marker",
        "SnapshotType",
        "Filters.Filter.1.Name",
        "Filters.Filter.1.Values.Value.1",
        "Engine",
        "AllocatedStorage",
        "StorageEncrypted",
        "ResourceName",
        "AttributeName",
        "ValuesToAdd.AttributeValue.1",
        "X-Amz-Credential",
        "X-Amz-Date",
        "Version",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,40}",
            "[a-z][a-z0-9-]{0,20}",
            Just("arn:aws:rds:us-west-2:123456789012:cluster-snapshot:catalog-docdb-west-snap".to_owned()),
            "arn:aws:rds:[a-z0-9-]{0,12}:[0-9]{0,13}:cluster-snapshot:\\PC{0,10}",
            "https://rds\\.[a-z0-9-]{0,12}\\.amazonaws\\.com/\\?Action=CopyDBClusterSnapshot&X-Amz-Date=\\PC{0,20}&X-Amz-Credential=\\PC{0,30}&X-Amz-Signature=[0-9a-f]{0,64}&X-Amz-Expires=-?[0-9]{0,8}",
            "-?[0-9]{0,12}",
        ]
    }

    fn request() -> impl Strategy<Value = (String, Vec<(String, String)>, String)> {
        let action = proptest::sample::select(ACTIONS).prop_map(str::to_owned);
        let pairs =
            proptest::collection::vec((proptest::sample::select(PARAMS).prop_map(str::to_owned), value()), 0..8);
        let authorization = prop_oneof![
            Just("AWS4-HMAC-SHA256 Credential=AKIDTEST/20261125/us-west-2/rds/aws4_request, SignedHeaders=host, Signature=00".to_owned()),
            "AWS4-HMAC-SHA256 \\PC{0,60}",
            "\\PC{0,30}",
        ];
        (action, pairs, authorization)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn the_query_endpoint_answers_anything_without_panicking((action, pairs, authorization) in request(), raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let emulator = crate::Emulator::new(EmulatorConfig { seed: true, ..EmulatorConfig::default() }).unwrap();
            let app = router(emulator);
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", &action).append_pair("Version", "2014-10-31");
            for (name, value) in &pairs {
                form.append_pair(name, value);
            }
            for body in [form.finish().into_bytes(), raw] {
                let mut request = Request::post("/").body(Body::from(body)).unwrap();
                if let Ok(value) = HeaderValue::from_str(&authorization) {
                    request.headers_mut().insert(header::AUTHORIZATION, value);
                }
                let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
                let status = response.status();
                prop_assert!(status.is_success() || status.is_client_error() || status.is_server_error(), "{status}");
                prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "only injected faults are 500s");
            }
        }
    }
}
