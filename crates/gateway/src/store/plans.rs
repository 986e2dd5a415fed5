//! The plan tables: plans and their owners, runs (a scheduled slot claimed once across
//! replicas), what each run did, and the copies plans made (all retention may ever expire).

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// A plan as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanRecord {
    pub name: String,
    pub owner: String,
    /// The owner's facts as authentication established them at apply (JSON).
    pub owner_facts: String,
    /// The plan as declared, JSON.
    pub spec: String,
    pub applied_ms: i64,
    pub updated_ms: i64,
    pub generation: i64,
}

/// A run to claim: `slot_key` is unique across replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewRun {
    pub id: String,
    pub plan: String,
    pub slot_key: String,
    /// The scheduled slot; `None` for a run asked for by RunPlan.
    pub slot_ms: Option<i64>,
    /// `schedule` or `manual`.
    pub cause: String,
    /// `RUNNING`, or `MISSED` for a slot recorded and not run.
    pub state: String,
    pub started_ms: i64,
    pub reason: Option<String>,
    /// The replica that runs it.
    pub runner: String,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run {
    pub new: NewRun,
    pub finished_ms: Option<i64>,
}

/// What a run did for one cluster at one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunItem {
    pub cluster_id: String,
    pub source_arn: Option<String>,
    pub destination: String,
    pub copy_name: Option<String>,
    /// `COPIED`, `UP_TO_DATE`, `SKIPPED_IN_PROGRESS`, `EXPIRED`, `REFUSED`, `FAILED`.
    pub outcome: String,
    pub detail: Option<String>,
    /// When the copy's source snapshot was taken: the recovery point it holds.
    pub recovery_ms: Option<i64>,
}

/// A copy a plan made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlanCopyRecord {
    pub account: String,
    pub region: String,
    pub target: String,
    pub plan: String,
    pub cluster_id: String,
    pub source_arn: String,
    pub source_time_ms: i64,
    pub run_id: String,
    pub created_ms: i64,
    pub expired_ms: Option<i64>,
}

fn plan_of(row: &AnyRow) -> Result<PlanRecord, sqlx::Error> {
    Ok(PlanRecord {
        name: row.try_get("name")?,
        owner: row.try_get("owner")?,
        owner_facts: row.try_get("owner_facts")?,
        spec: row.try_get("spec")?,
        applied_ms: row.try_get("applied_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        generation: row.try_get("generation")?,
    })
}

fn run_of(row: &AnyRow) -> Result<Run, sqlx::Error> {
    Ok(Run {
        new: NewRun {
            id: row.try_get("id")?,
            plan: row.try_get("plan")?,
            slot_key: row.try_get("slot_key")?,
            slot_ms: row.try_get("slot_ms")?,
            cause: row.try_get("cause")?,
            state: row.try_get("state")?,
            started_ms: row.try_get("started_ms")?,
            reason: row.try_get("reason")?,
            runner: row.try_get::<Option<String>, _>("runner")?.unwrap_or_default(),
        },
        finished_ms: row.try_get("finished_ms")?,
    })
}

fn copy_of(row: &AnyRow) -> Result<PlanCopyRecord, sqlx::Error> {
    Ok(PlanCopyRecord {
        account: row.try_get("account")?,
        region: row.try_get("region")?,
        target: row.try_get("target")?,
        plan: row.try_get("plan")?,
        cluster_id: row.try_get("cluster_id")?,
        source_arn: row.try_get("source_arn")?,
        source_time_ms: row.try_get("source_time_ms")?,
        run_id: row.try_get("run_id")?,
        created_ms: row.try_get("created_ms")?,
        expired_ms: row.try_get("expired_ms")?,
    })
}

const PLAN_COLUMNS: &str = "name, owner, owner_facts, spec, applied_ms, updated_ms, generation";
const RUN_COLUMNS: &str = "id, plan, slot_key, slot_ms, cause, state, started_ms, finished_ms, reason, runner";
const COPY_COLUMNS: &str =
    "account, region, target, plan, cluster_id, source_arn, source_time_ms, run_id, created_ms, expired_ms";

impl Store {
    /// Creates or replaces a plan as a whole; `owner` is who applied it. The first apply's
    /// time stays: slots since then are the plan's.
    pub(crate) async fn put_plan(
        &self,
        name: &str,
        owner: &str,
        owner_facts: &str,
        spec: &str,
        now: i64,
    ) -> Result<PlanRecord, StoreError> {
        sqlx::query(
            "INSERT INTO plans (name, owner, owner_facts, spec, applied_ms, updated_ms, generation) \
             VALUES ($1, $2, $3, $4, $5, $5, 1) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, owner_facts = excluded.owner_facts, \
             spec = excluded.spec, updated_ms = excluded.updated_ms, generation = plans.generation + 1",
        )
        .bind(name)
        .bind(owner)
        .bind(owner_facts)
        .bind(spec)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self.plan(name).await?.ok_or(sqlx::Error::RowNotFound)?)
    }

    pub(crate) async fn plan(&self, name: &str) -> Result<Option<PlanRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(plan_of).transpose()?)
    }

    pub(crate) async fn plans(&self) -> Result<Vec<PlanRecord>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY name")).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(plan_of).collect::<Result<_, _>>()?)
    }

    /// Deletes a plan; its runs and its copies' records stay, as history (and its copies in
    /// AWS stay: deleting a plan never deletes a snapshot).
    pub(crate) async fn delete_plan(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM plans WHERE name = $1").bind(name).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims a run: `None` when its slot was claimed already (by this or another replica).
    pub(crate) async fn claim_run(&self, run: &NewRun) -> Result<Option<Run>, StoreError> {
        let done = sqlx::query(
            "INSERT INTO plan_runs (id, plan, slot_key, slot_ms, cause, state, started_ms, finished_ms, reason, \
             runner, heartbeat_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $7) ON CONFLICT (slot_key) DO NOTHING",
        )
        .bind(&run.id)
        .bind(&run.plan)
        .bind(&run.slot_key)
        .bind(run.slot_ms)
        .bind(&run.cause)
        .bind(&run.state)
        .bind(run.started_ms)
        // A missed slot is over when it is recorded.
        .bind((run.state == "MISSED").then_some(run.started_ms))
        .bind(&run.reason)
        .bind(&run.runner)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.run(&run.id).await
    }

    pub(crate) async fn run(&self, id: &str) -> Result<Option<Run>, StoreError> {
        let row = sqlx::query(&format!("SELECT {RUN_COLUMNS} FROM plan_runs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(run_of).transpose()?)
    }

    /// Marks a run alive, by the replica running it; `false` when another took it over (or it
    /// ended), so this replica stops.
    pub(crate) async fn heartbeat_run(&self, id: &str, runner: &str, now: i64) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE plan_runs SET heartbeat_ms = $1 WHERE id = $2 AND runner = $3 AND state = 'RUNNING'")
                .bind(now)
                .bind(id)
                .bind(runner)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Takes over the runs whose replica stopped marking them alive before `stale_before`: each
    /// is taken by one replica only.
    pub(crate) async fn take_over_runs(
        &self,
        runner: &str,
        stale_before: i64,
        now: i64,
    ) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM plan_runs WHERE state = 'RUNNING' AND COALESCE(heartbeat_ms, 0) < $1 LIMIT 100"
        ))
        .bind(stale_before)
        .fetch_all(&self.pool)
        .await?;
        let mut taken = Vec::new();
        for row in &rows {
            let run = run_of(row)?;
            let done = sqlx::query(
                "UPDATE plan_runs SET runner = $1, heartbeat_ms = $2 WHERE id = $3 AND state = 'RUNNING' \
                 AND COALESCE(heartbeat_ms, 0) < $4",
            )
            .bind(runner)
            .bind(now)
            .bind(&run.new.id)
            .bind(stale_before)
            .execute(&self.pool)
            .await?;
            if done.rows_affected() == 1 {
                taken.push(Run { new: NewRun { runner: runner.to_owned(), ..run.new }, ..run });
            }
        }
        Ok(taken)
    }

    /// Forgets what a run did, before a replica that took it over runs it again.
    pub(crate) async fn clear_run_items(&self, run_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plan_run_items WHERE run_id = $1").bind(run_id).execute(&self.pool).await?;
        Ok(())
    }

    /// A plan's runs, newest first.
    pub(crate) async fn runs(&self, plan: &str, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM plan_runs WHERE plan = $1 ORDER BY started_ms DESC, id DESC LIMIT $2"
        ))
        .bind(plan)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(run_of).collect::<Result<_, _>>()?)
    }

    /// The latest scheduled slot recorded for a plan (run or missed).
    pub(crate) async fn latest_slot(&self, plan: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(slot_ms) AS slot FROM plan_runs WHERE plan = $1 AND slot_ms IS NOT NULL")
            .bind(plan)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("slot")?)
    }

    /// Ends a running run; `false` if it was not running.
    pub(crate) async fn finish_run(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE plan_runs SET state = $1, reason = $2, finished_ms = $3 WHERE id = $4 AND state = 'RUNNING'",
        )
        .bind(state)
        .bind(reason)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records what a run did, in order.
    pub(crate) async fn add_run_item(&self, run_id: &str, item: &RunItem) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plan_run_items (run_id, seq, cluster_id, source_arn, destination, copy_name, outcome, detail, \
             recovery_ms) VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM plan_run_items WHERE run_id = $1), \
             $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(run_id)
        .bind(&item.cluster_id)
        .bind(&item.source_arn)
        .bind(&item.destination)
        .bind(&item.copy_name)
        .bind(&item.outcome)
        .bind(&item.detail)
        .bind(item.recovery_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The items of several runs in one query, by run, each run's in order.
    pub(crate) async fn items_of_runs(&self, run_ids: &[String]) -> Result<HashMap<String, Vec<RunItem>>, StoreError> {
        let mut of: HashMap<String, Vec<RunItem>> = HashMap::new();
        if run_ids.is_empty() {
            return Ok(of);
        }
        let marks: Vec<String> = (1..=run_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT run_id, cluster_id, source_arn, destination, copy_name, outcome, detail, recovery_ms \
             FROM plan_run_items WHERE run_id IN ({}) ORDER BY run_id, seq",
            marks.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for id in run_ids {
            query = query.bind(id);
        }
        for row in query.fetch_all(&self.pool).await? {
            let item = RunItem {
                cluster_id: row.try_get("cluster_id")?,
                source_arn: row.try_get("source_arn")?,
                destination: row.try_get("destination")?,
                copy_name: row.try_get("copy_name")?,
                outcome: row.try_get("outcome")?,
                detail: row.try_get("detail")?,
                recovery_ms: row.try_get("recovery_ms")?,
            };
            of.entry(row.try_get("run_id")?).or_default().push(item);
        }
        Ok(of)
    }

    /// Records a copy as the plan's; a copy recorded already (a run repeated or resumed) stays
    /// as it was. Returns whether this call recorded it.
    pub(crate) async fn record_plan_copy(&self, copy: &PlanCopyRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(&format!(
            "INSERT INTO plan_copies ({COPY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL) \
             ON CONFLICT (account, region, target) DO NOTHING"
        ))
        .bind(&copy.account)
        .bind(&copy.region)
        .bind(&copy.target)
        .bind(&copy.plan)
        .bind(&copy.cluster_id)
        .bind(&copy.source_arn)
        .bind(copy.source_time_ms)
        .bind(&copy.run_id)
        .bind(copy.created_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The plan's copies at a destination that are not expired.
    pub(crate) async fn plan_copies(
        &self,
        plan: &str,
        account: &str,
        region: &str,
    ) -> Result<Vec<PlanCopyRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COPY_COLUMNS} FROM plan_copies WHERE plan = $1 AND account = $2 AND region = $3 \
             AND expired_ms IS NULL ORDER BY cluster_id, source_time_ms, target"
        ))
        .bind(plan)
        .bind(account)
        .bind(region)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(copy_of).collect::<Result<_, _>>()?)
    }

    /// Marks a plan's copy expired (deleted, or found gone); `true` for the one call that did,
    /// so across replicas an expiry is recorded and audited once.
    pub(crate) async fn expire_plan_copy(
        &self,
        account: &str,
        region: &str,
        target: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE plan_copies SET expired_ms = $1 WHERE account = $2 AND region = $3 AND target = $4 \
             AND expired_ms IS NULL",
        )
        .bind(now)
        .bind(account)
        .bind(region)
        .bind(target)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreSettings;

    async fn scratch_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("snapgate-plans-test-{}", uuid::Uuid::new_v4()));
        (Store::open(&StoreSettings { data_dir: dir.clone(), ..StoreSettings::default() }).await.unwrap(), dir)
    }

    fn run(id: &str, slot_ms: Option<i64>, state: &str) -> NewRun {
        NewRun {
            id: id.into(),
            plan: "nightly-dr".into(),
            slot_key: slot_ms.map_or_else(|| format!("nightly-dr/manual/{id}"), |s| format!("nightly-dr@{s}")),
            slot_ms,
            cause: if slot_ms.is_some() { "schedule" } else { "manual" }.into(),
            state: state.into(),
            started_ms: slot_ms.unwrap_or(5),
            reason: None,
            runner: "replica-a".into(),
        }
    }

    #[tokio::test]
    async fn a_plan_is_applied_replaced_listed_and_deleted() {
        let (store, dir) = scratch_store().await;
        let first = store.put_plan("nightly-dr", "team-a", "{}", "{\"v\":1}", 10).await.unwrap();
        assert_eq!((first.generation, first.applied_ms, first.updated_ms), (1, 10, 10));
        let second = store.put_plan("nightly-dr", "team-a", "{}", "{\"v\":2}", 20).await.unwrap();
        assert_eq!((second.generation, second.applied_ms, second.updated_ms), (2, 10, 20));
        assert_eq!(second.spec, "{\"v\":2}");
        store.put_plan("another", "team-b", "{}", "{}", 30).await.unwrap();
        let names: Vec<_> = store.plans().await.unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["another", "nightly-dr"]);
        assert!(store.delete_plan("another").await.unwrap());
        assert!(!store.delete_plan("another").await.unwrap());
        assert!(store.plan("another").await.unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_slot_is_claimed_once_and_runs_are_recorded() {
        let (store, dir) = scratch_store().await;
        assert!(store.claim_run(&run("r1", Some(1000), "RUNNING")).await.unwrap().is_some());
        // Another replica (another run id) for the same slot gets nothing.
        assert!(store.claim_run(&run("r2", Some(1000), "RUNNING")).await.unwrap().is_none());
        let missed = store.claim_run(&run("r3", Some(2000), "MISSED")).await.unwrap().unwrap();
        assert_eq!(missed.finished_ms, Some(2000), "a missed slot is over when recorded");
        store.claim_run(&run("m1", None, "RUNNING")).await.unwrap().unwrap();
        assert_eq!(store.latest_slot("nightly-dr").await.unwrap(), Some(2000), "manual runs have no slot");
        assert_eq!(store.latest_slot("other").await.unwrap(), None);

        let item = |outcome: &str| RunItem {
            cluster_id: "billing-pg".into(),
            source_arn: Some("arn:src".into()),
            destination: "us-west-2".into(),
            copy_name: Some("nightly-dr-billing-pg-0123456789".into()),
            outcome: outcome.into(),
            detail: None,
            recovery_ms: None,
        };
        store.add_run_item("r1", &item("COPIED")).await.unwrap();
        store.add_run_item("r1", &item("EXPIRED")).await.unwrap();
        let outcomes: Vec<_> = store
            .items_of_runs(&["r1".into()])
            .await
            .unwrap()
            .remove("r1")
            .unwrap()
            .into_iter()
            .map(|i| i.outcome)
            .collect();
        assert_eq!(outcomes, ["COPIED", "EXPIRED"]);
        assert!(store.finish_run("r1", "SUCCEEDED", None, 3000).await.unwrap());
        assert!(!store.finish_run("r1", "FAILED", None, 3001).await.unwrap(), "ended once");
        assert!(!store.finish_run("r3", "SUCCEEDED", None, 3001).await.unwrap(), "a missed slot stays missed");
        let states: Vec<_> = store.runs("nightly-dr", 10).await.unwrap().into_iter().map(|r| r.new.state).collect();
        assert_eq!(states, ["MISSED", "SUCCEEDED", "RUNNING"], "newest first");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_run_whose_replica_stopped_is_taken_over_once() {
        let (store, dir) = scratch_store().await;
        store.claim_run(&run("r1", Some(1000), "RUNNING")).await.unwrap().unwrap();
        assert!(store.heartbeat_run("r1", "replica-a", 2000).await.unwrap());
        assert!(!store.heartbeat_run("r1", "replica-b", 2000).await.unwrap(), "only its runner marks it");
        // Alive at 2000: not stale before 1500.
        assert!(store.take_over_runs("replica-b", 1500, 3000).await.unwrap().is_empty());
        let taken = store.take_over_runs("replica-b", 2500, 3000).await.unwrap();
        assert_eq!(
            taken.iter().map(|r| (r.new.id.as_str(), r.new.runner.as_str())).collect::<Vec<_>>(),
            [("r1", "replica-b")]
        );
        assert!(store.take_over_runs("replica-c", 2500, 3000).await.unwrap().is_empty(), "taken once");
        assert!(!store.heartbeat_run("r1", "replica-a", 3100).await.unwrap(), "the old runner learns it lost the run");
        store
            .add_run_item(
                "r1",
                &RunItem {
                    cluster_id: "c".into(),
                    source_arn: None,
                    destination: "us-west-2".into(),
                    copy_name: None,
                    outcome: "COPIED".into(),
                    detail: None,
                    recovery_ms: Some(1),
                },
            )
            .await
            .unwrap();
        store.clear_run_items("r1").await.unwrap();
        assert!(store.items_of_runs(&["r1".into()]).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_plans_copy_is_recorded_once_and_expired_once() {
        let (store, dir) = scratch_store().await;
        let copy = PlanCopyRecord {
            account: "123456789012".into(),
            region: "us-west-2".into(),
            target: "nightly-dr-billing-pg-0123456789".into(),
            plan: "nightly-dr".into(),
            cluster_id: "billing-pg".into(),
            source_arn: "arn:src".into(),
            source_time_ms: 100,
            run_id: "r1".into(),
            created_ms: 200,
            expired_ms: None,
        };
        assert!(store.record_plan_copy(&copy).await.unwrap());
        assert!(!store.record_plan_copy(&PlanCopyRecord { run_id: "r2".into(), ..copy.clone() }).await.unwrap());
        assert_eq!(
            store.plan_copies("nightly-dr", "123456789012", "us-west-2").await.unwrap(),
            std::slice::from_ref(&copy)
        );
        assert!(store.plan_copies("another-plan", "123456789012", "us-west-2").await.unwrap().is_empty());
        assert!(store.expire_plan_copy("123456789012", "us-west-2", &copy.target, 300).await.unwrap());
        assert!(!store.expire_plan_copy("123456789012", "us-west-2", &copy.target, 301).await.unwrap(), "once");
        assert!(store.plan_copies("nightly-dr", "123456789012", "us-west-2").await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
