//! `snapgate policy`: validate policy files against the shipped schema, print the schema, and
//! ask "would this caller be allowed this?" offline, with the decision and the policies behind it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use snapgate_domain::{Arn, ClusterSnapshot};
use snapgate_gateway::policy::{self, Action, CopyContext};
use snapgate_gateway::{AuthMethod, Caller};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the Cedar schema policies are validated against.
    Schema,
    /// Parse and validate policy files against the schema; exits 1 naming the policy and the error.
    Validate(ValidateArgs),
    /// Decide one call offline: exits 0 when allowed, 3 when denied.
    Check(Box<CheckArgs>),
}

#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// Cedar policy files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The Cedar policy file to decide with.
    #[arg(long)]
    pub policies: PathBuf,
    /// The caller's id (a certificate's SPIFFE id, DNS name or CN; a token's sub).
    #[arg(long)]
    pub principal: String,
    /// How the caller authenticated: mtls, jwt or static_token.
    #[arg(long, default_value = "jwt")]
    pub authn: String,
    /// The caller's groups (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    #[arg(long)]
    pub team: Option<String>,
    /// An action of the schema: CopyClusterSnapshot, GetCopy, WatchCopy, CancelCopy, ListCopies,
    /// ApplyPlan, GetPlan, ListPlans, DeletePlan, PreviewPlan, RunPlan, ListPlanRuns, ExpireCopy.
    #[arg(long)]
    pub action: String,
    /// The snapshot's ARN (the source of a copy, or the copy itself); not for plan actions.
    #[arg(long)]
    pub snapshot_arn: Option<String>,
    /// The snapshot's engine, as AWS names it (aurora-postgresql, neptune, docdb, ...).
    #[arg(long, default_value = "")]
    pub engine: String,
    /// The DR plan: the resource of plan actions, the context of ExpireCopy and of a plan's
    /// CopyClusterSnapshot.
    #[arg(long)]
    pub plan: Option<String>,
    /// Plan actions: the plan's owner (empty: a plan not applied yet).
    #[arg(long, default_value = "")]
    pub plan_owner: String,
    /// ListCopies: whether the caller asked for the copy.
    #[arg(long)]
    pub requested_by_self: bool,
    /// The snapshot's cluster identifier.
    #[arg(long, default_value = "")]
    pub cluster: String,
    #[arg(long)]
    pub encrypted: bool,
    /// The snapshot's KMS key ARN, when encrypted.
    #[arg(long)]
    pub snapshot_kms_key: Option<String>,
    /// manual, automated or shared.
    #[arg(long, default_value = "manual")]
    pub snapshot_type: String,
    /// A tag of the snapshot, key=value (repeatable).
    #[arg(long = "snapshot-tag", value_parser = key_value)]
    pub snapshot_tags: Vec<(String, String)>,
    /// Copies: the destination region [default: the snapshot's].
    #[arg(long)]
    pub destination_region: Option<String>,
    /// Copies: the destination account [default: the snapshot's].
    #[arg(long)]
    pub destination_account: Option<String>,
    /// Copies: the target snapshot identifier.
    #[arg(long, default_value = "copy")]
    pub target: String,
    /// Copies: the KMS key requested.
    #[arg(long)]
    pub kms_key: Option<String>,
    /// Copies: a requested tag, key=value (repeatable).
    #[arg(long = "tag", value_parser = key_value)]
    pub tags: Vec<(String, String)>,
    #[arg(long)]
    pub copy_tags: bool,
    /// Print the decision as JSON.
    #[arg(long)]
    pub json: bool,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("'{text}' is not key=value"))
}

pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Schema => {
            print!("{}", policy::SCHEMA_TEXT);
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Validate(args) => {
            let mut failed = false;
            for file in &args.files {
                let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                match policy::parse_policies(&text) {
                    Ok(set) => println!("{}: ok, {} policies", file.display(), set.num_of_policies()),
                    Err(error) => {
                        failed = true;
                        eprintln!("{}: {error}", file.display());
                    }
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        PolicyCommand::Check(args) => check(*args),
    }
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(&args.policies).with_context(|| format!("reading {}", args.policies.display()))?;
    let policies = policy::parse_policies(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.policies.display()))?;
    let action = Action::parse(&args.action).ok_or_else(|| {
        anyhow::anyhow!(
            "--action: '{}' is not an action of the schema (snapgate policy schema lists them)",
            args.action
        )
    })?;
    let method = match args.authn.as_str() {
        "mtls" => AuthMethod::Mtls,
        "jwt" => AuthMethod::Jwt,
        "static_token" => AuthMethod::StaticToken,
        other => anyhow::bail!("--authn: '{other}' is not mtls, jwt or static_token"),
    };
    let caller = Caller { id: args.principal, method, groups: args.groups, team: args.team, issuer: None };
    if action.on_plan() {
        let plan = args.plan.ok_or_else(|| anyhow::anyhow!("--plan: {} decides on a plan; name it", action.name()))?;
        let decision = policy::decide_plan(&policies, &caller, action, &plan, &args.plan_owner);
        return Ok(report(&decision, action, &caller, &format!("plan {plan}"), args.json));
    }
    let snapshot_arn = args
        .snapshot_arn
        .ok_or_else(|| anyhow::anyhow!("--snapshot-arn: {} decides on a snapshot; give its ARN", action.name()))?;
    let arn = Arn::parse(&snapshot_arn)
        .filter(|a| a.cluster_snapshot_id().is_some())
        .ok_or_else(|| anyhow::anyhow!("--snapshot-arn: '{snapshot_arn}' is not a DB cluster snapshot ARN"))?;
    let snapshot = ClusterSnapshot {
        arn: snapshot_arn.clone(),
        id: arn.cluster_snapshot_id().unwrap_or_default().to_owned(),
        region: arn.region.clone(),
        account: arn.account.clone(),
        cluster_id: args.cluster,
        engine: args.engine,
        encrypted: args.encrypted,
        kms_key_id: args.snapshot_kms_key,
        tags: args.snapshot_tags,
        snapshot_type: args.snapshot_type,
        ..ClusterSnapshot::default()
    };
    let decision = match action {
        Action::ExpireCopy => {
            let plan = args.plan.ok_or_else(|| anyhow::anyhow!("--plan: ExpireCopy is decided for a plan; name it"))?;
            policy::decide_expire(&policies, &caller, &snapshot, &plan)
        }
        Action::ListCopies => policy::decide_list(&policies, &caller, &snapshot, args.requested_by_self),
        _ => {
            let context = (action == Action::CopyClusterSnapshot).then(|| {
                let destination_region = args.destination_region.unwrap_or_else(|| arn.region.clone());
                let destination_account = args.destination_account.unwrap_or_else(|| arn.account.clone());
                CopyContext {
                    cross_region: destination_region != arn.region,
                    cross_account: destination_account != arn.account,
                    destination_account,
                    destination_region,
                    target: args.target,
                    kms_key: args.kms_key,
                    tags: args.tags,
                    copy_tags: args.copy_tags,
                    plan: args.plan,
                }
            });
            policy::decide(&policies, &caller, action, &snapshot, context.as_ref())
        }
    };
    Ok(report(&decision, action, &caller, &snapshot.arn, args.json))
}

/// Prints a decision; exit 0 when allowed, 3 when denied.
fn report(decision: &policy::Decision, action: Action, caller: &Caller, resource: &str, json: bool) -> ExitCode {
    if json {
        let out = serde_json::json!({
            "decision": if decision.allowed { "allow" } else { "deny" },
            "policies": decision.policies,
            "errors": decision.errors,
        });
        println!("{out}");
    } else {
        let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
        let why = match (decision.allowed, decision.policies.is_empty()) {
            (false, true) => "no policy permits it (deny by default)".to_owned(),
            (true, _) => format!("permitted by {}", decision.policies.join(", ")),
            (false, false) => format!("forbidden by {}", decision.policies.join(", ")),
        };
        println!("{verdict} {} by {} on {resource}: {why}", action.name(), caller.id);
        for error in &decision.errors {
            println!("  policy error: {error}");
        }
    }
    if decision.allowed { ExitCode::SUCCESS } else { ExitCode::from(3) }
}
