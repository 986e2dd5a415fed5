//! The only module that knows aws-sdk-rds: it builds clients per region from one SDK
//! configuration, makes the RDS calls, and turns SDK types and errors into snapgate's own.

mod budget;
mod error;
pub(crate) mod presign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::Instrument;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_rds::config::{Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_rds::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rds::types::{DbClusterSnapshot, Tag};

pub(crate) use error::{AwsError, AwsErrorKind};

use crate::config::AwsSettings;
use crate::metrics::Metrics;
use snapgate_domain::ClusterSnapshot;

use budget::Pacer;
pub(crate) use budget::{DEBT_SECS, Draw, FleetBudget};

/// Loads the SDK configuration the way AWS users expect: the standard credential chain and
/// variables (`AWS_REGION`, `AWS_PROFILE`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_RDS`), with the
/// gateway's settings winning where they are set.
pub async fn load_sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry_config(settings))
        .timeout_config(timeout_config(settings));
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An SDK configuration with fixed credentials and endpoint, for `dev` and tests: nothing is
/// read from the environment or the user's AWS profile.
pub async fn fixed_sdk_config(settings: &AwsSettings, endpoint: &str, access_key: &str, secret_key: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry_config(settings))
        .timeout_config(timeout_config(settings))
        .region(Region::new(settings.region.clone().unwrap_or_else(|| "us-east-1".into())))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access_key, secret_key, None, None, "snapgate-fixed"))
        .load()
        .await
}

fn retry_config(settings: &AwsSettings) -> RetryConfig {
    // Standard mode: exponential backoff with full jitter on throttling, 5xx and transient
    // network errors; the caller's deadline bounds the whole sequence.
    RetryConfig::standard()
        .with_max_attempts(settings.max_attempts)
        .with_initial_backoff(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(5))
}

fn timeout_config(settings: &AwsSettings) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(settings.attempt_timeout())
        .build()
}

/// What `CopyDBClusterSnapshot` is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CopyInput {
    pub source: String,
    pub target: String,
    pub kms_key_id: Option<String>,
    pub copy_tags: bool,
    pub tags: Vec<(String, String)>,
    pub presigned_url: Option<String>,
}

/// RDS clients of one account, one per region, sharing one configuration (and so one HTTP
/// connection pool), each region's calls paced by its own token bucket.
pub(crate) struct Rds {
    base: SdkConfig,
    default_region: String,
    clients: Mutex<HashMap<String, aws_sdk_rds::Client>>,
    pacer: Pacer,
    metrics: Arc<Metrics>,
}

impl Rds {
    /// The clients of `account` (as the fleet's budget and metrics name it), paced alone or,
    /// with `fleet`, together with the other replicas.
    pub(crate) fn new(
        base: SdkConfig,
        settings: &AwsSettings,
        account: String,
        fleet: Option<Arc<dyn FleetBudget>>,
        metrics: Arc<Metrics>,
    ) -> Result<Rds, String> {
        let default_region = base
            .region()
            .map(|r| r.to_string())
            .ok_or("no AWS region: set AWS_REGION, a profile region, or aws.region")?;
        let pacer = Pacer::new(settings.rate_limit_per_sec, settings.rate_limit_burst, account, fleet, metrics.clone());
        Ok(Rds { base, default_region, clients: Mutex::new(HashMap::new()), pacer, metrics })
    }

    /// Counts a finished AWS call by action and outcome, and puts its request id and outcome
    /// on the call's span.
    fn record<T: aws_sdk_rds::operation::RequestId>(
        &self,
        action: &str,
        started: std::time::Instant,
        span: &tracing::Span,
        result: Result<T, AwsError>,
    ) -> Result<T, AwsError> {
        let (outcome, request_id) = match &result {
            Ok(out) => ("ok", out.request_id()),
            Err(e) => (e.kind.label(), e.request_id.as_deref()),
        };
        if let Some(id) = request_id {
            span.record("aws.request_id", id);
        }
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("aws.error_code", e.code.as_deref().unwrap_or(e.kind.label()));
        }
        self.metrics.aws_call(action, outcome, started.elapsed());
        result
    }

    pub(crate) fn default_region(&self) -> &str {
        &self.default_region
    }

    /// The one path of every AWS call: wait for the region's pace, send under a CLIENT span,
    /// classify a failure, and count the outcome with its request id on the span.
    async fn call<T, E, Fut>(
        &self,
        action: &'static str,
        region: &str,
        send: impl FnOnce(aws_sdk_rds::Client) -> Fut,
    ) -> Result<T, AwsError>
    where
        T: aws_sdk_rds::operation::RequestId,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        Fut: Future<Output = Result<T, SdkError<E, aws_sdk_rds::config::http::HttpResponse>>>,
    {
        self.pacer.turn(region).await;
        let started = std::time::Instant::now();
        let span = call_span(action, region);
        let out = send(self.client(region)).instrument(span.clone()).await.map_err(|e| AwsError::from_sdk(action, e));
        self.record(action, started, &span, out)
    }

    /// The credentials of this account, for presigning.
    pub(crate) async fn credentials(&self) -> Result<Credentials, AwsError> {
        use aws_credential_types::provider::ProvideCredentials;
        let provider = self.base.credentials_provider().ok_or_else(|| AwsError {
            kind: AwsErrorKind::AccessDenied,
            action: "PresignCopyDBClusterSnapshot",
            code: None,
            message: "no credentials are configured".into(),
            request_id: None,
        })?;
        provider.provide_credentials().await.map_err(|e| AwsError {
            kind: AwsErrorKind::AccessDenied,
            action: "PresignCopyDBClusterSnapshot",
            code: None,
            message: format!("credentials could not be loaded: {}", aws_sdk_rds::error::DisplayErrorContext(&e)),
            request_id: None,
        })
    }

    fn client(&self, region: &str) -> aws_sdk_rds::Client {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config = self.base.to_builder().region(Region::new(region.to_owned())).build();
                aws_sdk_rds::Client::from_conf(
                    aws_sdk_rds::config::Builder::from(&config)
                        .interceptor(AttemptRecorder { metrics: self.metrics.clone() })
                        .build(),
                )
            })
            .clone()
    }

    /// Starts a copy; returns the new snapshot and AWS's request id.
    pub(crate) async fn copy_cluster_snapshot(
        &self,
        region: &str,
        input: &CopyInput,
    ) -> Result<(ClusterSnapshot, Option<String>), AwsError> {
        const ACTION: &str = "CopyDBClusterSnapshot";
        let tags: Vec<Tag> = input.tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        let out = self
            .call(ACTION, region, |client| {
                client
                    .copy_db_cluster_snapshot()
                    .source_db_cluster_snapshot_identifier(&input.source)
                    .target_db_cluster_snapshot_identifier(&input.target)
                    .set_kms_key_id(input.kms_key_id.clone())
                    .set_pre_signed_url(input.presigned_url.clone())
                    .copy_tags(input.copy_tags)
                    .set_tags((!tags.is_empty()).then_some(tags))
                    .send()
            })
            .await?;
        let request_id = aws_sdk_rds::operation::RequestId::request_id(&out).map(str::to_owned);
        out.db_cluster_snapshot().map(|s| (convert(s), request_id)).ok_or_else(|| missing_snapshot(ACTION))
    }

    /// Describes one snapshot by identifier (or ARN) in `region`. AWS answers a snapshot that
    /// does not exist with `DBClusterSnapshotNotFoundFault` (an error of kind `NotFound`);
    /// `None` is an answer that listed nothing.
    pub(crate) async fn describe_cluster_snapshot(
        &self,
        region: &str,
        id: &str,
    ) -> Result<Option<ClusterSnapshot>, AwsError> {
        const ACTION: &str = "DescribeDBClusterSnapshots";
        let out = self
            .call(ACTION, region, |client| {
                client
                    .describe_db_cluster_snapshots()
                    .db_cluster_snapshot_identifier(id)
                    // A snapshot shared from another account is described by its ARN.
                    .set_include_shared(id.starts_with("arn:").then_some(true))
                    .send()
            })
            .await?;
        Ok(out.db_cluster_snapshots().first().map(convert))
    }
}

impl Rds {
    /// Describes many snapshots in one call per 100 identifiers, with the
    /// `db-cluster-snapshot-id` filter; snapshots that do not exist are simply absent.
    pub(crate) async fn describe_cluster_snapshots_by_ids(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<ClusterSnapshot>, AwsError> {
        self.describe_filtered(region, "db-cluster-snapshot-id", ids).await
    }

    /// The snapshots matching `filter` for each 100 of `values`, every page of 100 records.
    async fn describe_filtered(
        &self,
        region: &str,
        filter: &str,
        values: &[String],
    ) -> Result<Vec<ClusterSnapshot>, AwsError> {
        const ACTION: &str = "DescribeDBClusterSnapshots";
        let mut found = Vec::with_capacity(values.len());
        for chunk in values.chunks(MAX_FILTER_VALUES) {
            let filter = aws_sdk_rds::types::Filter::builder().name(filter).set_values(Some(chunk.to_vec())).build();
            let mut marker = None;
            loop {
                let out = self
                    .call(ACTION, region, |client| {
                        client
                            .describe_db_cluster_snapshots()
                            .filters(filter.clone())
                            .max_records(100)
                            .set_marker(marker)
                            .send()
                    })
                    .await?;
                found.extend(out.db_cluster_snapshots().iter().map(convert));
                marker = out.marker().map(str::to_owned);
                if marker.is_none() {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Every DB cluster in `region` (Aurora, Multi-AZ, Neptune and DocumentDB alike), with its
    /// tags: one call per 100 clusters.
    pub(crate) async fn describe_clusters(&self, region: &str) -> Result<Vec<DbCluster>, AwsError> {
        const ACTION: &str = "DescribeDBClusters";
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .call(ACTION, region, |client| client.describe_db_clusters().max_records(100).set_marker(marker).send())
                .await?;
            found.extend(out.db_clusters().iter().map(|c| {
                DbCluster {
                    id: c.db_cluster_identifier().unwrap_or_default().to_owned(),
                    engine: c.engine().unwrap_or_default().to_owned(),
                    tags: c
                        .tag_list()
                        .iter()
                        .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
                        .collect(),
                }
            }));
            marker = out.marker().map(str::to_owned);
            if marker.is_none() {
                return Ok(found);
            }
        }
    }

    /// The automated and manual snapshots of `clusters` in `region`, with the `db-cluster-id`
    /// filter: one call per 100 snapshots (and per 100 clusters).
    pub(crate) async fn describe_snapshots_of_clusters(
        &self,
        region: &str,
        clusters: &[String],
    ) -> Result<Vec<ClusterSnapshot>, AwsError> {
        self.describe_filtered(region, "db-cluster-id", clusters).await
    }

    /// The account's quota of manual cluster snapshots in `region` (`ManualClusterSnapshots` of
    /// DescribeAccountAttributes) as (used, max); `None` when AWS does not report it.
    pub(crate) async fn manual_cluster_snapshot_quota(&self, region: &str) -> Result<Option<SnapshotQuota>, AwsError> {
        const ACTION: &str = "DescribeAccountAttributes";
        let out = self.call(ACTION, region, |client| client.describe_account_attributes().send()).await?;
        Ok(out
            .account_quotas()
            .iter()
            .find(|q| q.account_quota_name() == Some("ManualClusterSnapshots"))
            .and_then(|q| Some(SnapshotQuota { used: q.used()?, max: q.max()? })))
    }

    /// Deletes a snapshot; returns it as it was when deleted, and AWS's request id.
    pub(crate) async fn delete_cluster_snapshot(
        &self,
        region: &str,
        id: &str,
    ) -> Result<(ClusterSnapshot, Option<String>), AwsError> {
        const ACTION: &str = "DeleteDBClusterSnapshot";
        let out = self
            .call(ACTION, region, |client| {
                client.delete_db_cluster_snapshot().db_cluster_snapshot_identifier(id).send()
            })
            .await?;
        let request_id = aws_sdk_rds::operation::RequestId::request_id(&out).map(str::to_owned);
        out.db_cluster_snapshot().map(|s| (convert(s), request_id)).ok_or_else(|| missing_snapshot(ACTION))
    }
}

/// An account's quota of manual cluster snapshots in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapshotQuota {
    pub used: i64,
    pub max: i64,
}

/// The CLIENT span of one AWS call (retries included). The SDK's own spans are DEBUG-level
/// and carry no request id; this one does.
fn call_span(action: &'static str, region: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "aws",
        otel.name = format!("RDS/{action}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        rpc.system.name = tracing::field::Empty,
        cloud.region = region,
        aws.request_id = tracing::field::Empty,
        aws.attempts = tracing::field::Empty,
        aws.error_code = tracing::field::Empty,
    );
    crate::telemetry::RpcConventions::get().record_names(&span, "aws-api", "RDS", action);
    span
}

/// Puts the attempt number on the current AWS call's span, so retries show in the trace.
struct AttemptRecorder {
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AttemptRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttemptRecorder")
    }
}

impl aws_smithy_runtime_api::client::interceptors::Intercept for AttemptRecorder {
    fn name(&self) -> &'static str {
        "snapgate::AttemptRecorder"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(attempts) = cfg.load::<aws_smithy_runtime_api::client::retries::RequestAttempts>() {
            tracing::Span::current().record("aws.attempts", attempts.attempts());
            if attempts.attempts() > 1 {
                let action = cfg
                    .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
                    .map_or("unknown", |m| m.name());
                self.metrics.aws_retry(action);
            }
        }
        Ok(())
    }
}

/// A DB cluster as DescribeDBClusters shows it: what a DR plan selects on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbCluster {
    pub id: String,
    pub engine: String,
    pub tags: Vec<(String, String)>,
}

/// Identifiers per `DescribeDBClusterSnapshots` call: one page of the API's largest size.
pub(crate) const MAX_FILTER_VALUES: usize = 100;

fn missing_snapshot(action: &'static str) -> AwsError {
    AwsError {
        kind: AwsErrorKind::Other,
        action,
        code: None,
        message: "the response carried no DBClusterSnapshot".into(),
        request_id: None,
    }
}

fn time(t: Option<&aws_smithy_types::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn convert(s: &DbClusterSnapshot) -> ClusterSnapshot {
    let mut snapshot = ClusterSnapshot {
        arn: s.db_cluster_snapshot_arn().unwrap_or_default().to_owned(),
        id: s.db_cluster_snapshot_identifier().unwrap_or_default().to_owned(),
        region: String::new(),
        account: String::new(),
        status: s.status().unwrap_or_default().to_owned(),
        percent_progress: s.percent_progress().unwrap_or_default(),
        source_arn: s.source_db_cluster_snapshot_arn().map(str::to_owned),
        cluster_id: s.db_cluster_identifier().unwrap_or_default().to_owned(),
        engine: s.engine().unwrap_or_default().to_owned(),
        engine_version: s.engine_version().unwrap_or_default().to_owned(),
        allocated_storage_gib: s.allocated_storage().unwrap_or_default(),
        encrypted: s.storage_encrypted().unwrap_or_default(),
        kms_key_id: s.kms_key_id().map(str::to_owned),
        create_time: time(s.snapshot_create_time()),
        cluster_create_time: time(s.cluster_create_time()),
        tags: s
            .tag_list()
            .iter()
            .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
            .collect(),
        snapshot_type: s.snapshot_type().unwrap_or_default().to_owned(),
    };
    snapshot.fill_location_from_arn();
    snapshot
}

/// The accounts copies can go to: the gateway's own, and those it assumes a role in.
pub(crate) struct Accounts {
    own: Arc<Rds>,
    own_account: Option<String>,
    roles: HashMap<String, Arc<Rds>>,
}

impl Accounts {
    /// Builds a client set for the gateway's own credentials and one per configured role
    /// (STS AssumeRole through aws-config, whose provider caches and refreshes credentials).
    /// With `fleet` (replicas on PostgreSQL), every account's pace is held by the fleet.
    pub(crate) async fn new(
        base: SdkConfig,
        settings: &AwsSettings,
        fleet: Option<Arc<dyn FleetBudget>>,
        metrics: Arc<Metrics>,
    ) -> Result<Accounts, String> {
        let mut roles = HashMap::new();
        for (account, role) in &settings.accounts {
            let mut builder =
                aws_config::sts::AssumeRoleProvider::builder(&role.role_arn).session_name(role.session_name.clone());
            if let Some(external_id) = &role.external_id {
                builder = builder.external_id(external_id);
            }
            let provider = builder.configure(&base).build().await;
            let config = base
                .to_builder()
                .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(provider))
                .build();
            let rds = Rds::new(config, settings, account.clone(), fleet.clone(), metrics.clone())?;
            roles.insert(account.clone(), Arc::new(rds));
        }
        // The gateway's own account by its id when configured; replicas configured alike
        // share one budget for it either way.
        let own = settings.account_id.clone().unwrap_or_else(|| "own".to_owned());
        Ok(Accounts {
            own: Arc::new(Rds::new(base, settings, own, fleet, metrics)?),
            own_account: settings.account_id.clone(),
            roles,
        })
    }

    pub(crate) fn default_region(&self) -> &str {
        self.own.default_region()
    }

    pub(crate) fn own_account(&self) -> Option<&str> {
        self.own_account.as_deref()
    }

    /// The clients for a destination account (`None`: the gateway's own); `None` for an
    /// account with no configured role.
    pub(crate) fn destination(&self, account: Option<&str>) -> Option<Arc<Rds>> {
        match account {
            None => Some(self.own.clone()),
            Some(a) if self.own_account.as_deref() == Some(a) => Some(self.own.clone()),
            Some(a) => self.roles.get(a).cloned(),
        }
    }

    /// The clients that can see a snapshot of `account` (from its ARN): that account's role
    /// when one is configured, else the gateway's own credentials.
    pub(crate) fn for_snapshot_account(&self, account: &str) -> Arc<Rds> {
        self.roles.get(account).cloned().unwrap_or_else(|| self.own.clone())
    }

    /// Which set of credentials serves `account`: the account id of a configured role, or ""
    /// for the gateway's own.
    pub(crate) fn credentials_key(&self, account: &str) -> String {
        if self.roles.contains_key(account) { account.to_owned() } else { String::new() }
    }
}
