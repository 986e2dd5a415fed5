//! Between the proto messages and the gateway's own types.

use crate::copy::ListRequest;
use crate::copy::{CopyRequest, CopyView};
use crate::plan::spec::{self, CopyAction, PlanSpec, Select};
use crate::plan::{Outcome, PlanView, QuotaView, RunView};
use crate::store::plans::RunItem;
use crate::watch::{Change, WatchEvent};
use snapgate_domain::{ClusterSnapshot, CopyState};
use snapgate_proto as pb;

pub(crate) fn copy_request(req: pb::CopyClusterSnapshotRequest) -> CopyRequest {
    CopyRequest {
        source_snapshot: req.source_snapshot,
        target_snapshot_id: req.target_snapshot_id,
        kms_key_id: req.kms_key_id,
        copy_tags: req.copy_tags,
        tags: req.tags.into_iter().map(|t| (t.key, t.value)).collect(),
        source_region: req.source_region,
        destination_region: req.destination_region,
        destination_account: req.destination_account,
    }
}

pub(crate) fn state(state: CopyState) -> pb::copy::State {
    match state {
        CopyState::Unknown => pb::copy::State::Unspecified,
        CopyState::Queued => pb::copy::State::Queued,
        CopyState::Copying => pb::copy::State::Copying,
        CopyState::Available => pb::copy::State::Available,
        CopyState::Failed => pb::copy::State::Failed,
        CopyState::Cancelled => pb::copy::State::Cancelled,
        CopyState::Deleted => pb::copy::State::Deleted,
    }
}

/// A copy as the API shows it, with what the gateway knows of its job.
pub(crate) fn view(v: &CopyView) -> pb::Copy {
    let (position, limit) = v.queue.unwrap_or((0, 0));
    pb::Copy {
        queue_position: i32::try_from(position).unwrap_or(i32::MAX),
        queue_limit: i32::try_from(limit).unwrap_or(i32::MAX),
        requested_by: v.requested_by.clone().unwrap_or_default(),
        request_time: v.request_time.map(prost_types::Timestamp::from),
        failure_reason: v.failure.clone().unwrap_or_default(),
        ..copy_in_state(&v.snapshot, v.state)
    }
}

pub(crate) fn copy_in_state(s: &ClusterSnapshot, state: CopyState) -> pb::Copy {
    pb::Copy {
        name: s.arn.clone(),
        snapshot_id: s.id.clone(),
        region: s.region.clone(),
        account_id: s.account.clone(),
        state: self::state(state) as i32,
        aws_status: s.status.clone(),
        percent_progress: s.percent_progress,
        source_snapshot_arn: s.source_arn.clone().unwrap_or_default(),
        cluster_id: s.cluster_id.clone(),
        engine: s.engine.clone(),
        engine_version: s.engine_version.clone(),
        allocated_storage_gib: s.allocated_storage_gib,
        storage_encrypted: s.encrypted,
        kms_key_id: s.kms_key_id.clone().unwrap_or_default(),
        create_time: s.create_time.map(prost_types::Timestamp::from),
        tags: s.tags.iter().map(|(k, v)| pb::Tag { key: k.clone(), value: v.clone() }).collect(),
        snapshot_type: s.snapshot_type.clone(),
        cluster_create_time: s.cluster_create_time.map(prost_types::Timestamp::from),
        queue_position: 0,
        queue_limit: 0,
        requested_by: String::new(),
        request_time: None,
        failure_reason: String::new(),
    }
}

/// One stream event; `trace_id` is the stream's trace (empty when traces are off).
pub(crate) fn event(e: WatchEvent, trace_id: &str) -> pb::CopyEvent {
    let change = match e.change {
        Change::Initial => pb::copy_event::Change::Initial,
        Change::State => pb::copy_event::Change::State,
        Change::Progress => pb::copy_event::Change::Progress,
        Change::Heartbeat => pb::copy_event::Change::Heartbeat,
        Change::Terminal => pb::copy_event::Change::Terminal,
    };
    let (position, limit) = e.queue.unwrap_or((0, 0));
    let copy = pb::Copy {
        queue_position: i32::try_from(position).unwrap_or(i32::MAX),
        queue_limit: i32::try_from(limit).unwrap_or(i32::MAX),
        ..copy_in_state(&e.snapshot, e.state)
    };
    pb::CopyEvent {
        copy: Some(copy),
        observe_time: Some(prost_types::Timestamp::from(e.observed)),
        change: change as i32,
        terminal: e.terminal,
        trace_id: trace_id.to_owned(),
    }
}

/// A ListCopies request in the workflow's terms.
pub(crate) fn list_request(message: pb::ListCopiesRequest) -> ListRequest {
    let states = message.states.iter().map(|raw| pb::copy::State::try_from(*raw).ok().and_then(state_of)).collect();
    ListRequest {
        page_size: message.page_size,
        page_token: message.page_token,
        states,
        destination_region: message.destination_region,
        account_id: message.account_id,
        requested_by: message.requested_by,
    }
}

pub(crate) fn state_of(state: pb::copy::State) -> Option<crate::store::JobState> {
    use crate::store::JobState;
    match state {
        pb::copy::State::Unspecified => None,
        pb::copy::State::Queued => Some(JobState::Queued),
        pb::copy::State::Copying => Some(JobState::Copying),
        pb::copy::State::Available => Some(JobState::Available),
        pb::copy::State::Failed => Some(JobState::Failed),
        pb::copy::State::Cancelled => Some(JobState::Cancelled),
        pb::copy::State::Deleted => Some(JobState::Deleted),
    }
}

/// A plan as the API sends it, in the plan file's terms (validated next, field by field).
pub(crate) fn plan_spec(plan: pb::Plan) -> PlanSpec {
    // A negative number is kept out of range rather than dropped, so validation names it.
    let unsigned = |n: i32| u32::try_from(n).unwrap_or(0);
    let select = plan.select.unwrap_or_default();
    PlanSpec {
        name: plan.name,
        schedule: plan.schedule,
        timezone: if plan.timezone.is_empty() { "UTC".to_owned() } else { plan.timezone },
        start_window_minutes: plan.start_window_minutes.map_or(spec::DEFAULT_WINDOW_MINUTES, unsigned),
        rpo_hours: plan.rpo_hours.map(unsigned),
        select: Select {
            source_region: (!select.source_region.is_empty()).then_some(select.source_region),
            engines: select.engines,
            clusters: (!select.clusters.is_empty()).then_some(select.clusters),
            cluster_tags: select.cluster_tags.into_iter().collect(),
            snapshot_types: select.snapshot_types,
        },
        copy: plan
            .copy
            .into_iter()
            .map(|c| CopyAction {
                destination_region: c.destination_region,
                destination_account: c.destination_account,
                kms_key_id: (!c.kms_key_id.is_empty()).then_some(c.kms_key_id),
                copy_tags: c.copy_tags,
                tags: c.tags.into_iter().collect(),
                keep_last: c.keep_last,
                max_age_days: c.max_age_days.map(unsigned),
            })
            .collect(),
    }
}

/// A plan in the API's terms (what the plan file and a stored plan declare).
pub(crate) fn plan_message(spec: &PlanSpec) -> pb::Plan {
    let signed = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    pb::Plan {
        name: spec.name.clone(),
        schedule: spec.schedule.clone(),
        timezone: spec.timezone.clone(),
        start_window_minutes: Some(signed(spec.start_window_minutes)),
        rpo_hours: spec.rpo_hours.map(signed),
        select: Some(pb::PlanSelect {
            source_region: spec.select.source_region.clone().unwrap_or_default(),
            engines: spec.select.engines.clone(),
            clusters: spec.select.clusters.clone().unwrap_or_default(),
            cluster_tags: spec.select.cluster_tags.clone().into_iter().collect(),
            snapshot_types: spec.select.snapshot_types.clone(),
        }),
        copy: spec
            .copy
            .iter()
            .map(|c| pb::PlanCopyAction {
                destination_region: c.destination_region.clone(),
                destination_account: c.destination_account.clone(),
                kms_key_id: c.kms_key_id.clone().unwrap_or_default(),
                copy_tags: c.copy_tags,
                tags: c.tags.clone().into_iter().collect(),
                keep_last: c.keep_last,
                max_age_days: c.max_age_days.map(signed),
            })
            .collect(),
        ..pb::Plan::default()
    }
}

/// A stored plan as the API shows it.
pub(crate) fn plan_view(v: &PlanView) -> pb::Plan {
    pb::Plan {
        owner: v.record.owner.clone(),
        apply_time: Some(prost_types::Timestamp::from(time_of_ms(v.record.applied_ms))),
        update_time: Some(prost_types::Timestamp::from(time_of_ms(v.record.updated_ms))),
        generation: v.record.generation,
        next_run_time: v.next_run.map(prost_types::Timestamp::from),
        ..plan_message(&v.spec)
    }
}

pub(crate) fn quota_message(q: &QuotaView) -> pb::PlanQuota {
    pb::PlanQuota {
        destination: q.destination.clone(),
        used: q.quota.map(|q| q.used),
        max: q.quota.map(|q| q.max),
        would_copy: i32::try_from(q.would_copy).unwrap_or(i32::MAX),
        would_expire: i32::try_from(q.would_expire).unwrap_or(i32::MAX),
        left_while_copying: q.left_while_copying(),
        left_after_run: q.left_after_run(),
        detail: q.detail.clone().unwrap_or_default(),
    }
}

pub(crate) fn run_item(i: &RunItem) -> pb::PlanRunItem {
    let outcome = match Outcome::parse(&i.outcome) {
        Some(Outcome::Copied) => pb::plan_run_item::Outcome::Copied,
        Some(Outcome::UpToDate) => pb::plan_run_item::Outcome::UpToDate,
        Some(Outcome::SkippedInProgress) => pb::plan_run_item::Outcome::SkippedInProgress,
        Some(Outcome::Expired) => pb::plan_run_item::Outcome::Expired,
        Some(Outcome::Refused) => pb::plan_run_item::Outcome::Refused,
        Some(Outcome::Failed) => pb::plan_run_item::Outcome::Failed,
        Some(Outcome::WouldCopy) => pb::plan_run_item::Outcome::WouldCopy,
        Some(Outcome::WouldExpire) => pb::plan_run_item::Outcome::WouldExpire,
        Some(Outcome::Available) => pb::plan_run_item::Outcome::Available,
        Some(Outcome::NoSnapshot) => pb::plan_run_item::Outcome::NoSnapshot,
        None => pb::plan_run_item::Outcome::Unspecified,
    };
    pb::PlanRunItem {
        cluster_id: i.cluster_id.clone(),
        source_snapshot_arn: i.source_arn.clone().unwrap_or_default(),
        destination: i.destination.clone(),
        copy: i.copy_name.clone().unwrap_or_default(),
        outcome: outcome as i32,
        detail: i.detail.clone().unwrap_or_default(),
        recovery_point_time: i.recovery_ms.map(|ms| prost_types::Timestamp::from(time_of_ms(ms))),
    }
}

pub(crate) fn run_view(v: &RunView) -> pb::PlanRun {
    let r = &v.run;
    let state = match r.new.state.as_str() {
        "RUNNING" => pb::plan_run::State::Running,
        "SUCCEEDED" => pb::plan_run::State::Succeeded,
        "PARTIAL" => pb::plan_run::State::Partial,
        "FAILED" => pb::plan_run::State::Failed,
        "MISSED" => pb::plan_run::State::Missed,
        _ => pb::plan_run::State::Unspecified,
    };
    pb::PlanRun {
        id: r.new.id.clone(),
        plan: r.new.plan.clone(),
        state: state as i32,
        cause: r.new.cause.clone(),
        slot_time: r.new.slot_ms.map(|ms| prost_types::Timestamp::from(time_of_ms(ms))),
        start_time: Some(prost_types::Timestamp::from(time_of_ms(r.new.started_ms))),
        finish_time: r.finished_ms.map(|ms| prost_types::Timestamp::from(time_of_ms(ms))),
        reason: r.new.reason.clone().unwrap_or_default(),
        items: v.items.iter().map(run_item).collect(),
    }
}

fn time_of_ms(ms: i64) -> std::time::SystemTime {
    std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
