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
use tonic::Status;

use super::{convert, permitted};
use crate::audit::DecisionEvent;
use crate::auth::Caller;
use crate::auth::jwt::SigningKeyHold;
use crate::auth::policy::{Action, PolicyStore};
use crate::bell::Since;
use crate::watch::{Change, WatchStream};
use snapgate_domain::ClusterSnapshot;
use snapgate_proto as pb;

pin_project_lite::pin_project! {
    pub(super) struct Revocable {
        #[pin]
        events: WatchStream,
        policies: Arc<PolicyStore>,
        caller: Arc<Caller>,
        // Reloads of the policies since the opening, which was decided under those in force.
        #[pin]
        reloads: Since,
        // For a JWT caller, the key that signed its token and the JWKS's changes since.
        key: Option<Pin<Box<KeyHeld>>>,
        // The snapshot as last sent, which a reload decides on again.
        last: Option<Arc<ClusterSnapshot>>,
        ended: bool,
        // The server span, when traces are exported: each change is an event on it.
        traced: Option<Box<Traced>>,
    }
}

/// The server span a stream's events are told on, and its trace id, which each event carries.
struct Traced {
    span: tracing::Span,
    trace_id: String,
}

pin_project_lite::pin_project! {
    struct KeyHeld {
        key: SigningKeyHold,
        #[pin]
        changes: Since,
    }
}

impl Revocable {
    pub(super) fn new(
        events: WatchStream,
        policies: Arc<PolicyStore>,
        caller: Arc<Caller>,
        key: Option<SigningKeyHold>,
    ) -> Revocable {
        // Changes from now on: the opening was decided under the policies and keys in force.
        let reloads = policies.reloads().since_now();
        let key = key.map(|key| {
            let changes = key.changes().since_now();
            Box::pin(KeyHeld { key, changes })
        });
        // The server span lasts as long as the stream; without trace export there is none, and
        // a stream keeps nothing for it.
        let span = tracing::Span::current();
        let traced = (!span.is_none()).then(|| {
            let trace_id = crate::telemetry::trace_id_of(&span).unwrap_or_default();
            Box::new(Traced { span, trace_id })
        });
        Revocable { events, policies, caller, reloads, key, last: None, ended: false, traced }
    }
}

/// Decides on the last snapshot sent again, under the policies now in force.
fn still_permitted(policies: &PolicyStore, caller: &Caller, last: Option<&Arc<ClusterSnapshot>>) -> Result<(), Status> {
    let Some(snapshot) = last else { return Ok(()) };
    let decision = policies.decide(caller, Action::WatchCopy, snapshot, None);
    DecisionEvent {
        caller,
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

impl Stream for Revocable {
    type Item = Result<pb::CopyEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let mut end = |status: Status| {
            *this.ended = true;
            Poll::Ready(Some(Err(status)))
        };
        if let Some(held) = this.key.as_mut() {
            let held = held.as_mut().project();
            let mut changes = held.changes;
            while changes.as_mut().poll_changed(held.key.changes(), cx).is_ready() {
                if !held.key.still_trusted() {
                    tracing::info!(
                        caller = this.caller.id,
                        "ending a watch: the key that signed its token left the JWKS"
                    );
                    return end(Status::unauthenticated(
                        "the key that signed this token was withdrawn; authenticate again",
                    ));
                }
            }
        }
        while this.reloads.as_mut().poll_changed(this.policies.reloads(), cx).is_ready() {
            if let Err(status) = still_permitted(this.policies, this.caller, this.last.as_ref()) {
                return end(status);
            }
        }
        match this.events.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => {
                let traced = this.traced.as_deref();
                if event.change != Change::Heartbeat {
                    tracing::debug!(
                        target: crate::telemetry::STREAM_EVENTS,
                        parent: traced.map(|t| t.span.id()).unwrap_or_default(),
                        change = ?event.change,
                        state = ?event.state,
                        percent = event.snapshot.percent_progress,
                        "copy progress"
                    );
                }
                *this.last = Some(event.snapshot.clone());
                Poll::Ready(Some(Ok(convert::event(event, traced.map_or("", |t| t.trace_id.as_str())))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Status::from(error)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
