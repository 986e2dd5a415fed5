//! The tonic service: decode the request, call the core under the caller's deadline, encode
//! the answer. Errors become statuses in one place, `crate::error`.

mod convert;
pub mod deadline;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::copy::CopyService;
use crate::error::Error;
use crate::pb;
use crate::pb::snapshot_copy_service_server::SnapshotCopyService;

pub struct Api {
    copies: Arc<CopyService>,
    request_timeout: Duration,
}

impl Api {
    pub fn new(copies: Arc<CopyService>, request_timeout: Duration) -> Api {
        Api {
            copies,
            request_timeout,
        }
    }

    /// Runs `work` within the call's budget; a call that outlives it is DEADLINE_EXCEEDED.
    async fn within_deadline<T>(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Status> {
        let budget = deadline::call_budget(metadata, self.request_timeout);
        match tokio::time::timeout(budget, work).await {
            Ok(result) => result.map_err(Status::from),
            Err(_) => Err(Error::DeadlineExceeded.into()),
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CopyEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotCopyService for Api {
    async fn copy_cluster_snapshot(
        &self,
        request: Request<pb::CopyClusterSnapshotRequest>,
    ) -> Result<Response<pb::Copy>, Status> {
        let (metadata, _, message) = request.into_parts();
        let copy_request = convert::copy_request(message);
        let snapshot = self
            .within_deadline(&metadata, self.copies.copy(&copy_request))
            .await?;
        Ok(Response::new(convert::copy(&snapshot)))
    }

    async fn get_copy(
        &self,
        request: Request<pb::GetCopyRequest>,
    ) -> Result<Response<pb::Copy>, Status> {
        let (metadata, _, message) = request.into_parts();
        let snapshot = self
            .within_deadline(&metadata, self.copies.get(&message.name))
            .await?;
        Ok(Response::new(convert::copy(&snapshot)))
    }

    type WatchCopyStream = EventStream;

    async fn watch_copy(
        &self,
        _request: Request<pb::WatchCopyRequest>,
    ) -> Result<Response<EventStream>, Status> {
        Err(Error::Unimplemented(
            "WatchCopy is not available in this version of snapgate yet; poll GetCopy meanwhile",
        )
        .into())
    }

    async fn cancel_copy(
        &self,
        _request: Request<pb::CancelCopyRequest>,
    ) -> Result<Response<pb::Copy>, Status> {
        Err(
            Error::Unimplemented("CancelCopy is not available in this version of snapgate yet")
                .into(),
        )
    }
}
