//! The RDS actions the emulator implements, with the rules and faults of the API reference
//! (seeds in `shared/seeds/`). Each action reads its parameters, checks them as AWS does,
//! changes the world and renders the XML response.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime};

use crate::model::{Cluster, CopyJob, Key, Snapshot, World};
use crate::query::{AwsError, Params};
use crate::xml;
use aws_smithy_xml::encode::ScopeWriter;
use snapgate_domain::rules::{self, SnapshotRef};
use snapgate_domain::source::{self, SourceRule};
use snapgate_domain::{AccountId, Arn, Engine, EngineFamily};

/// Who is calling, where, and the settings that shape the answer.
pub(crate) struct Ctx<'a> {
    pub account: &'a str,
    pub region: &'a str,
    pub request_id: &'a str,
    pub now: Instant,
    pub copy_gib_per_sec: f64,
    pub snapshot_quota: usize,
    pub cross_region_copy_limit: usize,
    /// How often clusters take automated snapshots (`None`: never after their first).
    pub backup_interval: Option<std::time::Duration>,
    pub fail_at_percent: &'a dyn Fn(&str) -> Option<i32>,
    pub presigned: &'a dyn Fn(&str, &PresignedExpectation) -> Result<(), String>,
}

/// What a presigned URL must say for a cross-region copy to be accepted.
pub(crate) struct PresignedExpectation {
    pub source_arn: String,
    pub source_region: String,
    pub destination_region: String,
    pub kms_key_id: Option<String>,
}

pub(crate) const ACTIONS: &[&str] = &[
    "AddTagsToResource",
    "CopyDBClusterSnapshot",
    "CreateDBCluster",
    "CreateDBClusterSnapshot",
    "DeleteDBClusterSnapshot",
    "DescribeDBClusterSnapshots",
    "DescribeDBClusters",
    "ListTagsForResource",
    "ModifyDBClusterSnapshotAttribute",
];

pub(crate) fn dispatch(world: &mut World, ctx: &Ctx<'_>, action: &str, mut params: Params) -> Result<String, AwsError> {
    world.advance(ctx.now);
    if let Some(every) = ctx.backup_interval {
        take_backups(world, every, SystemTime::now());
    }
    let body = match action {
        "CopyDBClusterSnapshot" => copy_db_cluster_snapshot(world, ctx, &mut params),
        "DescribeDBClusterSnapshots" => describe_db_cluster_snapshots(world, ctx, &mut params),
        "DeleteDBClusterSnapshot" => delete_db_cluster_snapshot(world, ctx, &mut params),
        "CreateDBCluster" => create_db_cluster(world, ctx, &mut params),
        "DescribeDBClusters" => describe_db_clusters(world, ctx, &mut params),
        "CreateDBClusterSnapshot" => create_db_cluster_snapshot(world, ctx, &mut params),
        "AddTagsToResource" => add_tags_to_resource(world, ctx, &mut params),
        "ListTagsForResource" => list_tags_for_resource(world, ctx, &mut params),
        "ModifyDBClusterSnapshotAttribute" => modify_db_cluster_snapshot_attribute(world, ctx, &mut params),
        "DescribeAccountAttributes" => Ok(describe_account_attributes(world, ctx)),
        other => {
            Err(AwsError::client("InvalidAction", format!("The action {other} is not valid for this web service.")))
        }
    }?;
    params.finish()?;
    Ok(body)
}

fn snapshot_not_found(id: &str) -> AwsError {
    AwsError::not_found("DBClusterSnapshotNotFoundFault", format!("DBClusterSnapshot {id} not found."))
}

/// Finds the snapshot a reference names, as seen by the caller: its own snapshots by identifier,
/// anyone's by ARN where the owner shared it with the caller.
fn find_snapshot_key(world: &World, ctx: &Ctx<'_>, reference: &str) -> Result<Key, AwsError> {
    let key = match SnapshotRef::parse(reference) {
        Ok(SnapshotRef::Arn(arn)) => {
            let id = arn.cluster_snapshot_id().unwrap_or_default();
            Key::new(&arn.account, &arn.region, id)
        }
        Ok(SnapshotRef::Id(id)) => Key::new(ctx.account, ctx.region, &id),
        Err(_) => return Err(snapshot_not_found(reference)),
    };
    match world.snapshots.get(&key) {
        Some(s) if s.key.account == ctx.account || s.is_shared_with(ctx.account) => Ok(key),
        _ => Err(snapshot_not_found(reference)),
    }
}

fn check_tags(tags: &[(String, String)], family: EngineFamily) -> Result<(), AwsError> {
    match rules::check_tags(tags, family).first() {
        None => Ok(()),
        Some(v) => {
            let which = v.index.map(|i| format!("Tag {} {}", i + 1, v.part)).unwrap_or_else(|| "Tags".into());
            Err(AwsError::invalid_value(format!("{which}: {}", v.rule)))
        }
    }
}

fn check_identifier(name: &str, id: &str) -> Result<(), AwsError> {
    rules::check_snapshot_identifier(id)
        .map_err(|rule| AwsError::invalid_value(format!("The parameter {name} is not a valid identifier: it {rule}.")))
}

/// AWS's fault for a broken source rule.
fn source_fault(rule: &SourceRule, source_id: &str) -> AwsError {
    match rule {
        SourceRule::NotAvailable { status } => AwsError::client(
            "InvalidDBClusterSnapshotStateFault",
            format!("Snapshot {source_id} is not in available state (it is {status})."),
        ),
        SourceRule::KmsKeyForUnencrypted => AwsError::invalid_combination(
            "KmsKeyId can't be specified when copying an unencrypted DB cluster snapshot.",
        ),
        SourceRule::SharedEncryptedAcrossRegions { .. } => AwsError::invalid_combination(
            "An encrypted DB cluster snapshot shared from another account can't be copied to another Region.",
        ),
        SourceRule::KmsKeyRequired { .. } => AwsError::invalid_combination(
            "KmsKeyId is required to copy an encrypted DB cluster snapshot shared from another account or from another Region.",
        ),
    }
}

fn copy_db_cluster_snapshot(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let source_ref = p.require("SourceDBClusterSnapshotIdentifier")?;
    let target = p.require("TargetDBClusterSnapshotIdentifier")?;
    let kms_key_id = p.take("KmsKeyId").filter(|k| !k.is_empty());
    let presigned_url = p.take("PreSignedUrl").filter(|u| !u.is_empty());
    let copy_tags = p.take_bool("CopyTags")?.unwrap_or(false);
    let tags = p.take_tags()?;
    check_identifier("TargetDBClusterSnapshotIdentifier", &target)?;

    let source_key = find_snapshot_key(world, ctx, &source_ref)?;
    let source = world.snapshots[&source_key].clone();
    let family = source.engine.family();
    let broken = source::check(
        source::Source {
            status: &source.status,
            encrypted: source.encrypted,
            region: &source.key.region,
            account: &source.key.account,
        },
        source::Copy {
            destination_region: ctx.region,
            destination_account: Some(ctx.account),
            kms_key: kms_key_id.is_some(),
        },
    );
    // AWS checks the source's state, then its cluster, then the parameters.
    if let Some(rule @ SourceRule::NotAvailable { .. }) = broken.first() {
        return Err(source_fault(rule, &source.key.id));
    }
    let cluster_key = Key::new(&source.key.account, &source.key.region, &source.cluster_id);
    if let Some(cluster) = world.clusters.get(&cluster_key)
        && matches!(cluster.status.as_str(), "inaccessible-encryption-credentials" | "incompatible-restore")
    {
        return Err(AwsError::client(
            "InvalidDBClusterStateFault",
            format!("DB cluster {} is in state {}.", cluster.key.id, cluster.status),
        ));
    }
    // A PreSignedUrl where AWS uses none is ignored, as AWS does: Neptune calls it "not
    // currently supported" yet its SDKs add one whenever SourceRegion is given, and RDS outside
    // GovCloud ignores it (the seeds' API references).
    if let Some(rule) = broken.first() {
        return Err(source_fault(rule, &source.key.id));
    }
    if family.needs_presigned_url(&source.key.region, ctx.region) {
        let url = presigned_url.as_deref().ok_or_else(|| {
            AwsError::invalid_value(format!(
                "PreSignedUrl is required to copy a {} cluster snapshot from another Region.",
                family.name()
            ))
        })?;
        let expected = PresignedExpectation {
            source_arn: source.arn(),
            source_region: source.key.region.clone(),
            destination_region: ctx.region.to_owned(),
            kms_key_id: kms_key_id.clone(),
        };
        (ctx.presigned)(url, &expected)
            .map_err(|why| AwsError::invalid_value(format!("Invalid PreSignedUrl: {why}")))?;
    }
    let kms_key_arn = match &kms_key_id {
        Some(reference) => Some(world.resolve_kms_key(ctx.account, ctx.region, reference).ok_or_else(|| {
            AwsError::client(
                "KMSKeyNotAccessibleFault",
                format!("The specified KMS key {reference} does not exist or is not accessible in {}.", ctx.region),
            )
        })?),
        None => source.kms_key_arn.clone(),
    };
    check_tags(&tags, family)?;

    let target_key = Key::new(ctx.account, ctx.region, &target);
    if world.snapshots.contains_key(&target_key) {
        return Err(AwsError::client(
            "DBClusterSnapshotAlreadyExistsFault",
            format!(
                "Cannot create the cluster snapshot because one with the identifier {} already exists.",
                target_key.id
            ),
        ));
    }
    // Aurora, Neptune and DocumentDB user guides: "up to five snapshot copy requests in progress
    // to a single destination Region per account"; the next answers SnapshotQuotaExceeded.
    let cross_region = source.key.region != ctx.region;
    let (in_progress, _) = world.copies_in_progress(ctx.account, ctx.region);
    if cross_region && in_progress >= ctx.cross_region_copy_limit {
        return Err(AwsError::client(
            "SnapshotQuotaExceeded",
            format!("Cannot copy more than {} snapshots across regions", ctx.cross_region_copy_limit),
        ));
    }
    if world.manual_snapshot_count(ctx.account, ctx.region) >= ctx.snapshot_quota {
        return Err(AwsError::client(
            "SnapshotQuotaExceeded",
            "Cannot create more than the allowed number of DB cluster snapshots.",
        ));
    }
    let mut all_tags = if copy_tags { source.tags.clone() } else { Vec::new() };
    for (k, v) in tags {
        all_tags.retain(|(existing, _)| *existing != k);
        all_tags.push((k, v));
    }
    let copy = Snapshot {
        key: target_key.clone(),
        snapshot_type: "manual".into(),
        status: "copying".into(),
        percent_progress: 0,
        create_time: SystemTime::now(),
        source_arn: Some(source.arn()),
        kms_key_arn,
        tags: all_tags,
        shared_with: BTreeSet::new(),
        resource_id: resource_id("cluster-snapshot"),
        copy: Some(CopyJob {
            started: ctx.now,
            gib_per_sec: ctx.copy_gib_per_sec,
            fail_at_percent: (ctx.fail_at_percent)(&target),
        }),
        ..source
    };
    world.snapshots.insert(target_key, copy.clone());
    *world.copies_made.entry((ctx.account.to_owned(), ctx.region.to_owned())).or_default() += 1;
    if cross_region {
        let peak = world.peak_cross_region_copies.entry((ctx.account.to_owned(), ctx.region.to_owned())).or_default();
        *peak = (*peak).max(in_progress + 1);
    }
    Ok(xml::response("CopyDBClusterSnapshot", ctx.request_id, Some(&|w| xml::snapshot(w, &copy))))
}

const SNAPSHOT_TYPES: &[&str] = &["automated", "manual", "shared", "public", "awsbackup"];

fn describe_db_cluster_snapshots(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.take("DBClusterSnapshotIdentifier").filter(|v| !v.is_empty());
    let cluster_id = p.take("DBClusterIdentifier").filter(|v| !v.is_empty());
    let snapshot_type = p.take("SnapshotType").filter(|v| !v.is_empty());
    let include_shared = p.take_bool("IncludeShared")?.unwrap_or(false);
    let include_public = p.take_bool("IncludePublic")?.unwrap_or(false);
    let resource_id = p.take("DbClusterResourceId");
    let max_records = p.take_int("MaxRecords")?.unwrap_or(100);
    let marker = p.take("Marker").filter(|v| !v.is_empty());
    if !(20..=100).contains(&max_records) {
        return Err(AwsError::invalid_value(format!(
            "Invalid value {max_records} for MaxRecords. Must be between 20 and 100"
        )));
    }
    if let Some(t) = &snapshot_type
        && !SNAPSHOT_TYPES.contains(&t.as_str())
    {
        return Err(AwsError::invalid_value(format!("Invalid snapshot type: {t}")));
    }
    let filters = parse_filters(p, SNAPSHOT_FILTERS)?;

    let mut selected: Vec<&Snapshot> = Vec::new();
    if let Some(id) = &id {
        let key = find_snapshot_key(world, ctx, id)?;
        selected.push(&world.snapshots[&key]);
    } else {
        let shared_wanted = include_shared || snapshot_type.as_deref() == Some("shared");
        for s in world.snapshots.values() {
            if s.key.region != ctx.region {
                continue;
            }
            let own = s.key.account == ctx.account;
            let visible = match snapshot_type.as_deref() {
                Some("shared") => !own && s.shared_with.contains(ctx.account),
                Some("public") => s.shared_with.contains("all"),
                Some(t) => own && s.snapshot_type == t,
                None => {
                    own || (shared_wanted && s.shared_with.contains(ctx.account))
                        || (include_public && s.shared_with.contains("all"))
                }
            };
            if visible {
                selected.push(s);
            }
        }
    }
    // Identifier filters as sets: a describe of a hundred ids among thousands of snapshots
    // looks each snapshot up once instead of comparing it with every value.
    let id_sets: Vec<Option<std::collections::HashSet<String>>> = filters
        .iter()
        .map(|(name, values)| {
            (name == "db-cluster-snapshot-id" && values.iter().all(|v| !v.starts_with("arn:")))
                .then(|| values.iter().map(|v| v.to_ascii_lowercase()).collect())
        })
        .collect();
    selected.retain(|s| {
        cluster_id.as_deref().is_none_or(|c| matches_cluster(s, c))
            && resource_id.as_deref().is_none_or(|r| s.resource_id == r)
            && filters.iter().zip(&id_sets).all(|((name, values), ids)| match ids {
                Some(ids) => ids.contains(&s.key.id.to_ascii_lowercase()),
                None => values.iter().any(|v| filter_matches(s, name, v)),
            })
    });
    let listing = Listing { action: "DescribeDBClusterSnapshots", list: "DBClusterSnapshots", write: xml::snapshot };
    listing.page(ctx, &selected, marker.as_deref(), max_records, |s| &s.key)
}

fn matches_cluster(s: &Snapshot, cluster: &str) -> bool {
    match Arn::parse(cluster) {
        Some(arn) => {
            arn.cluster_id().is_some_and(|c| c.eq_ignore_ascii_case(&s.cluster_id))
                && arn.account == s.key.account
                && arn.region == s.key.region
        }
        None => cluster.eq_ignore_ascii_case(&s.cluster_id),
    }
}

fn filter_matches(s: &Snapshot, name: &str, value: &str) -> bool {
    match name {
        "db-cluster-id" => matches_cluster(s, value),
        // The ARN is built only for a value that can be one: describes of thousands of
        // snapshots by id stay cheap.
        "db-cluster-snapshot-id" => {
            value.eq_ignore_ascii_case(&s.key.id) || (value.starts_with("arn:") && value == s.arn())
        }
        "snapshot-type" => value == s.snapshot_type,
        "engine" => Engine::parse(value) == s.engine,
        _ => false,
    }
}

/// The filters DescribeDBClusterSnapshots takes.
const SNAPSHOT_FILTERS: &[&str] = &["db-cluster-id", "db-cluster-snapshot-id", "snapshot-type", "engine"];
/// The filters of DescribeDBClusters the emulator models (AWS also has clone-group-id and
/// domain, which describe nothing the emulator has: refused rather than matched wrongly).
const CLUSTER_FILTERS: &[&str] = &["db-cluster-id", "db-cluster-resource-id", "engine"];

fn parse_filters(p: &mut Params, names: &[&str]) -> Result<Vec<(String, Vec<String>)>, AwsError> {
    let mut out = Vec::new();
    for mut filter in p.take_struct_list("Filters.Filter")? {
        let name = filter.remove("Name").ok_or_else(|| AwsError::missing("Filters.Filter.N.Name"))?;
        if !names.contains(&name.as_str()) {
            return Err(AwsError::invalid_value(format!("Unrecognized filter name: {name}")));
        }
        let mut values = Vec::new();
        for (field, value) in filter {
            let index = field.strip_prefix("Values.Value.").and_then(|i| i.parse::<usize>().ok());
            match index {
                Some(_) => values.push(value),
                None => {
                    return Err(AwsError::invalid_value(format!("Unknown filter field {field}")));
                }
            }
        }
        if values.is_empty() {
            return Err(AwsError::invalid_value(format!("Filter {name} needs at least one value")));
        }
        out.push((name, values));
    }
    Ok(out)
}

/// A describe's answer: a list element of items, in pages with markers.
struct Listing<T> {
    action: &'static str,
    list: &'static str,
    write: fn(&mut ScopeWriter<'_, '_>, &T),
}

impl<T> Listing<T> {
    /// The page of `selected` (in key order) after `marker`, and the marker of the next.
    fn page(
        &self,
        ctx: &Ctx<'_>,
        selected: &[&T],
        marker: Option<&str>,
        max_records: i64,
        key: impl Fn(&T) -> &Key,
    ) -> Result<String, AwsError> {
        let (page, next_marker) = page_after(selected, marker, max_records, key)?;
        Ok(xml::response(
            self.action,
            ctx.request_id,
            Some(&|w| {
                let mut list = w.start_el(self.list).finish();
                for item in &page {
                    (self.write)(&mut list, item);
                }
                list.finish();
                if let Some(m) = &next_marker {
                    xml::leaf(w, "Marker", m);
                }
            }),
        ))
    }
}

/// One page of `selected` (in key order) after `marker`, and the marker of the next page.
fn page_after<'a, T>(
    selected: &[&'a T],
    marker: Option<&str>,
    max_records: i64,
    key: impl Fn(&T) -> &Key,
) -> Result<(Vec<&'a T>, Option<String>), AwsError> {
    let start = match marker {
        None => 0,
        Some(m) => {
            let after = decode_marker(m)?;
            selected.partition_point(|item| *key(item) <= after)
        }
    };
    let page: Vec<&T> =
        selected.iter().skip(start).take(usize::try_from(max_records).unwrap_or(100)).copied().collect();
    let next = match page.last() {
        Some(last) if start + page.len() < selected.len() => Some(encode_marker(key(last))),
        _ => None,
    };
    Ok((page, next))
}

fn encode_marker(key: &Key) -> String {
    format!("{}/{}/{}", key.account, key.region, key.id)
}

fn decode_marker(marker: &str) -> Result<Key, AwsError> {
    let mut parts = marker.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(r), Some(id)) => Ok(Key::new(a, r, id)),
        _ => Err(AwsError::invalid_value("The marker is not valid.")),
    }
}

fn delete_db_cluster_snapshot(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.require("DBClusterSnapshotIdentifier")?;
    let key = Key::new(ctx.account, ctx.region, &id);
    let automated = world.snapshots.get(&key).ok_or_else(|| snapshot_not_found(&id))?.snapshot_type == "automated";
    if automated {
        return Err(AwsError::client(
            "InvalidDBClusterSnapshotStateFault",
            "Automated cluster snapshots can't be deleted; they expire with the backup retention period.",
        ));
    }
    // Deleting a target while it is `copying` cancels the copy (CopyDBClusterSnapshot docs).
    let mut removed = world.snapshots.remove(&key).ok_or_else(|| snapshot_not_found(&id))?;
    removed.copy = None;
    Ok(xml::response("DeleteDBClusterSnapshot", ctx.request_id, Some(&|w| xml::snapshot(w, &removed))))
}

fn default_port(engine: &Engine) -> i32 {
    match engine {
        Engine::AuroraPostgresql | Engine::Postgres => 5432,
        Engine::Neptune => 8182,
        Engine::Docdb => 27017,
        _ => 3306,
    }
}

fn default_version(engine: &Engine) -> &'static str {
    match engine {
        Engine::AuroraMysql => "8.0.mysql_aurora.3.05.2",
        Engine::AuroraPostgresql => "15.4",
        Engine::Mysql => "8.0.35",
        Engine::Postgres => "15.4",
        Engine::Neptune => "1.3.1.0",
        Engine::Docdb => "5.0.0",
        Engine::Other(_) => "1.0",
    }
}

fn resource_id(kind: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase();
    match kind {
        "cluster" => format!("cluster-{}", &id[..26]),
        _ => format!("cluster-snapshot-{}", &id[..26]),
    }
}

fn create_db_cluster(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.require("DBClusterIdentifier")?;
    let engine_name = p.require("Engine")?;
    let engine_version = p.take("EngineVersion");
    let allocated = p.take_int("AllocatedStorage")?;
    let encrypted = p.take_bool("StorageEncrypted")?.unwrap_or(false);
    let kms = p.take("KmsKeyId").filter(|k| !k.is_empty());
    let master_username = p.take("MasterUsername").unwrap_or_else(|| "admin".into());
    let port = p.take_int("Port")?;
    let tags = p.take_tags()?;
    // Accepted so seeding scripts written for AWS work; they shape nothing the emulator models.
    for ignored in [
        "MasterUserPassword",
        "DatabaseName",
        "DBClusterInstanceClass",
        "StorageType",
        "Iops",
        "DBSubnetGroupName",
        "DeletionProtection",
        "BackupRetentionPeriod",
        "ManageMasterUserPassword",
        "DBClusterParameterGroupName",
        "EngineMode",
    ] {
        p.take(ignored);
    }
    p.take_string_list("VpcSecurityGroupIds.VpcSecurityGroupId")?;
    p.take_string_list("AvailabilityZones.AvailabilityZone")?;
    rules::check_snapshot_identifier(&id).map_err(|rule| {
        AwsError::invalid_value(format!("The parameter DBClusterIdentifier is not a valid identifier: it {rule}."))
    })?;
    let engine = Engine::parse(&engine_name);
    if !engine.is_known() {
        return Err(AwsError::invalid_value(format!("Invalid DB engine: {engine_name}")));
    }
    check_tags(&tags, engine.family())?;
    let allocated = match allocated {
        Some(gib) if !(1..=65536).contains(&gib) => {
            return Err(AwsError::invalid_value("AllocatedStorage must be between 1 and 65536 GiB."));
        }
        Some(gib) => gib as i32,
        None => match engine {
            Engine::Mysql | Engine::Postgres => 100,
            _ => 10,
        },
    };
    let key = Key::new(ctx.account, ctx.region, &id);
    if world.clusters.contains_key(&key) {
        return Err(AwsError::client("DBClusterAlreadyExistsFault", format!("DB Cluster {id} already exists")));
    }
    let kms_key_arn = match kms {
        Some(reference) => Some(world.resolve_kms_key(ctx.account, ctx.region, &reference).ok_or_else(|| {
            AwsError::client("KMSKeyNotAccessibleFault", format!("The specified KMS key {reference} does not exist."))
        })?),
        None if encrypted => Some(world.default_kms_key(ctx.account, ctx.region)),
        None => None,
    };
    let cluster = Cluster {
        key: key.clone(),
        engine: engine.clone(),
        engine_version: engine_version.unwrap_or_else(|| default_version(&engine).into()),
        allocated_storage: allocated,
        encrypted: kms_key_arn.is_some(),
        kms_key_arn,
        master_username,
        port: port.map(|p| p as i32).unwrap_or_else(|| default_port(&engine)),
        status: "available".into(),
        create_time: SystemTime::now(),
        resource_id: resource_id("cluster"),
        tags,
    };
    // RDS takes an automated snapshot of a new cluster; moto models that too.
    let automated =
        snapshot_of(&cluster, &automated_id(&cluster.key.id, cluster.create_time, false), "automated", Vec::new());
    world.snapshots.insert(automated.key.clone(), automated);
    world.clusters.insert(key, cluster.clone());
    Ok(xml::response("CreateDBCluster", ctx.request_id, Some(&|w| xml::cluster(w, &cluster))))
}

fn describe_db_clusters(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.take("DBClusterIdentifier").filter(|v| !v.is_empty());
    let max_records = p.take_int("MaxRecords")?.unwrap_or(100);
    let marker = p.take("Marker").filter(|v| !v.is_empty());
    // Clusters are never shared across accounts here; the flag changes nothing.
    p.take_bool("IncludeShared")?;
    if !(20..=100).contains(&max_records) {
        return Err(AwsError::invalid_value(format!(
            "Invalid value {max_records} for MaxRecords. Must be between 20 and 100"
        )));
    }
    let filters = parse_filters(p, CLUSTER_FILTERS)?;
    let own = |c: &&Cluster| c.key.account == ctx.account && c.key.region == ctx.region;
    let mut selected: Vec<&Cluster> = world.clusters.values().filter(own).collect();
    if let Some(id) = &id {
        selected.retain(|c| cluster_is(c, id));
        if selected.is_empty() {
            return Err(AwsError::not_found("DBClusterNotFoundFault", format!("DBCluster {id} not found.")));
        }
    }
    selected.retain(|c| {
        filters.iter().all(|(name, values)| {
            values.iter().any(|v| match name.as_str() {
                "db-cluster-id" => cluster_is(c, v),
                "db-cluster-resource-id" => c.resource_id == *v,
                "engine" => Engine::parse(v) == c.engine,
                _ => false,
            })
        })
    });
    let listing = Listing { action: "DescribeDBClusters", list: "DBClusters", write: xml::cluster };
    listing.page(ctx, &selected, marker.as_deref(), max_records, |c| &c.key)
}

/// Whether `reference` (an identifier or the cluster's ARN) names `c`.
fn cluster_is(c: &Cluster, reference: &str) -> bool {
    if reference.starts_with("arn:") { reference == c.arn() } else { reference.eq_ignore_ascii_case(&c.key.id) }
}

fn create_db_cluster_snapshot(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.require("DBClusterSnapshotIdentifier")?;
    let cluster_id = p.require("DBClusterIdentifier")?;
    let tags = p.take_tags()?;
    check_identifier("DBClusterSnapshotIdentifier", &id)?;
    let cluster = world
        .clusters
        .get(&Key::new(ctx.account, ctx.region, &cluster_id))
        .ok_or_else(|| AwsError::not_found("DBClusterNotFoundFault", format!("DBCluster {cluster_id} not found.")))?
        .clone();
    if cluster.status != "available" {
        return Err(AwsError::client(
            "InvalidDBClusterStateFault",
            format!("DB cluster {} is not in available state (it is {}).", cluster.key.id, cluster.status),
        ));
    }
    check_tags(&tags, cluster.engine.family())?;
    let key = Key::new(ctx.account, ctx.region, &id);
    if world.snapshots.contains_key(&key) {
        return Err(AwsError::client(
            "DBClusterSnapshotAlreadyExistsFault",
            format!("Cannot create the snapshot because a snapshot with the identifier {} already exists.", key.id),
        ));
    }
    if world.manual_snapshot_count(ctx.account, ctx.region) >= ctx.snapshot_quota {
        return Err(AwsError::client(
            "SnapshotQuotaExceeded",
            "Cannot create more than the allowed number of DB cluster snapshots.",
        ));
    }
    let snapshot = snapshot_of(&cluster, &id, "manual", tags);
    world.snapshots.insert(key, snapshot.clone());
    Ok(xml::response("CreateDBClusterSnapshot", ctx.request_id, Some(&|w| xml::snapshot(w, &snapshot))))
}

/// A finished snapshot of a cluster (snapshot creation is instant in the emulator).
/// Automated snapshots a pause catches up at most per cluster (RDS keeps up to 35 days' worth).
const BACKUPS_CAUGHT_UP: u64 = 35;

/// RDS's name for an automated snapshot: `rds:<cluster>-YYYY-MM-DD-HH-MM` (and `-SS` when the
/// emulator takes them more often than once a minute).
fn automated_id(cluster: &str, at: SystemTime, seconds: bool) -> String {
    let stamp =
        aws_smithy_types::DateTime::from(at).fmt(aws_smithy_types::date_time::Format::DateTime).unwrap_or_default();
    let minutes = stamp.get(11..16).unwrap_or("00:00").replace(':', "-");
    let seconds = if seconds { format!("-{}", stamp.get(17..19).unwrap_or("00")) } else { String::new() };
    format!("rds:{cluster}-{}-{minutes}{seconds}", stamp.get(..10).unwrap_or("1970-01-01"))
}

/// Takes the automated snapshots due by `now`: each available cluster one every `every` since
/// its creation, as in RDS's daily backup window. A long pause catches up at most
/// `BACKUPS_CAUGHT_UP` of them per cluster.
fn take_backups(world: &mut World, every: std::time::Duration, now: SystemTime) {
    let every_ns = every.as_nanos().max(1);
    let mut taken = Vec::new();
    for cluster in world.clusters.values().filter(|c| c.status == "available") {
        let age = now.duration_since(cluster.create_time).unwrap_or_default();
        let due = u64::try_from(age.as_nanos() / every_ns).unwrap_or(u64::MAX);
        let last = world.backups_taken.get(&cluster.key).copied().unwrap_or(0);
        if due <= last {
            continue;
        }
        for window in (last + 1).max(due.saturating_sub(BACKUPS_CAUGHT_UP - 1))..=due {
            let Some(at) =
                u32::try_from(window).ok().and_then(|w| every.checked_mul(w)).map(|d| cluster.create_time + d)
            else {
                continue;
            };
            let id = automated_id(&cluster.key.id, at, every < std::time::Duration::from_secs(60));
            let mut snapshot = snapshot_of(cluster, &id, "automated", Vec::new());
            snapshot.create_time = at;
            taken.push(snapshot);
        }
        world.backups_taken.insert(cluster.key.clone(), due);
    }
    for snapshot in taken {
        world.snapshots.entry(snapshot.key.clone()).or_insert(snapshot);
    }
}

pub(crate) fn snapshot_of(cluster: &Cluster, id: &str, snapshot_type: &str, tags: Vec<(String, String)>) -> Snapshot {
    Snapshot {
        key: Key::new(&cluster.key.account, &cluster.key.region, id),
        cluster_id: cluster.key.id.clone(),
        engine: cluster.engine.clone(),
        engine_version: cluster.engine_version.clone(),
        allocated_storage: cluster.allocated_storage,
        encrypted: cluster.encrypted,
        kms_key_arn: cluster.kms_key_arn.clone(),
        snapshot_type: snapshot_type.into(),
        status: "available".into(),
        percent_progress: 100,
        create_time: SystemTime::now(),
        cluster_create_time: cluster.create_time,
        source_arn: None,
        master_username: cluster.master_username.clone(),
        port: cluster.port,
        resource_id: resource_id("cluster-snapshot"),
        tags,
        shared_with: BTreeSet::new(),
        copy: None,
    }
}

type TagList = Vec<(String, String)>;

/// The tags of the resource an ARN names, which must be the caller's own.
fn tags_of<'w>(
    world: &'w mut World,
    ctx: &Ctx<'_>,
    resource: &str,
) -> Result<(&'w mut TagList, EngineFamily), AwsError> {
    let arn = Arn::parse(resource).ok_or_else(|| AwsError::invalid_value(format!("{resource} is not a valid ARN")))?;
    let not_found = || AwsError::not_found("DBClusterSnapshotNotFoundFault", format!("Resource {resource} not found."));
    if arn.account != ctx.account || arn.region != ctx.region {
        return Err(not_found());
    }
    if let Some(id) = arn.cluster_snapshot_id() {
        let s = world.snapshots.get_mut(&Key::new(&arn.account, &arn.region, id)).ok_or_else(not_found)?;
        let family = s.engine.family();
        return Ok((&mut s.tags, family));
    }
    if let Some(id) = arn.cluster_id() {
        let c = world
            .clusters
            .get_mut(&Key::new(&arn.account, &arn.region, id))
            .ok_or_else(|| AwsError::not_found("DBClusterNotFoundFault", format!("DBCluster {id} not found.")))?;
        let family = c.engine.family();
        return Ok((&mut c.tags, family));
    }
    Err(AwsError::invalid_value(format!("Tagging is not supported for {resource} in this emulator")))
}

fn add_tags_to_resource(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let resource = p.require("ResourceName")?;
    let tags = p.take_tags()?;
    let (existing, family) = tags_of(world, ctx, &resource)?;
    let mut merged = existing.clone();
    for (k, v) in tags {
        merged.retain(|(old, _)| *old != k);
        merged.push((k, v));
    }
    check_tags(&merged, family)?;
    *existing = merged;
    Ok(xml::response("AddTagsToResource", ctx.request_id, None))
}

fn list_tags_for_resource(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let resource = p.require("ResourceName")?;
    if !p.take_struct_list("Filters.Filter")?.is_empty() {
        return Err(AwsError::invalid_value("ListTagsForResource filters are not supported."));
    }
    let (tags, _) = tags_of(world, ctx, &resource)?;
    let tags = tags.clone();
    Ok(xml::response("ListTagsForResource", ctx.request_id, Some(&|w| xml::tag_list(w, &tags))))
}

/// RDS's default quota of DB clusters per account and region.
const CLUSTER_QUOTA: usize = 40;

/// The account's quotas in the caller's region, as RDS names them: the ones the emulator models
/// (manual cluster snapshots against `snapshot_quota`, and clusters). The action takes no
/// parameters.
fn describe_account_attributes(world: &World, ctx: &Ctx<'_>) -> String {
    let clusters =
        world.clusters.values().filter(|c| c.key.account == ctx.account && c.key.region == ctx.region).count();
    let quotas = [
        ("DBClusters", clusters, CLUSTER_QUOTA),
        ("ManualClusterSnapshots", world.manual_snapshot_count(ctx.account, ctx.region), ctx.snapshot_quota),
    ];
    xml::response(
        "DescribeAccountAttributes",
        ctx.request_id,
        Some(&|w| {
            let mut list = w.start_el("AccountQuotas").finish();
            for (name, used, max) in quotas {
                let mut quota = list.start_el("AccountQuota").finish();
                xml::leaf(&mut quota, "AccountQuotaName", name);
                xml::leaf(&mut quota, "Used", &used.to_string());
                xml::leaf(&mut quota, "Max", &max.to_string());
                quota.finish();
            }
            list.finish();
        }),
    )
}

fn modify_db_cluster_snapshot_attribute(world: &mut World, ctx: &Ctx<'_>, p: &mut Params) -> Result<String, AwsError> {
    let id = p.require("DBClusterSnapshotIdentifier")?;
    let attribute = p.require("AttributeName")?;
    let add = p.take_string_list("ValuesToAdd.AttributeValue")?;
    let remove = p.take_string_list("ValuesToRemove.AttributeValue")?;
    if attribute != "restore" {
        return Err(AwsError::invalid_value(format!("Invalid attribute name: {attribute}")));
    }
    for account in add.iter().chain(&remove) {
        if account != "all" && !AccountId::is_valid(account) {
            return Err(AwsError::invalid_value(format!("Invalid account id: {account}")));
        }
    }
    let key = Key::new(ctx.account, ctx.region, &id);
    let snapshot = world.snapshots.get_mut(&key).ok_or_else(|| snapshot_not_found(&id))?;
    if snapshot.snapshot_type != "manual" {
        return Err(AwsError::client("InvalidDBClusterSnapshotStateFault", "Only manual snapshots can be shared."));
    }
    snapshot.shared_with.extend(add);
    for account in remove {
        snapshot.shared_with.remove(&account);
    }
    let shared: Vec<String> = snapshot.shared_with.iter().cloned().collect();
    let id = snapshot.key.id.clone();
    Ok(xml::response(
        "ModifyDBClusterSnapshotAttribute",
        ctx.request_id,
        Some(&|w| {
            let mut result = w.start_el("DBClusterSnapshotAttributesResult").finish();
            xml::leaf(&mut result, "DBClusterSnapshotIdentifier", &id);
            let mut attrs = result.start_el("DBClusterSnapshotAttributes").finish();
            let mut attr = attrs.start_el("DBClusterSnapshotAttribute").finish();
            xml::leaf(&mut attr, "AttributeName", "restore");
            let mut values = attr.start_el("AttributeValues").finish();
            for v in &shared {
                xml::leaf(&mut values, "AttributeValue", v);
            }
            values.finish();
            attr.finish();
            attrs.finish();
            result.finish();
        }),
    ))
}
