//! What a run decides, with no AWS call: which clusters a plan selects and which snapshot of
//! each it copies, the target id of each copy, and which of the plan's copies retention expires.
//! Every decision that can delete something is here, in one place, with its guarantees tested.

use std::time::{Duration, SystemTime};

use aws_lc_rs::digest;
use snapgate_domain::ClusterSnapshot;

use super::spec::{PLAN_TAG, Retention, SnapshotType, ValidPlan};

/// Characters of the hash that ends a plan copy's target id.
const HASH_CHARS: usize = 10;

pub(crate) use crate::aws::DbCluster as Cluster;

/// Whether the plan selects `cluster`: its engine, id and tags (all must match).
pub(crate) fn selects(plan: &ValidPlan, cluster: &Cluster) -> bool {
    let engine_ok = plan.engines.is_empty() || plan.engines.iter().any(|e| e.as_str() == cluster.engine);
    let id_ok = plan.clusters.as_ref().is_none_or(|re| re.is_match(&cluster.id));
    let tags_ok = plan.cluster_tags.iter().all(|(k, v)| cluster.tags.iter().any(|(ck, cv)| ck == k && cv == v));
    engine_ok && id_ok && tags_ok
}

/// The newest `available` snapshot of `cluster_id` among `snapshots`, of the plan's types.
pub(crate) fn newest_source<'a>(
    plan: &ValidPlan,
    cluster_id: &str,
    snapshots: &'a [ClusterSnapshot],
) -> Option<&'a ClusterSnapshot> {
    snapshots
        .iter()
        .filter(|s| s.cluster_id.eq_ignore_ascii_case(cluster_id))
        .filter(|s| s.status == "available")
        .filter(|s| snapshot_type(s).is_some_and(|t| plan.snapshot_types.contains(&t)))
        // A copy a plan made is never a source of the same plan's next run.
        .filter(|s| !s.tags.iter().any(|(k, _)| k == PLAN_TAG))
        .max_by(|a, b| a.create_time.cmp(&b.create_time).then_with(|| a.id.cmp(&b.id)))
}

fn snapshot_type(s: &ClusterSnapshot) -> Option<SnapshotType> {
    match s.snapshot_type.as_str() {
        "automated" => Some(SnapshotType::Automated),
        "manual" => Some(SnapshotType::Manual),
        _ => None,
    }
}

/// The target id of the plan's copy of `source_arn` (a snapshot of `cluster_id`) at a
/// destination: the same on every replica and every retry, so a run repeated, resumed or
/// claimed by another replica makes each copy once. Readable (plan and cluster first), within
/// AWS's identifier rules (63 characters, a letter first, no double or trailing hyphen), and
/// ended by a hash of all three so that truncation never makes two copies one.
pub(crate) fn target_id(plan: &str, cluster_id: &str, source_arn: &str, destination: &str) -> String {
    let hash = digest::digest(&digest::SHA256, format!("{plan}\n{cluster_id}\n{source_arn}\n{destination}").as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut base = String::new();
    for c in format!("{plan}-{cluster_id}").chars() {
        let c = if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' };
        if c == '-' && base.ends_with('-') {
            continue;
        }
        base.push(c);
    }
    base.truncate(63 - 1 - HASH_CHARS);
    let base = base.trim_end_matches('-');
    format!("{base}-{}", &hex[..HASH_CHARS])
}

/// One of the plan's copies at a destination, for retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanCopy {
    pub id: String,
    pub cluster_id: String,
    /// The store records it as this plan's.
    pub recorded: bool,
    /// AWS shows it tagged `snapgate:plan = <this plan>`.
    pub tagged: bool,
    /// AWS's status (`available`, `copying`, ...).
    pub status: String,
    /// When its source snapshot was taken: the recovery point it holds.
    pub source_time: SystemTime,
}

/// Which of one cluster's copies at one destination retention expires, oldest first.
///
/// Guarantees: only copies both recorded as the plan's and tagged as its own are ever named;
/// the newest available such copy is never named; a copy not `available` (in progress, failed)
/// is never named and does not count toward `keep_last`.
pub(crate) fn expiries<'a>(retention: &Retention, copies: &'a [PlanCopy], now: SystemTime) -> Vec<&'a PlanCopy> {
    if retention.keeps_all() {
        return Vec::new();
    }
    let mut own: Vec<&PlanCopy> = copies.iter().filter(|c| c.recorded && c.tagged && c.status == "available").collect();
    // Newest first; the id breaks ties so every replica decides alike.
    own.sort_by(|a, b| b.source_time.cmp(&a.source_time).then_with(|| b.id.cmp(&a.id)));
    let mut out: Vec<&PlanCopy> = own
        .iter()
        .enumerate()
        .skip(1) // the newest is the recovery point: never expired
        .filter(|(rank, copy)| {
            let over_count = retention.keep_last.is_some_and(|keep| *rank >= keep as usize);
            let too_old = retention
                .max_age
                .is_some_and(|max| now.duration_since(copy.source_time).unwrap_or(Duration::ZERO) > max);
            over_count || too_old
        })
        .map(|(_, copy)| *copy)
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Served;
    use crate::plan::spec::{parse_file, validate_file};

    const DAY: Duration = Duration::from_secs(86_400);

    fn plan(extra_select: &str, retention: &str) -> ValidPlan {
        let text = format!(
            "[[plan]]\nname = \"nightly-dr\"\nschedule = \"0 3 * * *\"\n[plan.select]\n{extra_select}\n[[plan.copy]]\ndestination_region = \"us-west-2\"\n{retention}\n"
        );
        let regions = ["us-east-1".to_owned(), "us-west-2".to_owned()];
        validate_file(&parse_file(&text).unwrap(), "us-east-1", &Served(&regions)).unwrap().remove(0)
    }

    fn cluster(id: &str, engine: &str, env: &str) -> Cluster {
        Cluster { id: id.into(), engine: engine.into(), tags: vec![("env".into(), env.into())] }
    }

    fn snapshot(id: &str, cluster: &str, kind: &str, status: &str, days_ago: u64) -> ClusterSnapshot {
        ClusterSnapshot {
            arn: format!("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:{id}"),
            id: id.into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            status: status.into(),
            percent_progress: 100,
            source_arn: None,
            cluster_id: cluster.into(),
            engine: "aurora-postgresql".into(),
            engine_version: "15.4".into(),
            allocated_storage_gib: 10,
            encrypted: false,
            kms_key_id: None,
            create_time: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) - DAY * days_ago as u32),
            cluster_create_time: None,
            tags: Vec::new(),
            snapshot_type: kind.into(),
        }
    }

    #[test]
    fn selection_is_by_engine_id_and_every_tag() {
        let p = plan(
            "engines = [\"aurora-postgresql\"]\nclusters = \"^billing-\"\ncluster_tags = { env = \"prod\" }",
            "keep_last = 2",
        );
        assert!(selects(&p, &cluster("billing-pg", "aurora-postgresql", "prod")));
        assert!(!selects(&p, &cluster("billing-pg", "aurora-postgresql", "dev")), "tag differs");
        assert!(!selects(&p, &cluster("orders-pg", "aurora-postgresql", "prod")), "id does not match");
        assert!(!selects(&p, &cluster("billing-graph", "neptune", "prod")), "engine differs");
        let untagged = Cluster { tags: Vec::new(), ..cluster("billing-pg", "aurora-postgresql", "prod") };
        assert!(!selects(&p, &untagged), "a required tag is missing");
        assert!(selects(&plan("", "keep_last = 2"), &cluster("anything", "neptune", "dev")), "no filter: all");
    }

    #[test]
    fn the_source_is_the_newest_available_snapshot_of_the_selected_types() {
        let snaps = vec![
            snapshot("old-auto", "billing-pg", "automated", "available", 3),
            snapshot("new-manual", "billing-pg", "manual", "available", 1),
            snapshot("newest-creating", "billing-pg", "manual", "creating", 0),
            snapshot("other-cluster", "orders-pg", "manual", "available", 0),
        ];
        let both = plan("", "keep_last = 2");
        assert_eq!(newest_source(&both, "billing-pg", &snaps).map(|s| s.id.as_str()), Some("new-manual"));
        let auto = plan("snapshot_types = [\"automated\"]", "keep_last = 2");
        assert_eq!(newest_source(&auto, "billing-pg", &snaps).map(|s| s.id.as_str()), Some("old-auto"));
        assert_eq!(newest_source(&both, "nothing-here", &snaps), None);
        // A copy a plan made (tagged) is not a source.
        let mut copy = snapshot("a-plan-copy", "billing-pg", "manual", "available", 0);
        copy.tags.push((PLAN_TAG.into(), "nightly-dr".into()));
        let with_copy = [snaps, vec![copy]].concat();
        assert_eq!(newest_source(&both, "billing-pg", &with_copy).map(|s| s.id.as_str()), Some("new-manual"));
    }

    #[test]
    fn target_ids_are_deterministic_distinct_and_valid_identifiers() {
        let arn = "arn:aws:rds:us-east-1:123456789012:cluster-snapshot:rds:billing-pg-2026-12-03-03-00";
        let a = target_id("nightly-dr", "billing-pg", arn, "us-west-2/123456789012");
        assert_eq!(a, target_id("nightly-dr", "billing-pg", arn, "us-west-2/123456789012"));
        assert!(a.starts_with("nightly-dr-billing-pg-"), "{a}");
        assert_ne!(a, target_id("nightly-dr", "billing-pg", &format!("{arn}x"), "us-west-2/123456789012"));
        assert_ne!(a, target_id("nightly-dr", "billing-pg", arn, "eu-central-1/123456789012"));
        let long = target_id(&"p".repeat(63), &format!("{}--x-", "c".repeat(63)), arn, "d");
        for id in [a, long, target_id("p", "Weird_Cluster.Name-", arn, "d")] {
            assert!(snapgate_domain::rules::check_snapshot_identifier(&id).is_ok(), "{id}");
        }
    }

    fn copy(id: &str, days_ago: u32, status: &str) -> PlanCopy {
        PlanCopy {
            id: id.into(),
            cluster_id: "billing-pg".into(),
            recorded: true,
            tagged: true,
            status: status.into(),
            source_time: SystemTime::UNIX_EPOCH + DAY * 1000 - DAY * days_ago,
        }
    }

    fn names(v: Vec<&PlanCopy>) -> Vec<&str> {
        v.into_iter().map(|c| c.id.as_str()).collect()
    }

    const NOW_DAYS: u32 = 1000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + DAY * NOW_DAYS
    }

    #[test]
    fn keep_last_expires_the_oldest_of_the_plans_available_copies() {
        let r = Retention { keep_last: Some(2), max_age: None };
        let copies = [
            copy("c1", 4, "available"),
            copy("c2", 3, "available"),
            copy("c3", 2, "available"),
            copy("c4", 1, "available"),
        ];
        assert_eq!(names(expiries(&r, &copies, now())), ["c1", "c2"]);
    }

    #[test]
    fn retention_never_touches_what_the_plan_did_not_make_nor_the_newest_nor_a_copy_in_progress() {
        let r = Retention { keep_last: Some(1), max_age: Some(DAY) };
        let hand_tagged = PlanCopy { recorded: false, ..copy("tagged-by-hand", 9, "available") };
        let untagged = PlanCopy { tagged: false, ..copy("tag-removed", 8, "available") };
        let copies = [
            hand_tagged,
            untagged,
            copy("made", 7, "available"),
            copy("in-progress", 0, "copying"),
            copy("newest", 5, "available"),
        ];
        // The newest available copy stays although it is older than max_age and keep_last is 1.
        assert_eq!(names(expiries(&r, &copies, now())), ["made"]);
        let only = [copy("only", 30, "available")];
        assert!(expiries(&r, &only, now()).is_empty(), "the one copy there is, however old, stays");
    }

    #[test]
    fn max_age_or_keep_last_whichever_says_so() {
        let r = Retention { keep_last: Some(3), max_age: Some(DAY * 2) };
        let copies = [
            copy("a", 5, "available"),
            copy("b", 3, "available"),
            copy("c", 1, "available"),
            copy("d", 0, "available"),
        ];
        assert_eq!(names(expiries(&r, &copies, now())), ["a", "b"], "a by count and age, b by age");
        let keep_all = Retention { keep_last: None, max_age: None };
        assert!(expiries(&keep_all, &copies, now()).is_empty());
    }
}
