//! The emulator's in-memory world: clusters, cluster snapshots and KMS keys per account and
//! region, and how a copy advances with time. Progress is computed from the clock when the
//! world is read, so no background task has to tick copies along.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use snapgate_domain::{Arn, Engine};

/// Where a resource lives and what it is called (identifiers are stored lowercased, as RDS does).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub account: String,
    pub region: String,
    pub id: String,
}

impl Key {
    pub(crate) fn new(account: &str, region: &str, id: &str) -> Key {
        Key { account: account.to_owned(), region: region.to_owned(), id: id.to_ascii_lowercase() }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    pub key: Key,
    pub engine: Engine,
    pub engine_version: String,
    pub allocated_storage: i32,
    pub encrypted: bool,
    pub kms_key_arn: Option<String>,
    pub master_username: String,
    pub port: i32,
    pub status: String,
    pub create_time: SystemTime,
    pub resource_id: String,
    pub tags: Vec<(String, String)>,
}

impl Cluster {
    pub(crate) fn arn(&self) -> String {
        Arn::cluster(&self.key.region, &self.key.account, &self.key.id).to_string()
    }
}

/// A copy in flight: when it started and how fast it goes.
#[derive(Debug, Clone)]
pub(crate) struct CopyJob {
    pub started: Instant,
    pub gib_per_sec: f64,
    /// The copy stops and fails once it reaches this percentage.
    pub fail_at_percent: Option<i32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub key: Key,
    pub cluster_id: String,
    pub engine: Engine,
    pub engine_version: String,
    pub allocated_storage: i32,
    pub encrypted: bool,
    pub kms_key_arn: Option<String>,
    pub snapshot_type: String,
    pub status: String,
    pub percent_progress: i32,
    pub create_time: SystemTime,
    pub cluster_create_time: SystemTime,
    pub source_arn: Option<String>,
    pub master_username: String,
    pub port: i32,
    pub resource_id: String,
    pub tags: Vec<(String, String)>,
    /// Accounts allowed to copy or restore it (`all` for public), from the `restore` attribute.
    pub shared_with: BTreeSet<String>,
    pub copy: Option<CopyJob>,
}

impl Snapshot {
    pub(crate) fn arn(&self) -> String {
        Arn::cluster_snapshot(&self.key.region, &self.key.account, &self.key.id).to_string()
    }

    pub(crate) fn is_shared_with(&self, account: &str) -> bool {
        self.shared_with.contains(account) || self.shared_with.contains("all")
    }

    /// Brings a copy's status and progress up to `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        let Some(job) = &self.copy else { return };
        let elapsed = now.saturating_duration_since(job.started).as_secs_f64();
        let size = f64::from(self.allocated_storage.max(1));
        let percent = ((elapsed * job.gib_per_sec / size) * 100.0).floor().min(100.0) as i32;
        match job.fail_at_percent {
            Some(fail_at) if percent >= fail_at => {
                self.status = "failed".into();
                self.percent_progress = fail_at;
                self.copy = None;
            }
            _ if percent >= 100 => {
                self.status = "available".into();
                self.percent_progress = 100;
                self.copy = None;
            }
            _ => {
                self.status = "copying".into();
                self.percent_progress = percent;
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct KmsKey {
    pub account: String,
    pub region: String,
    pub key_id: String,
    pub aliases: Vec<String>,
}

impl KmsKey {
    pub(crate) fn arn(&self) -> String {
        format!(
            "arn:{}:kms:{}:{}:key/{}",
            snapgate_domain::partition_for_region(&self.region),
            self.region,
            self.account,
            self.key_id
        )
    }
}

/// Everything the emulator holds. Guarded by one mutex; no lock is held across an await.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub clusters: BTreeMap<Key, Cluster>,
    pub snapshots: BTreeMap<Key, Snapshot>,
    pub kms_keys: Vec<KmsKey>,
    /// The most cross-region copies ever in progress at once, per (account, destination region).
    pub peak_cross_region_copies: BTreeMap<(String, String), usize>,
    /// Copies made (snapshots CopyDBClusterSnapshot created), per (account, region).
    pub copies_made: BTreeMap<(String, String), usize>,
    /// The latest backup window each cluster took its automated snapshot in (a count of
    /// `backup_interval_secs` since its creation).
    pub backups_taken: BTreeMap<Key, u64>,
}

/// The alias of the AWS-managed RDS key, present in every account and region.
pub(crate) const AWS_MANAGED_RDS_ALIAS: &str = "alias/aws/rds";

impl World {
    pub(crate) fn advance(&mut self, now: Instant) {
        for snapshot in self.snapshots.values_mut().filter(|s| s.copy.is_some()) {
            snapshot.advance(now);
        }
    }

    pub(crate) fn add_kms_key(&mut self, account: &str, region: &str, alias: Option<&str>) -> String {
        let key = KmsKey {
            account: account.to_owned(),
            region: region.to_owned(),
            key_id: uuid::Uuid::new_v4().to_string(),
            aliases: alias.map(|a| vec![a.to_owned()]).unwrap_or_default(),
        };
        let arn = key.arn();
        self.kms_keys.push(key);
        arn
    }

    /// The AWS-managed key of an account and region, made on first use as AWS does.
    pub(crate) fn default_kms_key(&mut self, account: &str, region: &str) -> String {
        match self.find_alias(account, region, AWS_MANAGED_RDS_ALIAS) {
            Some(key) => key.arn(),
            None => self.add_kms_key(account, region, Some(AWS_MANAGED_RDS_ALIAS)),
        }
    }

    fn find_alias(&self, account: &str, region: &str, alias: &str) -> Option<&KmsKey> {
        self.kms_keys
            .iter()
            .find(|k| k.account == account && k.region == region && k.aliases.iter().any(|a| a == alias))
    }

    /// Resolves any of the four forms of a KMS key reference, seen from `account` calling in
    /// `region`, to the key's ARN. Keys are regional: an ARN in another region is not usable.
    pub(crate) fn resolve_kms_key(&mut self, account: &str, region: &str, reference: &str) -> Option<String> {
        use snapgate_domain::rules::KmsKeyRef;
        match KmsKeyRef::parse(reference).ok()? {
            KmsKeyRef::KeyId(id) => self
                .kms_keys
                .iter()
                .find(|k| k.account == account && k.region == region && k.key_id == id)
                .map(KmsKey::arn),
            KmsKeyRef::AliasName(alias) if alias == AWS_MANAGED_RDS_ALIAS => {
                Some(self.default_kms_key(account, region))
            }
            KmsKeyRef::AliasName(alias) => self.find_alias(account, region, &alias).map(KmsKey::arn),
            KmsKeyRef::Arn(arn) if arn.region != region => None,
            KmsKeyRef::Arn(arn) => {
                if let Some(id) = arn.resource.strip_prefix("key/") {
                    self.kms_keys
                        .iter()
                        .find(|k| k.account == arn.account && k.region == arn.region && k.key_id == id)
                        .map(KmsKey::arn)
                } else {
                    let alias = arn.resource.clone();
                    self.find_alias(&arn.account, &arn.region, &alias).map(KmsKey::arn)
                }
            }
        }
    }

    /// Copies in progress into `region` of `account`: (from other regions, all).
    pub(crate) fn copies_in_progress(&self, account: &str, region: &str) -> (usize, usize) {
        let copying = self.snapshots.values().filter(|s| {
            s.key.account == account && s.key.region == region && s.copy.is_some() && s.status == "copying"
        });
        let (mut cross, mut all) = (0, 0);
        for s in copying {
            all += 1;
            if s.source_arn.as_deref().and_then(snapgate_domain::Arn::parse).is_some_and(|a| a.region != region) {
                cross += 1;
            }
        }
        (cross, all)
    }

    pub(crate) fn manual_snapshot_count(&self, account: &str, region: &str) -> usize {
        self.snapshots
            .values()
            .filter(|s| s.key.account == account && s.key.region == region && s.snapshot_type == "manual")
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn copying(storage: i32, fail_at: Option<i32>, started: Instant) -> Snapshot {
        Snapshot {
            key: Key::new("123456789012", "us-east-1", "copy"),
            cluster_id: "c".into(),
            engine: Engine::AuroraMysql,
            engine_version: "8.0".into(),
            allocated_storage: storage,
            encrypted: false,
            kms_key_arn: None,
            snapshot_type: "manual".into(),
            status: "copying".into(),
            percent_progress: 0,
            create_time: SystemTime::now(),
            cluster_create_time: SystemTime::now(),
            source_arn: None,
            master_username: "admin".into(),
            port: 3306,
            resource_id: "r".into(),
            tags: vec![],
            shared_with: BTreeSet::new(),
            copy: Some(CopyJob { started, gib_per_sec: 10.0, fail_at_percent: fail_at }),
        }
    }

    #[test]
    fn a_copy_advances_with_its_throughput_then_becomes_available() {
        let start = Instant::now();
        let mut s = copying(100, None, start);
        s.advance(start + Duration::from_secs(4));
        assert_eq!((s.status.as_str(), s.percent_progress), ("copying", 40));
        s.advance(start + Duration::from_secs(11));
        assert_eq!((s.status.as_str(), s.percent_progress), ("available", 100));
        assert!(s.copy.is_none());
    }

    #[test]
    fn a_copy_set_to_fail_stops_at_its_percentage() {
        let start = Instant::now();
        let mut s = copying(100, Some(30), start);
        s.advance(start + Duration::from_secs(5));
        assert_eq!((s.status.as_str(), s.percent_progress), ("failed", 30));
    }

    #[test]
    fn kms_keys_resolve_by_id_alias_and_arn_but_only_in_their_region() {
        let mut w = World::default();
        let arn = w.add_kms_key("123456789012", "us-east-1", Some("alias/backup"));
        let id = arn.rsplit('/').next().unwrap().to_owned();
        assert_eq!(w.resolve_kms_key("123456789012", "us-east-1", &id), Some(arn.clone()));
        assert_eq!(w.resolve_kms_key("123456789012", "us-east-1", "alias/backup"), Some(arn.clone()));
        assert_eq!(w.resolve_kms_key("123456789012", "us-east-1", &arn), Some(arn.clone()));
        assert_eq!(w.resolve_kms_key("123456789012", "us-west-2", &arn), None);
        assert_eq!(w.resolve_kms_key("123456789012", "us-west-2", "alias/backup"), None);
        let managed = w.resolve_kms_key("123456789012", "us-west-2", "alias/aws/rds").unwrap();
        assert_eq!(w.default_kms_key("123456789012", "us-west-2"), managed);
    }
}
