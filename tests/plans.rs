//! DR plans end to end, against the emulator: a plan applied over gRPC copies the newest snapshot
//! of every selected cluster (and nothing else), a run repeated makes no copy twice, retention
//! expires only the plan's own old copies and never the newest, a permission withdrawn stops the
//! plan's copies with the reason recorded, and bad plans are refused field by field.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::gateway::{self, Gateway};
use common::*;
use snapgate_emulator::{EmulatorConfig, EmulatorHandle};
use snapgate_gateway::config::StoreSettings;
use snapgate_proto::{self as pb, plan_run::State as RunState, plan_run_item::Outcome};

const PLAN: &str = "nightly-dr";

fn emulator_config() -> EmulatorConfig {
    // Clusters of 10 GiB copy in a fraction of a second.
    EmulatorConfig { copy_gib_per_sec: 100.0, ..quiet_config() }
}

fn east(emu: &EmulatorHandle) -> aws_sdk_rds::Client {
    rds_client(&emu.endpoint_url(), "us-east-1", "AKIDTEST")
}

fn west(emu: &EmulatorHandle) -> aws_sdk_rds::Client {
    rds_client(&emu.endpoint_url(), "us-west-2", "AKIDTEST")
}

async fn create_cluster(emu: &EmulatorHandle, id: &str, engine: &str, env: &str) {
    east(emu)
        .create_db_cluster()
        .db_cluster_identifier(id)
        .engine(engine)
        .master_username("admin")
        .tags(aws_sdk_rds::types::Tag::builder().key("env").value(env).build())
        .send()
        .await
        .unwrap();
}

async fn snapshot(emu: &EmulatorHandle, cluster: &str, id: &str) {
    east(emu)
        .create_db_cluster_snapshot()
        .db_cluster_identifier(cluster)
        .db_cluster_snapshot_identifier(id)
        .send()
        .await
        .unwrap();
}

/// The manual snapshots in us-west-2, as (id, cluster, tags).
async fn west_snapshots(emu: &EmulatorHandle) -> Vec<(String, String, Vec<(String, String)>)> {
    let out = west(emu).describe_db_cluster_snapshots().snapshot_type("manual").send().await.unwrap();
    out.db_cluster_snapshots()
        .iter()
        .map(|s| {
            let tags = s
                .tag_list()
                .iter()
                .map(|t| (t.key().unwrap_or_default().to_owned(), t.value().unwrap_or_default().to_owned()))
                .collect();
            (
                s.db_cluster_snapshot_identifier().unwrap_or_default().to_owned(),
                s.db_cluster_identifier().unwrap_or_default().to_owned(),
                tags,
            )
        })
        .collect()
}

fn plan_message(keep_last: i32) -> pb::Plan {
    pb::Plan {
        name: PLAN.into(),
        schedule: "0 3 * * *".into(),
        timezone: "Europe/Berlin".into(),
        rpo_hours: Some(26),
        select: Some(pb::PlanSelect {
            source_region: "us-east-1".into(),
            engines: vec!["aurora-postgresql".into()],
            cluster_tags: [("env".to_owned(), "prod".to_owned())].into(),
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

async fn started(
    emu: &EmulatorHandle,
    store: StoreSettings,
    tune: impl FnOnce(&mut snapgate_gateway::config::Settings),
) -> Gateway {
    let mut settings = gateway::settings();
    settings.store = store;
    settings.jobs.dispatch_interval_ms = 100;
    settings.plans.follow_interval_ms = 100;
    // Runs are asked for; the schedule's 03:00 is not what these tests wait for.
    settings.plans.scheduler = false;
    tune(&mut settings);
    gateway::start(settings, &emu.endpoint_url(), "AKIDTEST").await
}

/// Runs the plan now and waits (bounded) for the run to end.
async fn run_to_end(client: &mut gateway::Client) -> pb::PlanRun {
    let run = client.run_plan(pb::RunPlanRequest { name: PLAN.into() }).await.unwrap().into_inner();
    assert_eq!(run.state(), RunState::Running);
    end_of(client, &run.id).await
}

/// Waits (bounded) for the run `id` to end, as `client`'s gateway lists it.
async fn end_of(client: &mut gateway::Client, id: &str) -> pb::PlanRun {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let runs = client
            .list_plan_runs(pb::ListPlanRunsRequest { name: PLAN.into(), page_size: 100 })
            .await
            .unwrap()
            .into_inner()
            .runs;
        let this = runs.into_iter().find(|r| r.id == id).unwrap();
        if this.state() != RunState::Running {
            return this;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run ends within 60 s: {this:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the plan's preview shows `outcome` within 20 s (a policy file reloaded meanwhile).
async fn previews(client: &gateway::Client, outcome: Outcome) -> bool {
    eventually(Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let request = pb::PreviewPlanRequest { name: PLAN.into(), plan: None };
            let preview = client.preview_plan(request).await.unwrap().into_inner();
            preview.items.iter().any(|i| i.outcome() == outcome)
        }
    })
    .await
}

fn outcomes(run: &pb::PlanRun, outcome: Outcome) -> Vec<String> {
    let mut clusters: Vec<String> =
        run.items.iter().filter(|i| i.outcome() == outcome).map(|i| i.cluster_id.clone()).collect();
    clusters.sort();
    clusters
}

const PROD: [&str; 4] = ["billing-pg-1", "billing-pg-2", "billing-pg-3", "billing-pg-4"];

async fn a_plan_copies_the_newest_of_what_it_selects_and_expires_only_its_own(store: StoreSettings) {
    let emu = emulator_with(emulator_config()).await;
    for id in PROD {
        create_cluster(&emu, id, "aurora-postgresql", "prod").await;
    }
    create_cluster(&emu, "billing-pg-dev", "aurora-postgresql", "dev").await;
    create_cluster(&emu, "graph", "neptune", "prod").await;
    let mut gw = started(&emu, store, |_| {}).await;

    // A copy someone made by hand, tagged as if the plan had made it: never the plan's to expire.
    let mut hand = copy_req("arn:aws:rds:us-east-1:123456789012:cluster-snapshot:placeholder", "hand-made-dr-copy");
    let automated =
        east(&emu).describe_db_cluster_snapshots().db_cluster_identifier("billing-pg-1").send().await.unwrap();
    hand.source_snapshot = automated.db_cluster_snapshots()[0].db_cluster_snapshot_arn().unwrap().to_owned();
    hand.destination_region = "us-west-2".into();
    hand.tags = tags(&[("snapgate:plan", PLAN)]);
    gw.client.copy_cluster_snapshot(hand).await.unwrap();

    let applied =
        gw.client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan_message(2)) }).await.unwrap().into_inner();
    assert_eq!((applied.owner.as_str(), applied.generation), ("tester", 1));
    assert!(applied.next_run_time.is_some(), "the next 03:00 in Berlin");
    let same = gw.client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan_message(2)) }).await.unwrap().into_inner();
    assert_eq!(same.generation, 1, "applying the same plan again changes nothing");

    // The preview: the four production Aurora clusters, nothing else, nothing changed.
    let calls_before = emu.emulator.calls().get("CopyDBClusterSnapshot");
    let preview =
        gw.client.preview_plan(pb::PreviewPlanRequest { name: PLAN.into(), plan: None }).await.unwrap().into_inner();
    assert_eq!(outcomes(&pb::PlanRun { items: preview.items.clone(), ..Default::default() }, Outcome::WouldCopy), PROD);
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), calls_before, "a preview copies nothing");

    emu.emulator.reset_calls();
    let first = run_to_end(&mut gw.client).await;
    assert_eq!(first.state(), RunState::Succeeded, "{first:?}");
    assert_eq!(outcomes(&first, Outcome::Copied), PROD);
    assert_eq!(outcomes(&first, Outcome::Available), PROD);
    let calls = emu.emulator.calls();
    assert_eq!(calls.get("CopyDBClusterSnapshot"), 4);
    assert_eq!(calls.get("DescribeDBClusters"), 1, "one page of clusters");

    // Again with nothing new: every copy is there, none is made twice.
    emu.emulator.reset_calls();
    let again = run_to_end(&mut gw.client).await;
    assert_eq!(again.state(), RunState::Succeeded);
    assert_eq!(outcomes(&again, Outcome::UpToDate), PROD);
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), 0);

    // Two more nights of snapshots: keep_last = 2 expires the first night's copies, one a cluster.
    for round in 2..=3 {
        for id in PROD {
            snapshot(&emu, id, &format!("{id}-night-{round}")).await;
        }
        // The preview names every expiry before a run makes one.
        let preview = gw
            .client
            .preview_plan(pb::PreviewPlanRequest { name: PLAN.into(), plan: None })
            .await
            .unwrap()
            .into_inner();
        let would = outcomes(&pb::PlanRun { items: preview.items, ..Default::default() }, Outcome::WouldExpire);
        assert_eq!(would, if round == 2 { Vec::<String>::new() } else { PROD.map(str::to_owned).to_vec() });
        let run = run_to_end(&mut gw.client).await;
        assert_eq!(run.state(), RunState::Succeeded, "{run:?}");
        assert_eq!(outcomes(&run, Outcome::Copied), PROD);
        let expired = outcomes(&run, Outcome::Expired);
        assert_eq!(expired, if round == 2 { Vec::<String>::new() } else { PROD.map(str::to_owned).to_vec() });
    }
    assert_eq!(emu.emulator.calls().get("DeleteDBClusterSnapshot"), 4, "one expiry a cluster");

    let west = west_snapshots(&emu).await;
    for id in PROD {
        let plans: Vec<_> = west
            .iter()
            .filter(|(snap, cluster, tags)| {
                cluster == id
                    && snap != "hand-made-dr-copy"
                    && tags.iter().any(|(k, v)| k == "snapgate:plan" && v == PLAN)
            })
            .collect();
        assert_eq!(plans.len(), 2, "{id} keeps its last two copies: {plans:?}");
        assert!(plans.iter().all(|(_, _, tags)| tags.iter().any(|(k, v)| k == "purpose" && v == "dr")));
    }
    assert!(west.iter().any(|(id, ..)| id == "hand-made-dr-copy"), "a copy the plan did not make stays");
    assert!(!west.iter().any(|(_, cluster, _)| cluster == "billing-pg-dev" || cluster == "graph"), "not selected");

    // Deleting the plan deletes no snapshot.
    gw.client.delete_plan(pb::DeletePlanRequest { name: PLAN.into() }).await.unwrap();
    assert_eq!(west_snapshots(&emu).await.len(), west.len());
    let gone = gw.client.get_plan(pb::GetPlanRequest { name: PLAN.into() }).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

on_each_store!(
    a_plan_copies_the_newest_of_what_it_selects_and_expires_only_its_own,
    a_plan_copies_the_newest_of_what_it_selects_and_expires_only_its_own
);

/// The owner loses the right to copy: the plan's next run makes no copy and says why; given back,
/// the run after it copies; denied `ExpireCopy`, a run keeps the old copy and says why.
#[tokio::test]
async fn a_permission_withdrawn_stops_the_plans_copies_and_the_run_says_why() {
    let emu = emulator_with(emulator_config()).await;
    create_cluster(&emu, "billing-pg-1", "aurora-postgresql", "prod").await;
    let dir = scratch_dir("plans-withdrawn");
    std::fs::create_dir_all(&dir).unwrap();
    let policy_file = dir.join("policies.cedar");
    let permit =
        r#"@id("tester-may-do-everything") permit(principal == Snapgate::Caller::"tester", action, resource);"#;
    std::fs::write(&policy_file, permit).unwrap();
    let mut gw = started(&emu, gateway::scratch_store(), |s| {
        s.authz.policies = None;
        s.authz.policy_file = Some(policy_file.clone());
        s.authz.reload_secs = 1;
    })
    .await;
    gw.client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan_message(1)) }).await.unwrap();

    let forbid = format!(
        "{permit}\n@id(\"no-plan-copies-to-west\") forbid(principal, action == Snapgate::Action::\"CopyClusterSnapshot\", resource) when {{ context has plan && context.destination_region == \"us-west-2\" }};"
    );
    std::fs::write(&policy_file, &forbid).unwrap();
    // Reloaded within its interval: the preview, decided as the owner, shows the refusal.
    let refused = previews(&gw.client, Outcome::Refused).await;
    assert!(refused, "the new policy is in force within 20 s");
    let run = run_to_end(&mut gw.client).await;
    assert_eq!(run.state(), RunState::Failed, "{run:?}");
    let item = run.items.iter().find(|i| i.outcome() == Outcome::Refused).unwrap();
    assert!(item.detail.contains("no-plan-copies-to-west") && item.detail.contains("tester"), "{}", item.detail);
    assert_eq!(emu.emulator.calls().get("CopyDBClusterSnapshot"), 0);

    std::fs::write(&policy_file, permit).unwrap();
    let allowed = previews(&gw.client, Outcome::WouldCopy).await;
    assert!(allowed);
    let run = run_to_end(&mut gw.client).await;
    assert_eq!(run.state(), RunState::Succeeded, "{run:?}");

    // The owner may copy but no longer expire: the next night's copy is made, the old one stays.
    let no_expiry = format!(
        "{permit}\n@id(\"no-expiries\") forbid(principal, action == Snapgate::Action::\"ExpireCopy\", resource);"
    );
    std::fs::write(&policy_file, &no_expiry).unwrap();
    snapshot(&emu, "billing-pg-1", "billing-pg-1-night-2").await;
    assert!(previews(&gw.client, Outcome::Refused).await, "the preview shows the expiry refused");
    let run = run_to_end(&mut gw.client).await;
    assert_eq!(run.state(), RunState::Partial, "{run:?}");
    assert_eq!(outcomes(&run, Outcome::Available), ["billing-pg-1"]);
    let refused = run.items.iter().find(|i| i.outcome() == Outcome::Refused).unwrap();
    assert!(refused.detail.contains("ExpireCopy") && refused.detail.contains("no-expiries"), "{}", refused.detail);
    assert_eq!(emu.emulator.calls().get("DeleteDBClusterSnapshot"), 0);
    assert_eq!(west_snapshots(&emu).await.len(), 2, "both copies stay");
    let _ = std::fs::remove_dir_all(dir);
}

/// A plan that breaks rules is refused before anything is stored, one violation a rule, named
/// by its place.
#[tokio::test]
async fn a_bad_plan_is_refused_field_by_field() {
    let emu = emulator_with(emulator_config()).await;
    let mut gw =
        started(&emu, gateway::scratch_store(), |s| s.aws.regions = Some(vec!["us-east-1".into(), "us-west-2".into()]))
            .await;
    let mut plan = plan_message(0);
    plan.schedule = "0 3 * *".into();
    plan.timezone = "Mars/Olympus".into();
    plan.copy.push(pb::PlanCopyAction {
        destination_region: "eu-west-1".into(),
        keep_last: Some(3),
        ..Default::default()
    });
    let status = gw.client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan) }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&status);
    let fields: Vec<String> = details.bad_request().unwrap().field_violations.iter().map(|v| v.field.clone()).collect();
    for field in ["plan.schedule", "plan.timezone", "plan.copy[0].keep_last", "plan.copy[1].destination_region"] {
        assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
    }
    let plans = gw.client.list_plans(pb::ListPlansRequest {}).await.unwrap().into_inner().plans;
    assert!(plans.is_empty(), "nothing stored");
}

/// A destination whose quota of manual snapshots cannot take a run's copies: the preview says how
/// many slots are left (AWS's own count, DescribeAccountAttributes), the run copies what fits and
/// ends PARTIAL naming the full quota.
#[tokio::test]
async fn a_full_snapshot_quota_is_previewed_and_the_run_says_so() {
    let emu = emulator_with(EmulatorConfig { snapshot_quota: 3, ..emulator_config() }).await;
    for id in PROD {
        create_cluster(&emu, id, "aurora-postgresql", "prod").await;
    }
    // Someone else's manual snapshot in the destination takes one of its three slots.
    let west_rds = west(&emu);
    west_rds
        .create_db_cluster()
        .db_cluster_identifier("west-app")
        .engine("aurora-mysql")
        .master_username("admin")
        .send()
        .await
        .unwrap();
    west_rds
        .create_db_cluster_snapshot()
        .db_cluster_identifier("west-app")
        .db_cluster_snapshot_identifier("west-app-by-hand")
        .send()
        .await
        .unwrap();
    let mut gw = started(&emu, gateway::scratch_store(), |_| {}).await;
    gw.client.apply_plan(pb::ApplyPlanRequest { plan: Some(plan_message(2)) }).await.unwrap();

    let preview =
        gw.client.preview_plan(pb::PreviewPlanRequest { name: PLAN.into(), plan: None }).await.unwrap().into_inner();
    assert_eq!(preview.quotas.len(), 1, "{preview:?}");
    let quota = &preview.quotas[0];
    assert_eq!(quota.destination, "123456789012/us-west-2");
    assert_eq!((quota.used, quota.max), (Some(1), Some(3)), "{quota:?}");
    assert_eq!((quota.would_copy, quota.would_expire), (4, 0));
    assert_eq!((quota.left_while_copying, quota.left_after_run), (Some(-2), Some(-2)));

    let run = run_to_end(&mut gw.client).await;
    assert_eq!(run.state(), RunState::Partial, "{run:?}");
    assert_eq!(outcomes(&run, Outcome::Available).len(), 2, "{run:?}");
    let failed: Vec<_> = run.items.iter().filter(|i| i.outcome() == Outcome::Failed).collect();
    assert_eq!(failed.len(), 2, "{run:?}");
    assert!(failed.iter().all(|i| i.detail.contains("SnapshotQuotaExceeded")), "{failed:?}");
    assert!(
        run.reason.contains("quota is full at 123456789012/us-west-2"),
        "the run names the full quota: {}",
        run.reason
    );
    // Full now: the preview shows no slot left for the two copies still to make.
    let preview =
        gw.client.preview_plan(pb::PreviewPlanRequest { name: PLAN.into(), plan: None }).await.unwrap().into_inner();
    assert_eq!(preview.quotas[0].used, Some(3));
    assert_eq!(preview.quotas[0].left_while_copying, Some(-2), "{preview:?}");
}

/// Two replicas on one PostgreSQL: the replica running a plan's run is SIGKILLed while its copies
/// are in progress; the other takes the run over once it is no longer marked alive, finds the
/// copies in progress, waits for them and ends the run SUCCEEDED. Every copy is made once.
#[tokio::test]
async fn a_run_whose_replica_is_killed_is_finished_by_another_and_copies_once() {
    // 10 GiB clusters at 2 GiB/s: each copy takes about 5 s.
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 2.0, ..quiet_config() }).await;
    for id in ["billing-pg-1", "billing-pg-2", "billing-pg-3"] {
        create_cluster(&emu, id, "aurora-postgresql", "prod").await;
    }
    let pg = common::postgres::start();
    let store_toml = format!("url = \"{}\"", pg.url);
    let config = format!(
        "{}[plans]\ncheck_interval_ms = 100\nfollow_interval_ms = 100\nheartbeat_secs = 1\ntakeover_after_secs = 4\n",
        serve::config(&emu.endpoint_url(), &store_toml)
    );
    let dir = scratch_dir("plans-takeover");
    let a = serve::spawn(&config, &dir, "a").await;
    let b = serve::spawn(&config, &dir, "b").await;
    let mut on_a = gateway::connect(a.addr).await;
    let mut on_b = gateway::connect(b.addr).await;
    on_a.apply_plan(pb::ApplyPlanRequest { plan: Some(plan_message(2)) }).await.unwrap();
    let run = on_a.run_plan(pb::RunPlanRequest { name: PLAN.into() }).await.unwrap().into_inner();
    let copying =
        eventually(Duration::from_secs(20), || async { emu.emulator.calls().get("CopyDBClusterSnapshot") == 3 }).await;
    assert!(copying, "replica A admitted the three copies");
    a.kill().await;

    let ended = end_of(&mut on_b, &run.id).await;
    assert_eq!(ended.state(), RunState::Succeeded, "{ended:?}");
    assert_eq!(outcomes(&ended, Outcome::SkippedInProgress), ["billing-pg-1", "billing-pg-2", "billing-pg-3"]);
    assert_eq!(outcomes(&ended, Outcome::Available), ["billing-pg-1", "billing-pg-2", "billing-pg-3"]);
    // A killed between sending a copy and recording it leaves that job starting; B's dispatcher
    // asks again once its lease passes and adopts the copy AWS answers already exists. Calls may
    // so be more than three; copies made are three.
    let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
    assert_eq!(made, 3, "no copy made twice");
    assert_eq!(west_snapshots(&emu).await.len(), 3);
    b.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The scheduled runs of the plan, as `client`'s gateway lists them (newest first).
async fn scheduled_runs(client: &mut gateway::Client) -> Vec<pb::PlanRun> {
    let request = pb::ListPlanRunsRequest { name: PLAN.into(), page_size: 100 };
    let runs = client.list_plan_runs(request).await.unwrap().into_inner().runs;
    runs.into_iter().filter(|r| r.cause == "schedule").collect()
}

/// Waits (bounded: a slot comes within a minute) for the plan's `n`th scheduled run to exist.
async fn nth_scheduled(client: &mut gateway::Client, n: usize) -> pb::PlanRun {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut runs = scheduled_runs(client).await;
        if runs.len() >= n {
            runs.sort_by_key(|r| r.slot_time.map(|t| t.seconds));
            return runs.swap_remove(n - 1);
        }
        assert!(tokio::time::Instant::now() < deadline, "scheduled run {n} within 90 s: {runs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas on one PostgreSQL with a plan due every minute, for three slots; the replica
/// running the second slot is SIGKILLed while that slot's copies are in progress. Every slot runs
/// exactly once, every copy is made once (the emulator's counts), and retention deletes each
/// expired copy once.
#[tokio::test]
async fn a_plan_due_every_minute_runs_each_slot_once_while_a_replica_is_killed() {
    // 10 GiB clusters at 2 GiB/s: each copy takes about 5 s.
    let emu = emulator_with(EmulatorConfig { copy_gib_per_sec: 2.0, ..quiet_config() }).await;
    let clusters = ["billing-pg-1", "billing-pg-2"];
    for id in clusters {
        create_cluster(&emu, id, "aurora-postgresql", "prod").await;
    }
    let pg = common::postgres::start();
    let store_toml = format!("url = \"{}\"", pg.url);
    let config = format!(
        "{}[plans]\ncheck_interval_ms = 100\nfollow_interval_ms = 100\nheartbeat_secs = 1\ntakeover_after_secs = 4\n",
        serve::config(&emu.endpoint_url(), &store_toml)
    );
    let dir = scratch_dir("plans-every-minute");
    let a = serve::spawn(&config, &dir, "a").await;
    let b = serve::spawn(&config, &dir, "b").await;
    let mut on_a = gateway::connect(a.addr).await;
    let mut on_b = gateway::connect(b.addr).await;
    let plan = pb::Plan {
        schedule: "* * * * *".into(),
        timezone: "UTC".into(),
        start_window_minutes: Some(1),
        ..plan_message(2)
    };
    on_a.apply_plan(pb::ApplyPlanRequest { plan: Some(plan) }).await.unwrap();

    // Slot 1, on whichever replica claims it.
    let first = nth_scheduled(&mut on_a, 1).await;
    let first = end_of(&mut on_a, &first.id).await;
    assert_eq!(first.state(), RunState::Succeeded, "{first:?}");
    assert_eq!(outcomes(&first, Outcome::Available), clusters);

    // Slot 2: a new snapshot of each cluster; the replica running it is killed mid-copy.
    for id in clusters {
        snapshot(&emu, id, &format!("{id}-second")).await;
    }
    let second = nth_scheduled(&mut on_b, 2).await;
    let runner_known = eventually(Duration::from_secs(10), || {
        let started = ["plan run started", second.id.as_str()];
        let known = a.logged(&started) || b.logged(&started);
        async move { known }
    })
    .await;
    assert!(runner_known, "a replica logged the start of run {}", second.id);
    let a_runs = a.logged(&["plan run started", &second.id]);
    let (runner, survivor, mut client) = if a_runs { (a, b, on_b) } else { (b, a, on_a) };
    let copying =
        eventually(Duration::from_secs(20), || async { emu.emulator.calls().get("CopyDBClusterSnapshot") >= 4 }).await;
    assert!(copying, "slot 2's copies were sent");
    runner.kill().await;
    let second = end_of(&mut client, &second.id).await;
    assert_eq!(second.state(), RunState::Succeeded, "{second:?}");
    assert!(survivor.logged(&["taking over", &second.id]), "the survivor took run {} over", second.id);

    // Slot 3, on the survivor: one more copy each, and the oldest of three expired.
    for id in clusters {
        snapshot(&emu, id, &format!("{id}-third")).await;
    }
    let third = nth_scheduled(&mut client, 3).await;
    let third = end_of(&mut client, &third.id).await;
    assert_eq!(third.state(), RunState::Succeeded, "{third:?}");
    assert_eq!(outcomes(&third, Outcome::Expired), clusters);

    // Each slot ran once: three scheduled runs, one a minute.
    let mut slots: Vec<i64> =
        scheduled_runs(&mut client).await.iter().map(|r| r.slot_time.map_or(0, |t| t.seconds)).collect();
    slots.sort_unstable();
    assert_eq!(slots.len(), 3, "{slots:?}");
    assert!(slots.windows(2).all(|w| w[1] - w[0] == 60), "one run a minute: {slots:?}");
    let made: usize = emu.emulator.copies().iter().map(|d| d.copies_made).sum();
    assert_eq!(made, 6, "every copy made once");
    assert_eq!(emu.emulator.calls().get("DeleteDBClusterSnapshot"), 2, "each expired copy deleted once");
    let left = west_snapshots(&emu).await;
    assert_eq!(left.len(), 4, "two copies of each cluster: {left:?}");
    let expired: Vec<&str> =
        third.items.iter().filter(|i| i.outcome() == Outcome::Expired).map(|i| i.copy.as_str()).collect();
    let first_copies: Vec<&str> =
        first.items.iter().filter(|i| i.outcome() == Outcome::Copied).map(|i| i.copy.as_str()).collect();
    assert_eq!(first_copies.len(), 2, "{first:?}");
    for copy in first_copies {
        assert!(expired.iter().any(|e| e.ends_with(copy) || copy.ends_with(e)), "slot 1's {copy} expired: {expired:?}");
        assert!(!left.iter().any(|(id, _, _)| copy.ends_with(id.as_str())), "{copy} is gone: {left:?}");
    }
    survivor.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}
