//! `snapgate plan`: DR plans from the command line. `apply FILE` sends a plan file (TOML) to the
//! gateway (`--dry-run`: what a run now would copy and expire, nothing applied); `list`, `get`,
//! `delete`; `run NAME [--wait]` starts a run now; `runs NAME` shows what runs did; `status`
//! judges every cluster's newest DR copy against the plan's recovery point objective. Exit codes
//! as the copy commands': 0 done (or fresh), 1 a run not SUCCEEDED (or a stale recovery point),
//! 2 a plan file that does not read, 4 a wait that timed out, 5 no such plan, 6 refused.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use serde_json::json;
use snapgate_client::{Client, ClientError, pb};

use crate::client_cmd::{Connection, Output, Reporter, fail, parse_duration};

#[derive(Debug, Subcommand)]
pub(crate) enum PlanCommand {
    /// Create or replace the plans of a file (TOML, `[[plan]]` tables); you become their owner.
    Apply(ApplyArgs),
    /// The plans you may see.
    List(PlanConnection),
    /// One plan as applied.
    Get(PlanName),
    /// Delete a plan: it runs no more; its copies stay.
    Delete(PlanName),
    /// Run a plan now, outside its schedule.
    Run(RunArgs),
    /// A plan's runs, newest first, with what each did.
    Runs(RunsArgs),
    /// Every cluster's newest DR copy against the plan's recovery point objective.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PlanConnection {
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// The plan file ("-": standard input).
    file: PathBuf,
    /// Apply nothing: show what a run now would copy and expire.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub(crate) struct PlanName {
    name: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    name: String,
    /// Wait for the run to end; the exit code says how (0 SUCCEEDED, 1 otherwise).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (90s, 45m, 6h).
    #[arg(long, value_parser = parse_duration, default_value = "6h")]
    timeout: Duration,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub(crate) struct RunsArgs {
    name: String,
    /// Runs to show, 1 to 100.
    #[arg(long, default_value_t = 10)]
    limit: i32,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// One plan; every plan you may see when left out.
    name: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// How often `run --wait` looks at the run.
const WAIT_POLL: Duration = Duration::from_secs(2);

pub(crate) async fn run(command: PlanCommand) -> anyhow::Result<ExitCode> {
    match command {
        PlanCommand::Apply(args) => apply(args).await,
        PlanCommand::List(args) => {
            with_client(&args.connection, |client, output| async move {
                let plans = client.list_plans().await?;
                for plan in &plans {
                    match output {
                        Output::Json => println!("{}", plan_json(plan)),
                        Output::Text => println!(
                            "{}\t{} {}\towner {}\tnext run {}",
                            plan.name,
                            plan.schedule,
                            plan.timezone,
                            plan.owner,
                            time_text(plan.next_run_time.as_ref())
                        ),
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        PlanCommand::Get(args) => {
            with_client(&args.connection, |client, output| async move {
                let plan = client.get_plan(&args.name).await?;
                print_plan(&plan, output);
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        PlanCommand::Delete(args) => {
            with_client(&args.connection, |client, output| async move {
                let plan = client.delete_plan(&args.name).await?;
                match output {
                    Output::Json => println!("{}", json!({ "deleted": plan_json(&plan) })),
                    Output::Text => println!("deleted {} (its copies stay)", plan.name),
                }
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        PlanCommand::Run(args) => run_plan(args).await,
        PlanCommand::Runs(args) => {
            with_client(&args.connection, |client, output| async move {
                for run in client.plan_runs(&args.name, args.limit).await? {
                    print_run(&run, output);
                }
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        PlanCommand::Status(args) => status(args).await,
    }
}

/// Connects and runs `body`; a call's error is reported as the copy commands report theirs.
async fn with_client<F, Fut>(connection: &Connection, body: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client, Output) -> Fut,
    Fut: Future<Output = Result<ExitCode, ClientError>>,
{
    let reporter = Reporter::new(connection.output());
    let client = match connection.client().await {
        Ok(client) => client,
        Err(error) => return Ok(fail(&reporter, "snapgate", &error)),
    };
    match body(client, connection.output()).await {
        Ok(code) => Ok(code),
        Err(error) => Ok(fail(&reporter, "plan", &error)),
    }
}

async fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?
    };
    let plans = match snapgate_gateway::read_plan_file(&text) {
        Ok(plans) => plans,
        Err(violations) => {
            eprintln!("{}: the plan file does not read:", args.file.display());
            for (field, rule) in violations {
                eprintln!("  {field}: {rule}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let output = args.connection.output();
    let reporter = Reporter::new(output);
    let client = match args.connection.client().await {
        Ok(client) => client,
        Err(error) => return Ok(fail(&reporter, "snapgate", &error)),
    };
    let mut code = ExitCode::SUCCESS;
    for (i, plan) in plans.into_iter().enumerate() {
        let name = plan.name.clone();
        let done = if args.dry_run {
            match client.preview_plan(pb::PreviewPlanRequest { name: String::new(), plan: Some(plan) }).await {
                Ok(preview) => match stored(&client, &name).await {
                    Ok(before) => {
                        print_dry_run(&name, before.as_ref(), &preview, output);
                        Ok(())
                    }
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            }
        } else {
            client.apply_plan(plan).await.map(|applied| match output {
                Output::Json => println!("{}", json!({ "applied": plan_json(&applied) })),
                Output::Text => println!(
                    "applied {} (generation {}, owner {}, next run {})",
                    applied.name,
                    applied.generation,
                    applied.owner,
                    time_text(applied.next_run_time.as_ref())
                ),
            })
        };
        if let Err(error) = done {
            // The gateway names a plan's fields `plan.…`; the file's are `plan[i].…`.
            let error = match error {
                ClientError::Status(status) => ClientError::Status(in_file(&status, i)),
                other => other,
            };
            code = fail(&reporter, &name, &error);
        }
    }
    Ok(code)
}

/// The plan stored under `name`, if any.
async fn stored(client: &snapgate_client::Client, name: &str) -> Result<Option<pb::Plan>, ClientError> {
    match client.get_plan(name).await {
        Ok(plan) => Ok(Some(plan)),
        Err(ClientError::Status(status)) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// One field of a plan that an apply would change, as `select.engines` or `copy[0].keep_last`.
#[derive(Debug, PartialEq)]
struct Change {
    field: String,
    from: serde_json::Value,
    to: serde_json::Value,
}

/// What applying `proposed` would change in the plan stored as `before` (none: a new plan),
/// field by field; the gateway's own fields (owner, generation, times) are not the file's.
fn changes(before: &pb::Plan, proposed: &pb::Plan) -> Vec<Change> {
    fn spec(plan: &pb::Plan) -> serde_json::Value {
        let mut value = plan_json(plan);
        if let Some(fields) = value.as_object_mut() {
            for own in ["owner", "generation", "apply_time", "update_time", "next_run_time"] {
                fields.remove(own);
            }
        }
        value
    }
    fn walk(at: &str, from: &serde_json::Value, to: &serde_json::Value, out: &mut Vec<Change>) {
        use serde_json::Value;
        let field = |key: &str| if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
        match (from, to) {
            (Value::Object(a), Value::Object(b)) if !at.ends_with("tags") => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                for key in keys {
                    let none = Value::Null;
                    walk(&field(key), a.get(key).unwrap_or(&none), b.get(key).unwrap_or(&none), out);
                }
            }
            (Value::Array(a), Value::Array(b)) if a.iter().chain(b).any(Value::is_object) => {
                for i in 0..a.len().max(b.len()) {
                    let none = Value::Null;
                    walk(&format!("{at}[{i}]"), a.get(i).unwrap_or(&none), b.get(i).unwrap_or(&none), out);
                }
            }
            (a, b) if a != b => out.push(Change { field: at.to_owned(), from: a.clone(), to: b.clone() }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", &spec(before), &spec(proposed), &mut out);
    out
}

/// A dry run of one plan: what an apply would change in it, then what a run now would do.
fn print_dry_run(name: &str, before: Option<&pb::Plan>, preview: &pb::PlanPreview, output: Output) {
    let proposed = preview.plan.clone().unwrap_or_default();
    let changed = before.map(|before| changes(before, &proposed));
    match output {
        Output::Json => {
            let fields: Vec<_> =
                changed.iter().flatten().map(|c| json!({ "field": c.field, "from": c.from, "to": c.to })).collect();
            let mut line = preview_json(preview);
            line["new"] = json!(before.is_none());
            line["changes"] = json!(fields);
            println!("{line}");
        }
        Output::Text => {
            match changed {
                None => println!("{name}: a new plan (you would own it)"),
                Some(changes) if changes.is_empty() => println!("{name}: the plan is unchanged"),
                Some(changes) => {
                    println!("{name}: an apply would change:");
                    for c in changes {
                        println!("  {}: {} -> {}", c.field, c.from, c.to);
                    }
                }
            }
            print_preview_text(preview);
        }
    }
}

/// A refusal of the file's `i`th plan, its fields named as the file's (`plan[i].…`).
fn in_file(status: &tonic::Status, i: usize) -> tonic::Status {
    use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
    let at =
        |field: &str| field.strip_prefix("plan").map_or_else(|| field.to_owned(), |rest| format!("plan[{i}]{rest}"));
    let message = status.message().replace("plan.", &format!("plan[{i}]."));
    match status.get_error_details().bad_request() {
        Some(bad) => {
            let violations: Vec<FieldViolation> =
                bad.field_violations.iter().map(|v| FieldViolation::new(at(&v.field), v.description.clone())).collect();
            tonic::Status::with_error_details(status.code(), message, ErrorDetails::with_bad_request(violations))
        }
        None => tonic::Status::new(status.code(), message),
    }
}

async fn run_plan(args: RunArgs) -> anyhow::Result<ExitCode> {
    with_client(&args.connection, |client, output| async move {
        let started = client.run_plan(&args.name).await?;
        if !args.wait {
            print_run(&started, output);
            return Ok(ExitCode::SUCCESS);
        }
        if output == Output::Text {
            println!("run {} of {} started", started.id, started.plan);
        }
        let give_up = tokio::time::Instant::now() + args.timeout;
        loop {
            let runs = client.plan_runs(&args.name, 100).await?;
            if let Some(run) = runs.iter().find(|r| r.id == started.id)
                && run.state() != pb::plan_run::State::Running
            {
                print_run(run, output);
                return Ok(if run.state() == pb::plan_run::State::Succeeded {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                });
            }
            if tokio::time::Instant::now() + WAIT_POLL > give_up {
                match output {
                    Output::Json => {
                        println!("{}", json!({ "run": started.id, "outcome": "timed_out", "exit_code": 4 }))
                    }
                    Output::Text => eprintln!("run {}: still running after {:?}", started.id, args.timeout),
                }
                return Ok(ExitCode::from(4));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    })
    .await
}

/// The recovery point of every cluster at every destination, from each plan's latest run that
/// ended, judged against its `rpo_hours`.
async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    with_client(&args.connection, |client, output| async move {
        let plans = match &args.name {
            Some(name) => vec![client.get_plan(name).await?],
            None => client.list_plans().await?,
        };
        let mut stale_any = false;
        for plan in &plans {
            let runs = client.plan_runs(&plan.name, 100).await?;
            let latest =
                runs.iter().find(|r| !matches!(r.state(), pb::plan_run::State::Running | pb::plan_run::State::Missed));
            let rpo = plan.rpo_hours.map(|h| Duration::from_secs(u64::try_from(h).unwrap_or(0) * 3600));
            let Some(run) = latest else {
                stale_any = true;
                match output {
                    Output::Json => println!("{}", json!({ "plan": plan.name, "status": "NO_RUN" })),
                    Output::Text => println!("{}: no run has ended yet", plan.name),
                }
                continue;
            };
            for row in status_rows(run, rpo, SystemTime::now()) {
                stale_any |= row.stale;
                match output {
                    Output::Json => println!(
                        "{}",
                        json!({
                            "plan": plan.name,
                            "run": run.id,
                            "cluster": row.cluster,
                            "destination": row.destination,
                            "status": if row.stale { "STALE" } else { "FRESH" },
                            "recovery_point_age_seconds": row.age.map(|a| a.as_secs()),
                            "rpo_seconds": rpo.map(|r| r.as_secs()),
                            "detail": row.detail,
                        })
                    ),
                    Output::Text => println!(
                        "{}\t{}\t{}\t{}\t{}",
                        plan.name,
                        row.cluster,
                        row.destination,
                        if row.stale { "STALE" } else { "FRESH" },
                        row.age.map_or(row.detail.clone(), |a| format!("recovery point {} old", age_text(a)))
                    ),
                }
            }
        }
        Ok(if stale_any { ExitCode::from(1) } else { ExitCode::SUCCESS })
    })
    .await
}

/// One cluster at one destination, as `plan status` judges it.
#[derive(Debug, PartialEq)]
struct StatusRow {
    cluster: String,
    destination: String,
    age: Option<Duration>,
    stale: bool,
    detail: String,
}

/// The status of each cluster and destination a run looked at: fresh when its copy there is
/// available and holds a recovery point within the objective (any age without one).
fn status_rows(run: &pb::PlanRun, rpo: Option<Duration>, now: SystemTime) -> Vec<StatusRow> {
    use pb::plan_run_item::Outcome as O;
    let mut rows: Vec<StatusRow> = Vec::new();
    for item in &run.items {
        if item.cluster_id.is_empty() || matches!(item.outcome(), O::Expired | O::WouldExpire | O::Copied) {
            continue;
        }
        let good = matches!(item.outcome(), O::Available | O::UpToDate);
        let age = item
            .recovery_point_time
            .as_ref()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .map(|t| now.duration_since(t).unwrap_or_default());
        let stale = !good || matches!((age, rpo), (Some(age), Some(rpo)) if age > rpo);
        let detail = if good { String::new() } else { format!("{:?}: {}", item.outcome(), item.detail) };
        let row = StatusRow {
            cluster: item.cluster_id.clone(),
            destination: item.destination.clone(),
            age: good.then_some(age).flatten(),
            stale,
            detail,
        };
        // A later item of the same cluster and destination (the copy's end) says more.
        match rows.iter_mut().find(|r| r.cluster == row.cluster && r.destination == row.destination) {
            Some(existing) if existing.stale || !row.stale => *existing = row,
            Some(_) => {}
            None => rows.push(row),
        }
    }
    rows
}

fn print_plan(plan: &pb::Plan, output: Output) {
    match output {
        Output::Json => println!("{}", plan_json(plan)),
        Output::Text => {
            println!(
                "{}: {} ({}), owner {}, generation {}",
                plan.name, plan.schedule, plan.timezone, plan.owner, plan.generation
            );
            println!("  next run {}", time_text(plan.next_run_time.as_ref()));
            if let Some(select) = &plan.select {
                println!(
                    "  select: region {}, engines {:?}, clusters {:?}, tags {:?}, types {:?}",
                    select.source_region, select.engines, select.clusters, select.cluster_tags, select.snapshot_types
                );
            }
            for copy in &plan.copy {
                println!(
                    "  copy to {}/{}: kms {:?}, keep_last {:?}, max_age_days {:?}",
                    copy.destination_account,
                    copy.destination_region,
                    copy.kms_key_id,
                    copy.keep_last,
                    copy.max_age_days
                );
            }
        }
    }
}

fn print_run(run: &pb::PlanRun, output: Output) {
    match output {
        Output::Json => println!("{}", run_json(run)),
        Output::Text => {
            println!(
                "run {} of {}: {:?} ({}, started {}){}",
                run.id,
                run.plan,
                run.state(),
                run.cause,
                time_text(run.start_time.as_ref()),
                if run.reason.is_empty() { String::new() } else { format!(": {}", run.reason) }
            );
            for item in &run.items {
                println!("  {}", item_text(item));
            }
        }
    }
}

fn preview_json(preview: &pb::PlanPreview) -> serde_json::Value {
    let name = preview.plan.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
    let items: Vec<_> = preview.items.iter().map(item_json).collect();
    let quotas: Vec<_> = preview.quotas.iter().map(quota_json).collect();
    json!({ "preview": name, "items": items, "quotas": quotas })
}

fn print_preview_text(preview: &pb::PlanPreview) {
    let name = preview.plan.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
    println!("{name}: a run now would (nothing applied):");
    for item in &preview.items {
        println!("  {}", item_text(item));
    }
    for quota in &preview.quotas {
        println!("  {}", quota_text(quota));
    }
}

/// A destination's manual-snapshot quota, as a dry run shows it.
fn quota_text(q: &pb::PlanQuota) -> String {
    let (Some(used), Some(max)) = (q.used, q.max) else {
        return format!("quota\t{}\tunknown ({})", q.destination, q.detail);
    };
    let mut text = format!(
        "quota\t{}\t{used} of {max} manual cluster snapshots; a run copies {} and expires {}: {} left while copying, {} after",
        q.destination,
        q.would_copy,
        q.would_expire,
        q.left_while_copying.unwrap_or_default(),
        q.left_after_run.unwrap_or_default()
    );
    if let Some(short) = q.left_while_copying.filter(|left| *left < 0) {
        text.push_str(&format!(" (AWS would refuse {} of the copies: SnapshotQuotaExceeded)", -short));
    }
    text
}

fn quota_json(q: &pb::PlanQuota) -> serde_json::Value {
    json!({
        "destination": q.destination,
        "used": q.used,
        "max": q.max,
        "would_copy": q.would_copy,
        "would_expire": q.would_expire,
        "left_while_copying": q.left_while_copying,
        "left_after_run": q.left_after_run,
        "detail": q.detail,
    })
}

fn item_text(item: &pb::PlanRunItem) -> String {
    let mut text = format!("{:?}\t{}\t{}", item.outcome(), item.cluster_id, item.destination);
    if !item.copy.is_empty() {
        text.push_str(&format!("\t{}", item.copy));
    }
    if !item.detail.is_empty() {
        text.push_str(&format!("\t({})", item.detail));
    }
    text
}

fn time_text(t: Option<&prost_types::Timestamp>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| format!("{t}"))
}

fn age_text(age: Duration) -> String {
    let s = age.as_secs();
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

fn plan_json(p: &pb::Plan) -> serde_json::Value {
    let select = p.select.clone().unwrap_or_default();
    json!({
        "name": p.name,
        "schedule": p.schedule,
        "timezone": p.timezone,
        "start_window_minutes": p.start_window_minutes,
        "rpo_hours": p.rpo_hours,
        "select": {
            "source_region": select.source_region,
            "engines": select.engines,
            "clusters": select.clusters,
            "cluster_tags": select.cluster_tags,
            "snapshot_types": select.snapshot_types,
        },
        "copy": p.copy.iter().map(|c| json!({
            "destination_region": c.destination_region,
            "destination_account": c.destination_account,
            "kms_key_id": c.kms_key_id,
            "copy_tags": c.copy_tags,
            "tags": c.tags,
            "keep_last": c.keep_last,
            "max_age_days": c.max_age_days,
        })).collect::<Vec<_>>(),
        "owner": p.owner,
        "generation": p.generation,
        "apply_time": p.apply_time.as_ref().map(|t| t.to_string()),
        "update_time": p.update_time.as_ref().map(|t| t.to_string()),
        "next_run_time": p.next_run_time.as_ref().map(|t| t.to_string()),
    })
}

fn item_json(i: &pb::PlanRunItem) -> serde_json::Value {
    json!({
        "cluster": i.cluster_id,
        "source": i.source_snapshot_arn,
        "destination": i.destination,
        "copy": i.copy,
        "outcome": format!("{:?}", i.outcome()),
        "detail": i.detail,
        "recovery_point_time": i.recovery_point_time.as_ref().map(|t| t.to_string()),
    })
}

fn run_json(r: &pb::PlanRun) -> serde_json::Value {
    json!({
        "id": r.id,
        "plan": r.plan,
        "state": format!("{:?}", r.state()),
        "cause": r.cause,
        "slot_time": r.slot_time.as_ref().map(|t| t.to_string()),
        "start_time": r.start_time.as_ref().map(|t| t.to_string()),
        "finish_time": r.finish_time.as_ref().map(|t| t.to_string()),
        "reason": r.reason,
        "items": r.items.iter().map(item_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::plan_run_item::Outcome as O;

    fn plan(keep_last: i32, engines: &[&str]) -> pb::Plan {
        pb::Plan {
            name: "nightly-dr".into(),
            schedule: "0 3 * * *".into(),
            select: Some(pb::PlanSelect {
                engines: engines.iter().map(|e| (*e).to_owned()).collect(),
                ..Default::default()
            }),
            copy: vec![pb::PlanCopyAction {
                destination_region: "us-west-2".into(),
                tags: [("purpose".to_owned(), "dr".to_owned())].into(),
                keep_last: Some(keep_last),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_dry_run_names_each_field_an_apply_would_change() {
        let stored = pb::Plan { owner: "alice".into(), generation: 3, ..plan(7, &["aurora-postgresql"]) };
        assert_eq!(changes(&stored, &plan(7, &["aurora-postgresql"])), [], "owner and generation are not the file's");
        let mut proposed = plan(5, &["aurora-postgresql", "neptune"]);
        proposed.copy.push(pb::PlanCopyAction {
            destination_region: "eu-west-1".into(),
            keep_last: Some(2),
            ..Default::default()
        });
        proposed.copy[0].tags.insert("tier".into(), "gold".into());
        let fields: Vec<String> = changes(&stored, &proposed).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["copy[0].keep_last", "copy[0].tags", "copy[1]", "select.engines"],
            "a field each, a new destination whole"
        );
        let keep = changes(&stored, &plan(5, &["aurora-postgresql"]));
        assert_eq!((keep[0].from.clone(), keep[0].to.clone()), (json!(7), json!(5)));
    }

    fn at(secs_ago: u64, now: SystemTime) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp::from(now - Duration::from_secs(secs_ago)))
    }

    fn item(cluster: &str, outcome: O, recovery: Option<prost_types::Timestamp>) -> pb::PlanRunItem {
        pb::PlanRunItem {
            cluster_id: cluster.into(),
            destination: "123456789012/us-west-2".into(),
            outcome: outcome as i32,
            recovery_point_time: recovery,
            ..Default::default()
        }
    }

    #[test]
    fn a_recovery_point_is_fresh_within_the_objective_and_stale_beyond_or_without_a_copy() {
        let now = SystemTime::now();
        let hour = 3600;
        let run = pb::PlanRun {
            items: vec![
                item("fresh", O::Copied, at(hour, now)),
                item("fresh", O::Available, at(hour, now)),
                item("old", O::UpToDate, at(30 * hour, now)),
                item("refused", O::Refused, None),
                item("none", O::NoSnapshot, None),
                item("", O::Failed, None),
                item("fresh", O::Expired, None),
            ],
            ..Default::default()
        };
        let rows = status_rows(&run, Some(Duration::from_secs(26 * hour)), now);
        let verdicts: Vec<(&str, bool)> = rows.iter().map(|r| (r.cluster.as_str(), r.stale)).collect();
        assert_eq!(verdicts, [("fresh", false), ("old", true), ("refused", true), ("none", true)]);
        // Without an objective, any available copy is fresh.
        let rows = status_rows(&run, None, now);
        assert!(!rows.iter().find(|r| r.cluster == "old").unwrap().stale);
    }
}
