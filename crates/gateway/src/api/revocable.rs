//! A watch as the API serves it: the hub's events as `CopyEvent`s, authorized again whenever
//! the policies change. Access withdrawn by a reload ends the stream with PERMISSION_DENIED
//! naming the policy, within the reload interval, rather than hours later when the copy ends;
//! for a JWT caller, the stream also ends if the JWKS drops the key that signed its token.
//!
//! Polled by hand, in one allocation with the hub's stream behind it: an `unfold` of a
//! `select!` kept its state twice and every wait inline (~550 bytes a stream, plus the boxes
//! of the closures mapped over it), which at 10,000 streams is megabytes.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream as Changes;
use tonic::Status;

use super::{convert, permitted};
use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::jwt::SigningKeyHold;
use crate::auth::policy::{Action, PolicyStore};
use crate::watch::{Change, WatchStream};
use snapgate_domain::ClusterSnapshot;
use snapgate_proto as pb;

pub(super) struct Revocable {
    events: WatchStream,
    policies: Arc<PolicyStore>,
    caller: Arc<Caller>,
    /// The policies' generations; none once the store is gone (shutdown: the events end).
    reloads: Option<Changes<u64>>,
    /// For a JWT caller, the key that signed its token and the JWKS's changes.
    key: Option<(SigningKeyHold, Changes<u64>)>,
    /// The snapshot as last sent, which a reload decides on again.
    last: Option<Arc<ClusterSnapshot>>,
    ended: bool,
    /// The server span: each change is an event on it.
    span: tracing::Span,
    trace_id: String,
}

impl Revocable {
    pub(super) fn new(
        events: WatchStream,
        policies: Arc<PolicyStore>,
        caller: Arc<Caller>,
        key: Option<SigningKeyHold>,
    ) -> Revocable {
        // Changes from now on: the opening was decided under the policies and keys in force.
        let reloads = Some(Changes::from_changes(policies.reloads()));
        let key = key.map(|key| {
            let changes = Changes::from_changes(key.changes());
            (key, changes)
        });
        // The server span lasts as long as the stream.
        let span = tracing::Span::current();
        let trace_id = crate::telemetry::trace_id_of(&span).unwrap_or_default();
        Revocable { events, policies, caller, reloads, key, last: None, ended: false, span, trace_id }
    }

    fn end(&mut self, status: Status) -> Poll<Option<Result<pb::CopyEvent, Status>>> {
        self.ended = true;
        Poll::Ready(Some(Err(status)))
    }

    /// Decides on the last snapshot sent again, under the policies now in force.
    fn still_permitted(&self) -> Result<(), Status> {
        let Some(snapshot) = &self.last else { return Ok(()) };
        let decision = self.policies.decide(&self.caller, Action::WatchCopy, snapshot, None);
        DecisionEvent {
            caller: &self.caller,
            action: Action::WatchCopy,
            resource: &snapshot.arn,
            destination: None,
            decision: &decision,
            aws_request_id: None,
            outcome: Some(if decision.allowed { "still permitted" } else { "revoked" }),
        }
        .emit();
        permitted(Action::WatchCopy, decision).map_err(Status::from)
    }
}

impl Stream for Revocable {
    type Item = Result<pb::CopyEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some((key, changes)) = &mut this.key {
            loop {
                match Pin::new(&mut *changes).poll_next(cx) {
                    Poll::Ready(Some(_)) if !key.still_trusted() => {
                        tracing::info!(
                            caller = this.caller.id,
                            "ending a watch: the key that signed its token left the JWKS"
                        );
                        let status =
                            Status::unauthenticated("the key that signed this token was withdrawn; authenticate again");
                        return this.end(status);
                    }
                    Poll::Ready(Some(_)) => continue,
                    // The JWKS is gone (shutdown): the events end the stream.
                    Poll::Ready(None) => this.key = None,
                    Poll::Pending => {}
                }
                break;
            }
        }
        while let Some(reloads) = &mut this.reloads {
            match Pin::new(reloads).poll_next(cx) {
                Poll::Ready(Some(_)) => {
                    if let Err(status) = this.still_permitted() {
                        return this.end(status);
                    }
                }
                Poll::Ready(None) => this.reloads = None,
                Poll::Pending => break,
            }
        }
        match Pin::new(&mut this.events).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                if event.change != Change::Heartbeat {
                    tracing::debug!(
                        target: crate::telemetry::STREAM_EVENTS,
                        parent: &this.span,
                        change = ?event.change,
                        state = ?event.state,
                        percent = event.snapshot.percent_progress,
                        "copy progress"
                    );
                }
                this.last = Some(event.snapshot.clone());
                Poll::Ready(Some(Ok(convert::event(event, &this.trace_id))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Status::from(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
