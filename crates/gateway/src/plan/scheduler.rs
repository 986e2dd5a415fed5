//! The scheduler: an owned task that, on every replica, looks at each plan's schedule, claims
//! its due slot (once across replicas: the slot's key is unique in the store) and runs it, records
//! a slot missed beyond its start window as MISSED, and takes over the runs of a replica that
//! stopped marking them alive. Should its loop ever end by a panic, it is started again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::schedule::Due;
use super::{Plans, now_ms, store_error};
use crate::error::Error;
use crate::store::plans::NewRun;

/// The first wait before a scheduler that died is started again; doubles up to a minute.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);

/// Now, as the schedules read it.
pub(super) fn utc_now() -> DateTime<Utc> {
    DateTime::<Utc>::from(std::time::SystemTime::now())
}

impl Plans {
    /// Starts the scheduler as one of the gateway's tasks, supervised: a loop that panics is
    /// logged and started again.
    pub(crate) fn start_scheduler(self: &Arc<Self>) {
        if !self.settings.scheduler {
            return;
        }
        let plans = self.clone();
        self.tasks.supervise("plan scheduler", RESTART_BACKOFF, move || plans.clone().schedule_loop());
    }

    async fn schedule_loop(self: Arc<Self>) {
        let stopping = self.tasks.stopping();
        let every = Duration::from_millis(self.settings.check_interval_ms);
        loop {
            let wait = match self.schedule_round(utc_now()).await {
                Ok(next) => next.map_or(every, |next| {
                    (next - utc_now()).to_std().unwrap_or_default().min(every) + Duration::from_millis(5)
                }),
                Err(error) => {
                    tracing::warn!(%error, "plan scheduler round failed; trying again");
                    every
                }
            };
            tokio::select! {
                () = stopping.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look at every plan: runs what is due, records what was missed, takes over runs whose
    /// replica died. Returns the next slot of any plan.
    pub(crate) async fn schedule_round(self: &Arc<Self>, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Error> {
        let mut next: Option<DateTime<Utc>> = None;
        for record in self.store.plans().await.map_err(store_error)? {
            let plan = match self.valid(&record) {
                Ok(plan) => plan,
                Err(error) => {
                    tracing::warn!(plan = %record.name, %error, "a stored plan is not valid with this gateway's settings; not run");
                    continue;
                }
            };
            let last = self.store.latest_slot(&record.name).await.map_err(store_error)?;
            let last = last.and_then(DateTime::<Utc>::from_timestamp_millis);
            let since = DateTime::<Utc>::from_timestamp_millis(record.applied_ms).unwrap_or(now);
            let (slot, state, reason) = match plan.schedule.due(now, last, since, plan.start_window) {
                Due::Wait(at) => {
                    next = match (next, at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    continue;
                }
                Due::Run(slot) => (slot, "RUNNING", None),
                Due::Missed(slot) => (
                    slot,
                    "MISSED",
                    Some(format!(
                        "no gateway ran this slot within its start window ({} minutes); it was not run late",
                        plan.start_window.as_secs() / 60
                    )),
                ),
            };
            let new = NewRun {
                id: uuid::Uuid::new_v4().to_string(),
                plan: record.name.clone(),
                slot_key: format!("{}@{}", record.name, slot.timestamp_millis()),
                slot_ms: Some(slot.timestamp_millis()),
                cause: "schedule".into(),
                state: state.into(),
                started_ms: now_ms(),
                reason,
                runner: self.replica.clone(),
            };
            if let Some(run) = self.store.claim_run(&new).await.map_err(store_error)? {
                if state == "RUNNING" {
                    tracing::info!(plan = %record.name, run = %run.new.id, slot = %slot, "plan run started");
                    self.start(run);
                } else {
                    tracing::warn!(plan = %record.name, slot = %slot, "plan slot missed");
                    self.metrics.plan_run(&record.name, "MISSED", now_ms() / 1000);
                }
            }
            if let Some(at) = plan.schedule.next_after(now) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        let now_ms = now_ms();
        let stale = now_ms - i64::try_from(self.settings.takeover_after_secs * 1000).unwrap_or(i64::MAX);
        for run in self.store.take_over_runs(&self.replica, stale, now_ms).await.map_err(store_error)? {
            tracing::warn!(plan = %run.new.plan, run = %run.new.id, "taking over a plan run whose replica stopped");
            self.store.clear_run_items(&run.new.id).await.map_err(store_error)?;
            self.start(run);
        }
        Ok(next)
    }
}
