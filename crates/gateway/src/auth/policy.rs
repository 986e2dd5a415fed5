//! Authorization with Cedar: the shipped schema, the policy set (validated against it at
//! start and on every reload; a reload that fails keeps the last good set), and the decision,
//! a pure function of (caller, action, snapshot, context). Deny by default.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};

use super::Caller;
use crate::config::AuthzSettings;
use crate::metrics::Metrics;
use crate::reload::{Reload, WatchedFiles};
use snapgate_domain::{ClusterSnapshot, Engine};

/// The schema every policy is validated against; `snapgate policy schema` prints it.
pub const SCHEMA_TEXT: &str = include_str!("../../../../deploy/policies/snapgate.cedarschema");

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // The schema ships with the binary and a unit test parses it, so this cannot fail at run time.
    Schema::from_cedarschema_str(SCHEMA_TEXT).expect("the shipped Cedar schema parses").0
});

pub fn schema() -> &'static Schema {
    &SCHEMA
}

/// The schema without the plan entity and actions (the parts between `plans:begin` and
/// `plans:end`): a policy that validates against it but not against the whole schema was
/// written for snapshots with an unconstrained action (`resource.family` read with no `has`),
/// and stays valid; at run time it never matches a plan (its evaluation error skips it).
static SNAPSHOT_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    let mut text = String::new();
    let mut inside = false;
    for line in SCHEMA_TEXT.lines() {
        match line.trim() {
            l if l.starts_with("// plans:begin") => inside = true,
            "// plans:end" => inside = false,
            _ if inside => {}
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    // A unit test parses it.
    Schema::from_cedarschema_str(&text).expect("the shipped Cedar schema without plans parses").0
});

/// The actions of the schema, one per RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    CopyClusterSnapshot,
    GetCopy,
    WatchCopy,
    CancelCopy,
    ListCopies,
    ApplyPlan,
    GetPlan,
    ListPlans,
    DeletePlan,
    PreviewPlan,
    RunPlan,
    ListPlanRuns,
    /// A plan's retention deleting one of its own copies (no RPC: decided as the owner at run time).
    ExpireCopy,
}

/// Every action of the schema.
const ACTIONS: [Action; 13] = [
    Action::CopyClusterSnapshot,
    Action::GetCopy,
    Action::WatchCopy,
    Action::CancelCopy,
    Action::ListCopies,
    Action::ApplyPlan,
    Action::GetPlan,
    Action::ListPlans,
    Action::DeletePlan,
    Action::PreviewPlan,
    Action::RunPlan,
    Action::ListPlanRuns,
    Action::ExpireCopy,
];

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::CopyClusterSnapshot => "CopyClusterSnapshot",
            Action::GetCopy => "GetCopy",
            Action::WatchCopy => "WatchCopy",
            Action::CancelCopy => "CancelCopy",
            Action::ListCopies => "ListCopies",
            Action::ApplyPlan => "ApplyPlan",
            Action::GetPlan => "GetPlan",
            Action::ListPlans => "ListPlans",
            Action::DeletePlan => "DeletePlan",
            Action::PreviewPlan => "PreviewPlan",
            Action::RunPlan => "RunPlan",
            Action::ListPlanRuns => "ListPlanRuns",
            Action::ExpireCopy => "ExpireCopy",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        ACTIONS.into_iter().find(|a| a.name() == name)
    }

    /// Whether the action's resource is a plan (the others decide on a snapshot).
    pub fn on_plan(self) -> bool {
        matches!(
            self,
            Action::ApplyPlan
                | Action::GetPlan
                | Action::ListPlans
                | Action::DeletePlan
                | Action::PreviewPlan
                | Action::RunPlan
                | Action::ListPlanRuns
        )
    }

    fn uid(self) -> EntityUid {
        entity_uid("Action", self.name())
    }
}

/// What a copy asks for beyond its source: the context of a CopyClusterSnapshot decision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CopyContext {
    pub destination_account: String,
    pub destination_region: String,
    pub target: String,
    pub kms_key: Option<String>,
    pub tags: Vec<(String, String)>,
    pub copy_tags: bool,
    pub cross_region: bool,
    pub cross_account: bool,
    /// The DR plan whose run makes the copy.
    pub plan: Option<String>,
}

/// The outcome of one decision, with the policies behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The policies that decided: the permits that allowed, or the forbids that denied (none
    /// when nothing permitted: deny by default).
    pub policies: Vec<String>,
    /// Policies that could not be evaluated for this request (they count as not matching).
    pub errors: Vec<String>,
}

/// Parses and validates a policy set. Policies are named by their `@id("...")` annotation,
/// else by position (`policy0`, ...). The error names the policy and what is wrong with it.
pub fn parse_policies(text: &str) -> Result<PolicySet, String> {
    let parsed = PolicySet::from_str(text).map_err(|e| describe_parse_error(text, &e))?;
    if parsed.templates().next().is_some() {
        return Err("policy templates (?principal, ?resource) are not supported; write static policies".into());
    }
    let mut policies = PolicySet::new();
    for policy in parsed.policies() {
        let named = match policy.annotation("id") {
            Some(id) => policy.new_id(PolicyId::new(id)),
            None => policy.clone(),
        };
        let id = named.id().to_string();
        policies.add(named).map_err(|e| format!("policy '{id}': {e}"))?;
    }
    let result = Validator::new(schema().clone()).validate(&policies, ValidationMode::Strict);
    if !result.validation_passed() {
        let snapshots_only = Validator::new(SNAPSHOT_SCHEMA.clone()).validate(&policies, ValidationMode::Strict);
        let failing: std::collections::HashSet<String> =
            snapshots_only.validation_errors().map(|e| e.policy_id().to_string()).collect();
        let errors: Vec<String> = result
            .validation_errors()
            .filter(|e| failing.contains(&e.policy_id().to_string()))
            .map(|e| format!("policy '{}': {e}", e.policy_id()))
            .collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
    }
    Ok(policies)
}

fn describe_parse_error(text: &str, error: &cedar_policy::ParseErrors) -> String {
    use miette::Diagnostic;
    let position = error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| {
            let before = &text[..label.offset().min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    format!("the policies do not parse{position}: {error}")
}

/// Decides one call. Pure: no I/O, no clock.
pub fn decide(
    policies: &PolicySet,
    caller: &Caller,
    action: Action,
    snapshot: &ClusterSnapshot,
    copy: Option<&CopyContext>,
) -> Decision {
    match evaluate(policies, caller, action, snapshot, copy) {
        Ok(decision) => decision,
        // Facts that do not fit the schema (which would be a gateway bug) deny.
        Err(error) => Decision { allowed: false, policies: Vec::new(), errors: vec![error] },
    }
}

/// Decides whether a ListCopies call shows one copy: the resource is the copy (the snapshot
/// it makes), and the context says whether the caller asked for it. Pure: no I/O, no clock.
pub fn decide_list(
    policies: &PolicySet,
    caller: &Caller,
    snapshot: &ClusterSnapshot,
    requested_by_self: bool,
) -> Decision {
    let context = vec![("requested_by_self".to_owned(), RestrictedExpression::new_bool(requested_by_self))];
    evaluate_in(policies, caller, Action::ListCopies, snapshot, context).unwrap_or_else(|error| Decision {
        allowed: false,
        policies: Vec::new(),
        errors: vec![error],
    })
}

/// Decides an action on a plan (`owner` empty for a plan that does not exist yet). Pure.
pub fn decide_plan(policies: &PolicySet, caller: &Caller, action: Action, plan: &str, owner: &str) -> Decision {
    let run = || -> Result<Decision, String> {
        if !action.on_plan() {
            return Err(format!("{} does not decide on a plan", action.name()));
        }
        let resource = entity_uid("Plan", plan);
        let entity = Entity::new_with_tags(
            resource.clone(),
            [("name".to_owned(), string(plan)), ("owner".to_owned(), string(owner))],
            [],
            [],
        )
        .map_err(|e| format!("plan entity: {e}"))?;
        authorize(policies, caller, action, resource, entity, Vec::new())
    };
    run().unwrap_or_else(|error| Decision { allowed: false, policies: Vec::new(), errors: vec![error] })
}

/// Decides whether the run of `plan` may delete its old copy `snapshot`, as the plan's owner.
/// Pure.
pub fn decide_expire(policies: &PolicySet, owner: &Caller, snapshot: &ClusterSnapshot, plan: &str) -> Decision {
    let context = vec![("plan".to_owned(), string(plan))];
    evaluate_in(policies, owner, Action::ExpireCopy, snapshot, context).unwrap_or_else(|error| Decision {
        allowed: false,
        policies: Vec::new(),
        errors: vec![error],
    })
}

fn evaluate(
    policies: &PolicySet,
    caller: &Caller,
    action: Action,
    snapshot: &ClusterSnapshot,
    copy: Option<&CopyContext>,
) -> Result<Decision, String> {
    let context = match (action, copy) {
        (Action::CopyClusterSnapshot, Some(copy)) => copy_context(copy),
        (Action::CopyClusterSnapshot, None) => return Err("CopyClusterSnapshot needs its context".into()),
        (Action::ListCopies, _) => return Err("ListCopies is decided with decide_list".into()),
        (Action::ExpireCopy, _) => return Err("ExpireCopy is decided with decide_expire".into()),
        (a, _) if a.on_plan() => return Err(format!("{} is decided with decide_plan", a.name())),
        _ => Vec::new(),
    };
    evaluate_in(policies, caller, action, snapshot, context)
}

fn evaluate_in(
    policies: &PolicySet,
    caller: &Caller,
    action: Action,
    snapshot: &ClusterSnapshot,
    context: Vec<(String, RestrictedExpression)>,
) -> Result<Decision, String> {
    let resource = entity_uid("Snapshot", &snapshot.arn);
    let entity = snapshot_entity(snapshot, resource.clone())?;
    authorize(policies, caller, action, resource, entity, context)
}

fn authorize(
    policies: &PolicySet,
    caller: &Caller,
    action: Action,
    resource: EntityUid,
    resource_entity: Entity,
    context: Vec<(String, RestrictedExpression)>,
) -> Result<Decision, String> {
    let principal = entity_uid("Caller", &caller.id);
    // Entities are built directly rather than from JSON and checked by the request's schema
    // validation below: conforming them to the schema again costs ten times the decision.
    let entities = Entities::from_entities([caller_entity(caller, principal.clone())?, resource_entity], None)
        .map_err(|e| format!("entities: {e}"))?;
    let context = Context::from_pairs(context).map_err(|e| format!("context: {e}"))?;
    let request = Request::new(principal, action.uid(), resource, context, Some(schema()))
        .map_err(|e| format!("request: {e}"))?;
    let response = Authorizer::new().is_authorized(&request, policies, &entities);
    Ok(Decision {
        allowed: response.decision() == CedarDecision::Allow,
        policies: response.diagnostics().reason().map(ToString::to_string).collect(),
        errors: response.diagnostics().errors().map(ToString::to_string).collect(),
    })
}

fn entity_uid(kind: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        cedar_policy::EntityTypeName::from_str(&format!("Snapgate::{kind}")).expect("a valid type name"),
        cedar_policy::EntityId::new(id),
    )
}

fn string(value: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(value.to_owned())
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> RestrictedExpression {
    RestrictedExpression::new_set(values.into_iter().map(string))
}

fn caller_entity(caller: &Caller, uid: EntityUid) -> Result<Entity, String> {
    let mut attrs = vec![
        ("authn".to_owned(), string(caller.method.as_str())),
        ("groups".to_owned(), strings(caller.groups.iter().map(String::as_str))),
    ];
    if let Some(team) = &caller.team {
        attrs.push(("team".to_owned(), string(team)));
    }
    if let Some(issuer) = &caller.issuer {
        attrs.push(("issuer".to_owned(), string(issuer)));
    }
    Entity::new_with_tags(uid, attrs, [], []).map_err(|e| format!("caller entity: {e}"))
}

fn snapshot_entity(s: &ClusterSnapshot, uid: EntityUid) -> Result<Entity, String> {
    let mut attrs = vec![
        ("arn".to_owned(), string(&s.arn)),
        ("account".to_owned(), string(&s.account)),
        ("region".to_owned(), string(&s.region)),
        ("id".to_owned(), string(&s.id)),
        ("engine".to_owned(), string(&s.engine)),
        ("family".to_owned(), string(Engine::parse(&s.engine).family().code())),
        ("cluster".to_owned(), string(&s.cluster_id)),
        ("encrypted".to_owned(), RestrictedExpression::new_bool(s.encrypted)),
        ("snapshot_type".to_owned(), string(&s.snapshot_type)),
    ];
    if let Some(kms) = &s.kms_key_id {
        attrs.push(("kms_key".to_owned(), string(kms)));
    }
    let tags = s.tags.iter().map(|(k, v)| (k.clone(), string(v)));
    Entity::new_with_tags(uid, attrs, [], tags).map_err(|e| format!("snapshot entity: {e}"))
}

fn copy_context(c: &CopyContext) -> Vec<(String, RestrictedExpression)> {
    let tags: Vec<String> = c.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut context = vec![
        ("destination_account".to_owned(), string(&c.destination_account)),
        ("destination_region".to_owned(), string(&c.destination_region)),
        ("target".to_owned(), string(&c.target)),
        ("tags".to_owned(), strings(tags.iter().map(String::as_str))),
        ("tag_keys".to_owned(), strings(c.tags.iter().map(|(k, _)| k.as_str()))),
        ("copy_tags".to_owned(), RestrictedExpression::new_bool(c.copy_tags)),
        ("cross_region".to_owned(), RestrictedExpression::new_bool(c.cross_region)),
        ("cross_account".to_owned(), RestrictedExpression::new_bool(c.cross_account)),
    ];
    if let Some(kms) = &c.kms_key {
        context.push(("kms_key".to_owned(), string(kms)));
    }
    if let Some(plan) = &c.plan {
        context.push(("plan".to_owned(), string(plan)));
    }
    context
}

/// Context-free decisions kept at most.
const DECISIONS_KEPT: u64 = 50_000;

/// The policies in force, swapped whole on reload so a decision never sees half a set.
pub(crate) struct PolicyStore {
    /// The policy file and its times; none for inline policies.
    file: Option<(PathBuf, WatchedFiles)>,
    current: ArcSwap<PolicySet>,
    interval: Duration,
    metrics: Arc<Metrics>,
    /// Bumped at every reload that changed the policies in force: open streams re-decide.
    generation: crate::bell::Generation,
    /// Decisions without a context (GetCopy, WatchCopy, CancelCopy), by everything they were
    /// made from: the same caller reading the same snapshot as last observed is decided once.
    decisions: moka::sync::Cache<DecisionKey, Decision>,
}

/// Everything a context-free decision depends on: the policies' generation, every attribute of
/// the caller and of the snapshot that the entities carry, and the action. Nothing is hashed
/// away: two keys are equal only when the decisions must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    generation: u64,
    action: &'static str,
    caller: (String, &'static str, Vec<String>, Option<String>, Option<String>),
    snapshot: SnapshotFacts,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SnapshotFacts {
    arn: String,
    account: String,
    region: String,
    id: String,
    engine: String,
    cluster: String,
    encrypted: bool,
    snapshot_type: String,
    kms_key: Option<String>,
    tags: Vec<(String, String)>,
}

impl DecisionKey {
    fn new(generation: u64, caller: &Caller, action: Action, s: &ClusterSnapshot) -> DecisionKey {
        DecisionKey {
            generation,
            action: action.name(),
            caller: (
                caller.id.clone(),
                caller.method.as_str(),
                caller.groups.clone(),
                caller.team.clone(),
                caller.issuer.clone(),
            ),
            snapshot: SnapshotFacts {
                arn: s.arn.clone(),
                account: s.account.clone(),
                region: s.region.clone(),
                id: s.id.clone(),
                engine: s.engine.clone(),
                cluster: s.cluster_id.clone(),
                encrypted: s.encrypted,
                snapshot_type: s.snapshot_type.clone(),
                kms_key: s.kms_key_id.clone(),
                tags: s.tags.clone(),
            },
        }
    }
}

impl PolicyStore {
    /// Loads the policies; a set that does not parse or validate stops start.
    pub(crate) fn new(settings: &AuthzSettings, metrics: Arc<Metrics>) -> anyhow::Result<Arc<PolicyStore>> {
        let text = match (&settings.policy_file, &settings.policies) {
            (Some(path), _) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("authz.policy_file: {}: {e}", path.display()))?,
            (None, Some(text)) => text.clone(),
            (None, None) => String::new(),
        };
        let policies = parse_policies(&text).map_err(|e| anyhow::anyhow!("authz: {e}"))?;
        let file = settings.policy_file.clone().map(|path| (path.clone(), WatchedFiles::new(vec![path])));
        tracing::info!(policies = policies.num_of_policies(), "authorization policies loaded");
        Ok(Arc::new(PolicyStore {
            file,
            current: ArcSwap::from_pointee(policies),
            interval: Duration::from_secs(settings.reload_secs),
            metrics,
            generation: crate::bell::Generation::default(),
            decisions: moka::sync::Cache::builder()
                .max_capacity(DECISIONS_KEPT)
                .time_to_live(Duration::from_secs(600))
                // A snapshot nobody reads or watches for a minute has its decisions forgotten.
                .time_to_idle(Duration::from_secs(60))
                .build(),
        }))
    }

    /// Changes whenever a reload puts new policies in force.
    pub(crate) fn reloads(&self) -> &crate::bell::Generation {
        &self.generation
    }

    /// Decides with the policies in force whether a ListCopies call shows a copy, counting
    /// the outcome.
    pub(crate) fn decide_list(&self, caller: &Caller, snapshot: &ClusterSnapshot, requested_by_self: bool) -> Decision {
        let decision = decide_list(&self.current.load(), caller, snapshot, requested_by_self);
        self.metrics.authz_decision(Action::ListCopies.name(), decision.allowed);
        decision
    }

    /// Decides an action on a plan with the policies in force, counting the outcome.
    pub(crate) fn decide_plan(&self, caller: &Caller, action: Action, plan: &str, owner: &str) -> Decision {
        let decision = decide_plan(&self.current.load(), caller, action, plan, owner);
        self.metrics.authz_decision(action.name(), decision.allowed);
        decision
    }

    /// Decides a plan's expiry of one of its copies, as its owner, counting the outcome.
    pub(crate) fn decide_expire(&self, owner: &Caller, snapshot: &ClusterSnapshot, plan: &str) -> Decision {
        let decision = decide_expire(&self.current.load(), owner, snapshot, plan);
        self.metrics.authz_decision(Action::ExpireCopy.name(), decision.allowed);
        decision
    }

    /// Decides with the policies in force, counting the outcome.
    pub(crate) fn decide(
        &self,
        caller: &Caller,
        action: Action,
        snapshot: &ClusterSnapshot,
        copy: Option<&CopyContext>,
    ) -> Decision {
        let span = tracing::info_span!(
            "authorize",
            otel.name = "authorize",
            authz.action = action.name(),
            authz.decision = tracing::field::Empty,
            authz.policies = tracing::field::Empty,
        );
        let _entered = span.enter();
        // The generation is read before the policies: a decision made across a reload is
        // filed under the old generation, which no lookup uses again.
        let decision = if copy.is_none() {
            let key = DecisionKey::new(self.generation.now(), caller, action, snapshot);
            let policies = self.current.load();
            self.decisions.get_with(key, || decide(&policies, caller, action, snapshot, None))
        } else {
            decide(&self.current.load(), caller, action, snapshot, copy)
        };
        if !span.is_disabled() {
            span.record("authz.decision", if decision.allowed { "allow" } else { "deny" });
            span.record("authz.policies", decision.policies.join(",").as_str());
        }
        for error in &decision.errors {
            tracing::warn!(action = action.name(), %error, "a policy could not be evaluated");
        }
        self.metrics.authz_decision(action.name(), decision.allowed);
        decision
    }
}

impl Reload for PolicyStore {
    fn interval(&self) -> Duration {
        self.interval
    }

    /// Re-reads the policy file when it changed (or when `force`, on SIGHUP). A file that
    /// fails keeps the policies in force and says why.
    fn reload(&self, force: bool) {
        let Some((path, files)) = &self.file else { return };
        if !files.changed(force) {
            return;
        }
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|t| parse_policies(&t));
        match loaded {
            Ok(policies) => {
                tracing::info!(policies = policies.num_of_policies(), file = %path.display(), "authorization policies reloaded");
                self.current.store(Arc::new(policies));
                self.metrics.policy_reload(true);
                self.generation.bump();
            }
            Err(error) => {
                tracing::error!(%error, file = %path.display(), "policy reload failed; keeping the policies in force");
                self.metrics.policy_reload(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn caller(id: &str, team: Option<&str>, groups: &[&str]) -> Caller {
        Caller {
            id: id.into(),
            method: AuthMethod::Jwt,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            team: team.map(str::to_owned),
            issuer: Some("https://idp".into()),
        }
    }

    fn snapshot(account: &str, region: &str, engine: &str, team_tag: &str) -> ClusterSnapshot {
        ClusterSnapshot {
            arn: format!("arn:aws:rds:{region}:{account}:cluster-snapshot:snap1"),
            id: "snap1".into(),
            region: region.into(),
            account: account.into(),
            cluster_id: "orders".into(),
            engine: engine.into(),
            encrypted: true,
            kms_key_id: Some(format!("arn:aws:kms:{region}:{account}:key/1111")),
            tags: vec![("team".into(), team_tag.into())],
            snapshot_type: "manual".into(),
            ..ClusterSnapshot::default()
        }
    }

    fn context(region: &str, kms: Option<&str>) -> CopyContext {
        CopyContext {
            destination_account: "111111111111".into(),
            destination_region: region.into(),
            target: "copy".into(),
            kms_key: kms.map(str::to_owned),
            tags: vec![("owner".into(), "payments".into())],
            copy_tags: true,
            cross_region: region != "us-east-1",
            cross_account: false,
            plan: None,
        }
    }

    const POLICIES: &str = r#"
        @id("team-copies-own-clusters")
        permit(principal, action == Snapgate::Action::"CopyClusterSnapshot", resource)
        when { principal has team && resource.hasTag("team") && resource.getTag("team") == principal.team
               && resource.account == context.destination_account && !context.cross_region };

        @id("backup-cross-region")
        permit(principal, action == Snapgate::Action::"CopyClusterSnapshot", resource)
        when { principal.groups.contains("backup") && context has kms_key
               && context.kms_key == "alias/backup" };

        @id("no-neptune")
        forbid(principal, action, resource) when { resource.family == "neptune" };
    "#;

    #[test]
    fn the_shipped_schema_parses_with_and_without_plans() {
        assert!(SNAPSHOT_SCHEMA.action_entities().is_ok());
        let _ = schema();
    }

    #[test]
    fn the_shipped_policies_validate() {
        for file in ["examples.cedar", "dev.cedar"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/policies").join(file);
            let set =
                parse_policies(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(set.num_of_policies() > 0);
        }
    }

    #[test]
    fn the_examples_decide_the_common_cases() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/policies/examples.cedar"))
                .unwrap();
        let p = parse_policies(&text).unwrap();
        let own = snapshot("111111111111", "us-east-1", "aurora-postgresql", "payments");
        let team = caller("svc-payments", Some("payments"), &[]);
        let backup = caller("svc-backup", None, &["backup-service"]);
        let copy = Action::CopyClusterSnapshot;
        assert!(decide(&p, &team, copy, &own, Some(&context("us-east-1", None))).allowed);
        assert!(!decide(&p, &team, copy, &own, Some(&context("eu-west-1", Some("alias/snapgate-backup")))).allowed);
        assert!(decide(&p, &backup, copy, &own, Some(&context("eu-west-1", Some("alias/snapgate-backup")))).allowed);
        assert!(!decide(&p, &backup, copy, &own, Some(&context("eu-west-1", Some("alias/other")))).allowed);
        let plain = ClusterSnapshot { encrypted: false, kms_key_id: None, ..own.clone() };
        let d = decide(&p, &backup, copy, &plain, Some(&context("eu-west-1", Some("alias/snapgate-backup"))));
        assert_eq!(d.policies, vec!["no-unencrypted-copies-across-regions"]);
        assert!(decide(&p, &team, Action::WatchCopy, &own, None).allowed);
        assert!(!decide(&p, &caller("svc-orders", Some("orders"), &[]), Action::WatchCopy, &own, None).allowed);
    }

    #[test]
    fn plans_are_decided_on_the_plan_and_expiries_on_the_copy_with_the_plan_in_context() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/policies/examples.cedar"))
                .unwrap();
        let p = parse_policies(&text).unwrap();
        let operator = caller("alice", None, &["platform-operators"]);
        let team = caller("svc-payments", Some("payments"), &[]);
        for action in [Action::ApplyPlan, Action::RunPlan, Action::ListPlanRuns, Action::DeletePlan] {
            assert!(decide_plan(&p, &operator, action, "nightly-dr", "alice").allowed, "{action:?}");
            assert!(!decide_plan(&p, &team, action, "nightly-dr", "alice").allowed, "{action:?}");
        }
        let backup = caller("svc-backup", None, &["backup-service"]);
        let mut copy = snapshot("111111111111", "us-west-2", "aurora-postgresql", "payments");
        assert!(!decide_expire(&p, &backup, &copy, "nightly-dr").allowed, "untagged: not the plan's");
        copy.tags.push(("snapgate:plan".into(), "nightly-dr".into()));
        assert!(decide_expire(&p, &backup, &copy, "nightly-dr").allowed);
        assert!(!decide_expire(&p, &backup, &copy, "another-plan").allowed, "another plan's copy");
        assert!(!decide(&p, &backup, Action::ExpireCopy, &copy, None).allowed, "only decide_expire decides it");
    }

    #[test]
    fn policies_written_before_plans_stay_valid_and_never_match_a_plan() {
        let old = r#"
            @id("all-but-neptune") permit(principal, action, resource) when { resource.family != "neptune" };
            @id("tagged") forbid(principal, action, resource) when { resource.hasTag("frozen") };
        "#;
        let p = parse_policies(old).unwrap();
        let anyone = caller("svc", None, &[]);
        let copy = snapshot("111111111111", "us-east-1", "aurora-postgresql", "payments");
        assert!(decide(&p, &anyone, Action::GetCopy, &copy, None).allowed);
        let plan = decide_plan(&p, &anyone, Action::ApplyPlan, "nightly-dr", "");
        assert!(!plan.allowed, "a snapshot's permit is no plan's");
        // Still refused: a policy broken for snapshots too.
        assert!(parse_policies(r#"permit(principal, action, resource) when { resource.colour == "red" };"#).is_err());
    }

    #[test]
    fn decisions_follow_account_region_engine_kms_and_tags() {
        let p = parse_policies(POLICIES).unwrap();
        let team = caller("svc-payments", Some("payments"), &[]);
        let backup = caller("svc-backup", None, &["backup"]);
        let own = snapshot("111111111111", "us-east-1", "aurora-postgresql", "payments");
        let copy = Action::CopyClusterSnapshot;

        let d = decide(&p, &team, copy, &own, Some(&context("us-east-1", None)));
        assert!(d.allowed);
        assert_eq!(d.policies, vec!["team-copies-own-clusters"]);
        // Another team's snapshot, another region, another account: denied by default.
        let other = snapshot("111111111111", "us-east-1", "aurora-postgresql", "orders");
        assert!(!decide(&p, &team, copy, &other, Some(&context("us-east-1", None))).allowed);
        assert!(!decide(&p, &team, copy, &own, Some(&context("eu-west-1", None))).allowed);
        let foreign = snapshot("222222222222", "us-east-1", "aurora-postgresql", "payments");
        assert!(!decide(&p, &team, copy, &foreign, Some(&context("us-east-1", None))).allowed);
        // The backup service crosses regions only with the backup key.
        assert!(decide(&p, &backup, copy, &own, Some(&context("eu-west-1", Some("alias/backup")))).allowed);
        assert!(!decide(&p, &backup, copy, &own, Some(&context("eu-west-1", Some("alias/other")))).allowed);
        assert!(!decide(&p, &backup, copy, &own, Some(&context("eu-west-1", None))).allowed);
        // A forbid wins and is named.
        let neptune = snapshot("111111111111", "us-east-1", "neptune", "payments");
        let d = decide(&p, &team, copy, &neptune, Some(&context("us-east-1", None)));
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["no-neptune"]);
        // Nothing permits watching here.
        let d = decide(&p, &team, Action::WatchCopy, &own, None);
        assert!(!d.allowed && d.policies.is_empty());
    }

    #[test]
    fn bad_policies_are_refused_with_their_id() {
        let err = parse_policies(r#"@id("typo") permit(principal, action, resource) when { resource.enigne == "x" };"#)
            .unwrap_err();
        assert!(err.contains("typo") && err.contains("enigne"), "{err}");
        let err = parse_policies("permit(principal, action, resource) when { ").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = parse_policies(r#"permit(principal == ?principal, action, resource);"#).unwrap_err();
        assert!(err.contains("templates"), "{err}");
        assert!(parse_policies("").unwrap().is_empty());
    }

    #[test]
    fn kept_decisions_follow_the_facts_and_the_policies() {
        let dir = std::env::temp_dir().join(format!("snapgate-decisions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("policies.cedar");
        let watch_own = r#"permit(principal, action == Snapgate::Action::"WatchCopy", resource)
            when { principal has team && resource.hasTag("team") && resource.getTag("team") == principal.team };"#;
        std::fs::write(&file, watch_own).unwrap();
        let settings = AuthzSettings { policy_file: Some(file.clone()), policies: None, reload_secs: 1 };
        let store = PolicyStore::new(&settings, Metrics::new()).unwrap();
        let alice = caller("alice", Some("payments"), &[]);
        let ours = snapshot("111111111111", "us-east-1", "aurora-postgresql", "payments");
        let theirs = snapshot("111111111111", "us-east-1", "aurora-postgresql", "orders");
        for _ in 0..3 {
            assert!(store.decide(&alice, Action::WatchCopy, &ours, None).allowed);
            // A tag is part of what is kept: another team's snapshot is decided on its own.
            assert!(!store.decide(&alice, Action::WatchCopy, &theirs, None).allowed);
        }
        // A team is too.
        assert!(!store.decide(&caller("alice", Some("orders"), &[]), Action::WatchCopy, &ours, None).allowed);
        // New policies: nothing kept from the old ones is used.
        std::fs::write(&file, format!("{watch_own}\nforbid(principal, action, resource);")).unwrap();
        store.reload(true);
        assert!(!store.decide(&alice, Action::WatchCopy, &ours, None).allowed);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
