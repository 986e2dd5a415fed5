//! A plan as declared (the TOML file `snapgate plan apply` sends, the same shape as the API's
//! message) and its validation: every field checked at once, each broken rule a field violation
//! naming its place (`plan[0].copy[1].kms_key_id`), as a copy request's are.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use snapgate_domain::rules;
use snapgate_domain::{AccountId, Engine};

use super::schedule::Schedule;
use crate::copy::{Served, check_kms_key, tag_violations};
use crate::error::FieldViolation;

/// The tag every copy a plan makes carries, with the plan's name: retention touches only copies
/// that carry it and that the store records as the plan's.
pub(crate) const PLAN_TAG: &str = "snapgate:plan";
/// The start window when a plan does not say.
pub(crate) const DEFAULT_WINDOW_MINUTES: u32 = 60;
/// At most a week late.
const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// A regular expression over cluster ids is compiled within this size.
const REGEX_SIZE_LIMIT: usize = 1 << 16;
/// Plans a file holds at most, and destinations a plan.
const MAX_PLANS: usize = 100;
const MAX_DESTINATIONS: usize = 20;

/// A plan file: `[[plan]]` tables.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanFile {
    #[serde(default)]
    pub plan: Vec<PlanSpec>,
}

/// One plan as declared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanSpec {
    pub name: String,
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "default_window")]
    pub start_window_minutes: u32,
    pub rpo_hours: Option<u32>,
    pub select: Select,
    #[serde(default)]
    pub copy: Vec<CopyAction>,
}

/// Which clusters a plan copies, as AWS Backup selects resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Select {
    /// Default: the gateway's region.
    pub source_region: Option<String>,
    #[serde(default)]
    pub engines: Vec<String>,
    /// A regular expression over the cluster id.
    pub clusters: Option<String>,
    /// The cluster's tags; all must match.
    #[serde(default)]
    pub cluster_tags: BTreeMap<String, String>,
    /// Default: both.
    #[serde(default)]
    pub snapshot_types: Vec<String>,
}

/// A destination and its retention.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct CopyAction {
    pub destination_region: String,
    #[serde(default)]
    pub destination_account: String,
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub copy_tags: bool,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Copies this plan made, per cluster and destination; -1: never expire.
    pub keep_last: Option<i32>,
    pub max_age_days: Option<u32>,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn default_window() -> u32 {
    DEFAULT_WINDOW_MINUTES
}

/// How long a plan's copies are kept at a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    /// `None`: no bound by count.
    pub keep_last: Option<u32>,
    /// `None`: no bound by age.
    pub max_age: Option<Duration>,
}

impl Retention {
    /// Whether this retention never expires anything (`keep_last = -1`).
    pub(crate) fn keeps_all(&self) -> bool {
        self.keep_last.is_none() && self.max_age.is_none()
    }
}

/// A snapshot type a plan takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SnapshotType {
    Automated,
    Manual,
}

/// A destination of a valid plan.
#[derive(Debug, Clone)]
pub(crate) struct Destination {
    pub region: String,
    /// `None`: the gateway's own account.
    pub account: Option<String>,
    pub kms_key_id: Option<String>,
    pub copy_tags: bool,
    pub tags: Vec<(String, String)>,
    pub retention: Retention,
}

/// A plan whose every field holds.
#[derive(Debug, Clone)]
pub(crate) struct ValidPlan {
    pub name: String,
    pub schedule: Schedule,
    pub start_window: Duration,
    pub source_region: String,
    pub engines: Vec<Engine>,
    pub clusters: Option<regex::Regex>,
    pub cluster_tags: Vec<(String, String)>,
    pub snapshot_types: Vec<SnapshotType>,
    pub destinations: Vec<Destination>,
    /// As declared, for the store and the API.
    pub spec: PlanSpec,
}

/// Reads a plan file; a TOML error (an unknown field, a wrong type) is a violation of `file`.
pub(crate) fn parse_file(text: &str) -> Result<PlanFile, Vec<FieldViolation>> {
    toml::from_str(text).map_err(|e| vec![FieldViolation::new("file", e.message().to_owned())])
}

/// Reads a plan file as a client sends it: its TOML, and the rules of the file as a whole (at
/// least one plan, at most 100, names that differ). Each plan's own rules are the gateway's to
/// check, which knows the regions it serves.
pub(crate) fn read_file(text: &str) -> Result<Vec<PlanSpec>, Vec<FieldViolation>> {
    let file = parse_file(text)?;
    let violations = file_violations(&file);
    if violations.is_empty() { Ok(file.plan) } else { Err(violations) }
}

fn file_violations(file: &PlanFile) -> Vec<FieldViolation> {
    let mut violations = Vec::new();
    if file.plan.is_empty() {
        violations.push(FieldViolation::new("plan", "the file declares no plan ([[plan]] tables)"));
    }
    if file.plan.len() > MAX_PLANS {
        violations.push(FieldViolation::new("plan", format!("at most {MAX_PLANS} plans a file")));
    }
    let mut names = HashSet::new();
    for (i, spec) in file.plan.iter().enumerate() {
        if !names.insert(spec.name.to_ascii_lowercase()) {
            violations.push(FieldViolation::new(format!("plan[{i}].name"), format!("{} is declared twice", spec.name)));
        }
    }
    violations
}

/// Validates every plan of a file; the names must differ.
#[cfg(test)]
pub(crate) fn validate_file(
    file: &PlanFile,
    default_region: &str,
    served: &Served<'_>,
) -> Result<Vec<ValidPlan>, Vec<FieldViolation>> {
    let mut violations = file_violations(file);
    let mut valid = Vec::new();
    for (i, spec) in file.plan.iter().enumerate() {
        match validate(spec, &format!("plan[{i}]"), default_region, served) {
            Ok(plan) => valid.push(plan),
            Err(v) => violations.extend(v),
        }
    }
    if violations.is_empty() { Ok(valid) } else { Err(violations) }
}

/// Validates one plan; violations are named under `at` (`plan[0]`, or `plan` for the API).
pub(crate) fn validate(
    spec: &PlanSpec,
    at: &str,
    default_region: &str,
    served: &Served<'_>,
) -> Result<ValidPlan, Vec<FieldViolation>> {
    let mut v = Vec::new();
    let mut bad = |field: &str, rule: String| v.push(FieldViolation::new(format!("{at}.{field}"), rule));
    if let Err(rule) = check_name(&spec.name) {
        bad("name", rule);
    }
    // The pattern and the zone are checked apart, so both are named when both are wrong.
    let cron_ok = super::schedule::parse_cron(&spec.schedule).map_err(|rule| bad("schedule", rule)).is_ok();
    let zone_ok = super::schedule::parse_zone(&spec.timezone).map_err(|rule| bad("timezone", rule)).is_ok();
    let schedule = (cron_ok && zone_ok).then(|| Schedule::parse(&spec.schedule, &spec.timezone).ok()).flatten();
    if spec.start_window_minutes == 0 || spec.start_window_minutes > MAX_WINDOW_MINUTES {
        bad("start_window_minutes", format!("must be 1 to {MAX_WINDOW_MINUTES} minutes (a week)"));
    }
    if spec.rpo_hours == Some(0) || spec.rpo_hours.is_some_and(|h| h > 24 * 366) {
        bad("rpo_hours", "must be 1 to 8784 hours (a year)".to_owned());
    }

    let select = &spec.select;
    let source_region = select.source_region.clone().unwrap_or_else(|| default_region.to_owned());
    if let Some(rule) = served.check(&source_region) {
        bad("select.source_region", rule);
    }
    let mut engines = Vec::new();
    for (j, name) in select.engines.iter().enumerate() {
        let engine = Engine::parse(name);
        if engine.is_known() {
            engines.push(engine);
        } else {
            bad(
                &format!("select.engines[{j}]"),
                format!("{name:?} is not an engine of RDS, Neptune or DocumentDB (such as aurora-postgresql)"),
            );
        }
    }
    let clusters = match &select.clusters {
        None => None,
        Some(pattern) => match regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build() {
            Ok(re) => Some(re),
            Err(e) => {
                bad("select.clusters", format!("is not a regular expression: {e}"));
                None
            }
        },
    };
    for key in select.cluster_tags.keys() {
        if key.is_empty() {
            bad("select.cluster_tags", "a tag key must not be empty".to_owned());
        }
    }
    let mut snapshot_types = Vec::new();
    for (j, t) in select.snapshot_types.iter().enumerate() {
        let parsed = match t.as_str() {
            "automated" => SnapshotType::Automated,
            "manual" => SnapshotType::Manual,
            _ => {
                bad(&format!("select.snapshot_types[{j}]"), format!("{t:?} is neither \"automated\" nor \"manual\""));
                continue;
            }
        };
        if snapshot_types.contains(&parsed) {
            bad(&format!("select.snapshot_types[{j}]"), format!("{t} is listed twice"));
        }
        snapshot_types.push(parsed);
    }
    if snapshot_types.is_empty() {
        snapshot_types = vec![SnapshotType::Automated, SnapshotType::Manual];
    }

    if spec.copy.is_empty() {
        bad("copy", "a plan copies to at least one destination ([[plan.copy]])".to_owned());
    }
    if spec.copy.len() > MAX_DESTINATIONS {
        bad("copy", format!("at most {MAX_DESTINATIONS} destinations a plan"));
    }
    let mut destinations = Vec::new();
    let mut seen = HashSet::new();
    for (j, action) in spec.copy.iter().enumerate() {
        let here = format!("copy[{j}]");
        let region = &action.destination_region;
        if let Some(rule) = served.check(region) {
            bad(&format!("{here}.destination_region"), rule);
        } else if !snapgate_domain::region::same_partition(&source_region, region) {
            bad(
                &format!("{here}.destination_region"),
                format!("{region} is in another AWS partition than the source's {source_region}"),
            );
        }
        let account = (!action.destination_account.is_empty()).then(|| action.destination_account.clone());
        if let Some(Err(rule)) = account.as_deref().map(AccountId::parse) {
            bad(&format!("{here}.destination_account"), rule.to_string());
        }
        if !seen.insert((region.clone(), account.clone())) {
            bad(&format!("{here}.destination_region"), format!("{region} is a destination of this plan twice"));
        }
        if account.is_none() && *region == source_region {
            bad(
                &format!("{here}.destination_region"),
                "a copy into the source's own region and account is no disaster recovery".to_owned(),
            );
        }
        match action.kms_key_id.as_deref() {
            Some("") => bad(&format!("{here}.kms_key_id"), "must not be empty when given".to_owned()),
            Some(text) => {
                if let Err(rule) = check_kms_key(text, region) {
                    bad(&format!("{here}.kms_key_id"), rule);
                }
            }
            None => {}
        }
        let tags: Vec<(String, String)> = action.tags.iter().map(|(k, val)| (k.clone(), val.clone())).collect();
        for violation in tag_violations(&format!("{here}.tags"), &tags) {
            bad(&violation.field, violation.description);
        }
        if action.tags.contains_key(PLAN_TAG) {
            bad(&format!("{here}.tags"), format!("{PLAN_TAG} is the gateway's own tag on a plan's copies"));
        }
        let retention = match (action.keep_last, action.max_age_days) {
            (Some(-1), None) => Some(Retention { keep_last: None, max_age: None }),
            (Some(-1), Some(_)) => {
                bad(&format!("{here}.keep_last"), "-1 (keep every copy) contradicts max_age_days".to_owned());
                None
            }
            (None, None) => {
                bad(
                    &format!("{here}.keep_last"),
                    "retention needs a bound: keep_last, max_age_days, or keep_last = -1 to keep every copy (they count against the 100-snapshot quota)".to_owned(),
                );
                None
            }
            (Some(n), _) if !(1..=100).contains(&n) => {
                bad(&format!("{here}.keep_last"), "must be 1 to 100 copies, or -1 to keep every copy".to_owned());
                None
            }
            (_, Some(days)) if !(1..=3660).contains(&days) => {
                bad(&format!("{here}.max_age_days"), "must be 1 to 3660 days".to_owned());
                None
            }
            (keep, days) => Some(Retention {
                keep_last: keep.and_then(|n| u32::try_from(n).ok()),
                max_age: days.map(|d| Duration::from_secs(u64::from(d) * 86_400)),
            }),
        };
        if let Some(retention) = retention {
            destinations.push(Destination {
                region: region.clone(),
                account,
                kms_key_id: action.kms_key_id.clone(),
                copy_tags: action.copy_tags,
                tags,
                retention,
            });
        }
    }

    match schedule {
        Some(schedule) if v.is_empty() => Ok(ValidPlan {
            name: spec.name.to_ascii_lowercase(),
            schedule,
            start_window: Duration::from_secs(u64::from(spec.start_window_minutes) * 60),
            source_region,
            engines,
            clusters,
            cluster_tags: select.cluster_tags.iter().map(|(k, val)| (k.clone(), val.clone())).collect(),
            snapshot_types,
            destinations,
            spec: spec.clone(),
        }),
        _ => Err(v),
    }
}

/// A plan's name: 1 to 63 letters, digits or hyphens, first a letter, as AWS identifiers are.
fn check_name(name: &str) -> Result<(), String> {
    rules::check_snapshot_identifier(name)
        .map_err(|rule| format!("{rule} (1 to 63 letters, digits or hyphens; first a letter)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-central-1"];

    const GOOD: &str = r#"
[[plan]]
name = "nightly-dr"
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
start_window_minutes = 60
rpo_hours = 26
[plan.select]
source_region = "us-east-1"
engines = ["aurora-postgresql"]
clusters = "^billing-"
cluster_tags = { env = "prod" }
snapshot_types = ["automated", "manual"]
[[plan.copy]]
destination_region = "us-west-2"
destination_account = ""
kms_key_id = "alias/dr"
copy_tags = true
tags = { purpose = "dr" }
keep_last = 7
max_age_days = 30
"#;

    fn check(text: &str) -> Result<Vec<ValidPlan>, Vec<FieldViolation>> {
        let regions: Vec<String> = REGIONS.iter().map(|r| (*r).to_owned()).collect();
        let file = parse_file(text)?;
        validate_file(&file, "us-east-1", &Served(&regions))
    }

    #[test]
    fn the_issues_example_is_valid() {
        let plans = check(GOOD).unwrap();
        let plan = &plans[0];
        assert_eq!(plan.name, "nightly-dr");
        assert_eq!(plan.start_window, Duration::from_secs(3600));
        assert_eq!(plan.spec.rpo_hours, Some(26));
        assert_eq!(plan.engines, [Engine::parse("aurora-postgresql")]);
        assert!(plan.clusters.as_ref().unwrap().is_match("billing-pg"));
        assert_eq!(plan.cluster_tags, [("env".to_owned(), "prod".to_owned())]);
        let d = &plan.destinations[0];
        assert_eq!(
            (d.region.as_str(), d.account.as_deref(), d.kms_key_id.as_deref()),
            ("us-west-2", None, Some("alias/dr"))
        );
        assert_eq!(d.retention, Retention { keep_last: Some(7), max_age: Some(Duration::from_secs(30 * 86_400)) });
    }

    #[test]
    fn defaults_are_utc_an_hour_window_the_gateways_region_and_both_types() {
        let plans = check(
            "[[plan]]\nname = \"p\"\nschedule = \"*/5 * * * *\"\n[plan.select]\n[[plan.copy]]\ndestination_region = \"us-west-2\"\nkeep_last = -1\n",
        )
        .unwrap();
        let plan = &plans[0];
        assert_eq!(plan.spec.timezone, "UTC");
        assert_eq!(plan.start_window, Duration::from_secs(3600));
        assert_eq!(plan.source_region, "us-east-1");
        assert_eq!(plan.snapshot_types, [SnapshotType::Automated, SnapshotType::Manual]);
        assert!(plan.destinations[0].retention.keeps_all());
    }

    /// Replaces the line starting with `key =` in the good plan, or appends `line` to the table
    /// named by `table` when no such line exists.
    fn with(line: &str) -> String {
        let key = line.split('=').next().unwrap().trim();
        let mut replaced = false;
        let out: Vec<String> = GOOD
            .lines()
            .map(|l| {
                if !replaced && l.split('=').next().map(str::trim) == Some(key) && l.contains('=') {
                    replaced = true;
                    line.to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect();
        assert!(replaced, "no line {key} in the good plan");
        out.join("\n")
    }

    #[test]
    fn bad_plans_name_the_field_and_why() {
        let cases: Vec<(String, &str, &str)> = vec![
            (with("schedule = \"0 3 * *\""), "plan[0].schedule", "5-field"),
            (with("schedule = \"0 25 * * *\""), "plan[0].schedule", "not a valid cron"),
            (with("schedule = \"0 3 31 2 *\""), "plan[0].schedule", "matches no time"),
            (with("schedule = \"@daily\""), "plan[0].schedule", "5-field"),
            (with("timezone = \"Europe/Berlln\""), "plan[0].timezone", "IANA"),
            (with("timezone = \"CEST+2\""), "plan[0].timezone", "IANA"),
            (with("clusters = \"^billing-(\""), "plan[0].select.clusters", "regular expression"),
            (with("clusters = \"a{100000}\""), "plan[0].select.clusters", "regular expression"),
            (
                with("source_region = \"ap-south-9\""),
                "plan[0].select.source_region",
                "not a region this gateway serves",
            ),
            (with("source_region = \"mars\""), "plan[0].select.source_region", "region name"),
            (with("destination_region = \"eu-west-3\""), "plan[0].copy[0].destination_region", "serves"),
            (with("destination_region = \"us-east-1\""), "plan[0].copy[0].destination_region", "no disaster recovery"),
            (with("kms_key_id = \"\""), "plan[0].copy[0].kms_key_id", "empty"),
            (with("kms_key_id = \"not a key\""), "plan[0].copy[0].kms_key_id", ""),
            (
                with("kms_key_id = \"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab\""),
                "plan[0].copy[0].kms_key_id",
                "must name the destination region us-west-2",
            ),
            (with("name = \"Nightly DR!\""), "plan[0].name", "letters, digits or hyphens"),
            (with("name = \"9-nightly\""), "plan[0].name", "first a letter"),
            (with(&format!("name = \"{}\"", "n".repeat(64))), "plan[0].name", "63"),
            (with("keep_last = 0"), "plan[0].copy[0].keep_last", "1 to 100"),
            (with("keep_last = -2"), "plan[0].copy[0].keep_last", "1 to 100"),
            (with("keep_last = -1"), "plan[0].copy[0].keep_last", "contradicts max_age_days"),
            (with("max_age_days = 0"), "plan[0].copy[0].max_age_days", "1 to 3660"),
            (with("destination_account = \"12345\""), "plan[0].copy[0].destination_account", ""),
            (with("start_window_minutes = 0"), "plan[0].start_window_minutes", "1 to"),
            (with("rpo_hours = 0"), "plan[0].rpo_hours", "1 to"),
            (with("engines = [\"oracle-ee-cdb\"]"), "plan[0].select.engines[0]", "not an engine"),
            (with("snapshot_types = [\"shared\"]"), "plan[0].select.snapshot_types[0]", "neither"),
            (with("snapshot_types = [\"manual\", \"manual\"]"), "plan[0].select.snapshot_types[1]", "twice"),
            (with("tags = { \"snapgate:plan\" = \"other\" }"), "plan[0].copy[0].tags", "gateway's own tag"),
            (with("tags = { \"\" = \"x\" }"), "plan[0].copy[0].tags[0].key", "empty"),
            (GOOD.replace("keep_last = 7\nmax_age_days = 30\n", ""), "plan[0].copy[0].keep_last", "needs a bound"),
            (GOOD.replace("[[plan.copy]]", "[[plan.copy]]\nretention = 7"), "file", "unknown field"),
            (GOOD.replace("rpo_hours = 26", "rpo_hours = 26\nschedul = \"x\""), "file", "unknown field"),
            (with("start_window_minutes = \"sixty\""), "file", "invalid type"),
            (format!("{GOOD}\n{GOOD}"), "plan[1].name", "declared twice"),
            ("".to_owned(), "plan", "declares no plan"),
            (
                GOOD.replace(
                    "[[plan.copy]]",
                    "[[plan.copy]]\ndestination_region = \"us-west-2\"\nkeep_last = 1\n[[plan.copy]]",
                ),
                "plan[0].copy[1].destination_region",
                "twice",
            ),
        ];
        assert!(cases.len() >= 20);
        for (text, field, says) in cases {
            let violations = check(&text).err().unwrap_or_else(|| panic!("accepted, expected {field}: {text}"));
            assert!(
                violations.iter().any(|v| v.field == field && v.description.contains(says)),
                "expected {field} ({says}), got {violations:#?}"
            );
        }
    }
}
