//! Between the proto messages and the gateway's own types.

use crate::copy::ListRequest;
use crate::copy::{CopyRequest, CopyView};
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
