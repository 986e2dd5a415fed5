//! The AWS query protocol on the way out: XML in the RDS namespace, every response carrying
//! `ResponseMetadata/RequestId`, errors in the `ErrorResponse` envelope.

use std::time::SystemTime;

use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use aws_smithy_xml::encode::{ScopeWriter, XmlWriter};

use crate::model::{Cluster, Snapshot};
use crate::query::AwsError;

pub(crate) const RDS_NAMESPACE: &str = "http://rds.amazonaws.com/doc/2014-10-31/";

/// Writes `<Action>Response` with an optional `<Action>Result` filled by `body`.
pub(crate) fn response(action: &str, request_id: &str, body: Option<&dyn Fn(&mut ScopeWriter<'_, '_>)>) -> String {
    let mut out = String::new();
    let mut doc = XmlWriter::new(&mut out);
    let response_tag = format!("{action}Response");
    let mut root = doc.start_el(&response_tag).write_ns(RDS_NAMESPACE, None).finish();
    if let Some(body) = body {
        let result_tag = format!("{action}Result");
        let mut result = root.start_el(&result_tag).finish();
        body(&mut result);
        result.finish();
    }
    let mut meta = root.start_el("ResponseMetadata").finish();
    leaf(&mut meta, "RequestId", request_id);
    meta.finish();
    root.finish();
    out
}

pub(crate) fn error(err: &AwsError, request_id: &str) -> String {
    let mut out = String::new();
    let mut doc = XmlWriter::new(&mut out);
    let mut root = doc.start_el("ErrorResponse").write_ns(RDS_NAMESPACE, None).finish();
    let mut e = root.start_el("Error").finish();
    leaf(&mut e, "Type", err.fault_type());
    leaf(&mut e, "Code", &err.code);
    leaf(&mut e, "Message", &err.message);
    e.finish();
    leaf(&mut root, "RequestId", request_id);
    root.finish();
    out
}

pub(crate) fn leaf(scope: &mut ScopeWriter<'_, '_>, tag: &str, value: &str) {
    let mut el = scope.start_el(tag).finish();
    el.data(value);
    el.finish();
}

fn time(t: SystemTime) -> String {
    DateTime::from(t).fmt(Format::DateTime).unwrap_or_default()
}

pub(crate) fn tag_list(scope: &mut ScopeWriter<'_, '_>, tags: &[(String, String)]) {
    let mut list = scope.start_el("TagList").finish();
    for (key, value) in tags {
        let mut tag = list.start_el("Tag").finish();
        leaf(&mut tag, "Key", key);
        leaf(&mut tag, "Value", value);
        tag.finish();
    }
    list.finish();
}

fn availability_zones(scope: &mut ScopeWriter<'_, '_>, region: &str) {
    let mut zones = scope.start_el("AvailabilityZones").finish();
    for suffix in ["a", "b", "c"] {
        leaf(&mut zones, "AvailabilityZone", &format!("{region}{suffix}"));
    }
    zones.finish();
}

pub(crate) fn snapshot(scope: &mut ScopeWriter<'_, '_>, s: &Snapshot) {
    let mut el = scope.start_el("DBClusterSnapshot").finish();
    availability_zones(&mut el, &s.key.region);
    leaf(&mut el, "DBClusterSnapshotIdentifier", &s.key.id);
    leaf(&mut el, "DBClusterIdentifier", &s.cluster_id);
    leaf(&mut el, "SnapshotCreateTime", &time(s.create_time));
    leaf(&mut el, "Engine", s.engine.as_str());
    if matches!(s.engine, snapgate_domain::Engine::AuroraMysql | snapgate_domain::Engine::AuroraPostgresql) {
        leaf(&mut el, "EngineMode", "provisioned");
    }
    leaf(&mut el, "AllocatedStorage", &s.allocated_storage.to_string());
    leaf(&mut el, "Status", &s.status);
    leaf(&mut el, "Port", &s.port.to_string());
    leaf(&mut el, "VpcId", "vpc-0emulator0000000");
    leaf(&mut el, "ClusterCreateTime", &time(s.cluster_create_time));
    leaf(&mut el, "MasterUsername", &s.master_username);
    leaf(&mut el, "EngineVersion", &s.engine_version);
    leaf(&mut el, "LicenseModel", license_model(&s.engine));
    leaf(&mut el, "SnapshotType", &s.snapshot_type);
    leaf(&mut el, "PercentProgress", &s.percent_progress.to_string());
    leaf(&mut el, "StorageEncrypted", if s.encrypted { "true" } else { "false" });
    // Encrypted snapshots here always have a KMS key (the account's default or a named one).
    leaf(&mut el, "StorageEncryptionType", if s.encrypted { "sse-kms" } else { "none" });
    leaf(&mut el, "BackupRetentionPeriod", "7");
    leaf(&mut el, "PreferredBackupWindow", "07:00-07:30");
    if let Some(kms) = &s.kms_key_arn {
        leaf(&mut el, "KmsKeyId", kms);
    }
    leaf(&mut el, "DBClusterSnapshotArn", &s.arn());
    if let Some(source) = &s.source_arn {
        leaf(&mut el, "SourceDBClusterSnapshotArn", source);
    }
    leaf(&mut el, "IAMDatabaseAuthenticationEnabled", "false");
    tag_list(&mut el, &s.tags);
    let (storage_type, throughput) = storage(&s.engine);
    leaf(&mut el, "StorageType", storage_type);
    if let Some(throughput) = throughput {
        leaf(&mut el, "StorageThroughput", &throughput.to_string());
    }
    leaf(&mut el, "DbClusterResourceId", &s.resource_id);
    // RDS's data groups (botocore 1.44.18's model): the emulator's snapshots contain none.
    // Neptune's and DocumentDB's models have no such member.
    if !matches!(s.engine, snapgate_domain::Engine::Neptune | snapgate_domain::Engine::Docdb) {
        leaf(&mut el, "CustomDataGroupPresent", "false");
    }
    el.finish();
}

/// The storage type of an engine's clusters, and the throughput (MiB/s) AWS reports only for
/// Multi-AZ DB clusters: Aurora's own storage, gp3 for Multi-AZ clusters, Neptune's and
/// DocumentDB's `standard` (their defaults).
fn storage(engine: &snapgate_domain::Engine) -> (&'static str, Option<u32>) {
    use snapgate_domain::Engine::*;
    match engine {
        AuroraMysql | AuroraPostgresql => ("aurora", None),
        Mysql | Postgres => ("gp3", Some(125)),
        Neptune | Docdb | Other(_) => ("standard", None),
    }
}

pub(crate) fn cluster(scope: &mut ScopeWriter<'_, '_>, c: &Cluster) {
    let mut el = scope.start_el("DBCluster").finish();
    leaf(&mut el, "AllocatedStorage", &c.allocated_storage.to_string());
    availability_zones(&mut el, &c.key.region);
    leaf(&mut el, "DBClusterIdentifier", &c.key.id);
    leaf(&mut el, "Status", &c.status);
    leaf(&mut el, "Engine", c.engine.as_str());
    leaf(&mut el, "EngineVersion", &c.engine_version);
    leaf(&mut el, "Port", &c.port.to_string());
    leaf(&mut el, "MasterUsername", &c.master_username);
    leaf(&mut el, "MultiAZ", "true");
    leaf(&mut el, "StorageEncrypted", if c.encrypted { "true" } else { "false" });
    if let Some(kms) = &c.kms_key_arn {
        leaf(&mut el, "KmsKeyId", kms);
    }
    leaf(&mut el, "DbClusterResourceId", &c.resource_id);
    leaf(&mut el, "DBClusterArn", &c.arn());
    leaf(&mut el, "ClusterCreateTime", &time(c.create_time));
    tag_list(&mut el, &c.tags);
    el.finish();
}

fn license_model(engine: &snapgate_domain::Engine) -> &'static str {
    use snapgate_domain::Engine::*;
    match engine {
        AuroraMysql | AuroraPostgresql => "aurora",
        Postgres => "postgresql-license",
        Mysql => "general-public-license",
        Neptune => "amazon-license",
        Docdb => "na",
        Other(_) => "na",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn errors_use_the_aws_envelope_and_escape_text() {
        let err = AwsError::new(StatusCode::NOT_FOUND, "DBClusterSnapshotNotFoundFault", "<missing> & gone");
        let xml = error(&err, "req-1");
        assert!(xml.starts_with(r#"<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type><Code>DBClusterSnapshotNotFoundFault</Code>"#));
        assert!(xml.contains("&lt;missing&gt; &amp; gone"));
        assert!(xml.ends_with("<RequestId>req-1</RequestId></ErrorResponse>"));
    }

    #[test]
    fn responses_without_a_result_still_carry_the_request_id() {
        let xml = response("AddTagsToResource", "req-2", None);
        assert_eq!(
            xml,
            r#"<AddTagsToResourceResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><ResponseMetadata><RequestId>req-2</RequestId></ResponseMetadata></AddTagsToResourceResponse>"#
        );
    }
}
