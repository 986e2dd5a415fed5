//! Between the proto messages and the gateway's own types.

use crate::copy::CopyRequest;
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
        CopyState::Copying => pb::copy::State::Copying,
        CopyState::Available => pb::copy::State::Available,
        CopyState::Failed => pb::copy::State::Failed,
        CopyState::Cancelled => pb::copy::State::Cancelled,
        CopyState::Deleted => pb::copy::State::Deleted,
    }
}

pub(crate) fn copy(s: &ClusterSnapshot) -> pb::Copy {
    copy_in_state(s, s.state())
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
    pb::CopyEvent {
        copy: Some(copy_in_state(&e.snapshot, e.state)),
        observe_time: Some(prost_types::Timestamp::from(e.observed)),
        change: change as i32,
        terminal: e.terminal,
        trace_id: trace_id.to_owned(),
    }
}
