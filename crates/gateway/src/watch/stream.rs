//! One watcher's stream: a plain `Stream` over the snapshot's `watch` channel, polled by the
//! connection that carries it (as tonic-health's `Watch` is), with no task or buffer of its
//! own. A slow client never makes the server buffer: the watch channel keeps only the latest
//! observation, so intermediate percentages may be skipped, but the terminal event is always
//! sent. A client that goes away drops the stream, and with it its subscription and its
//! stream permit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::Stream;

use super::{Observation, Subscription, observed_state};
use crate::bell::Ringing;
use crate::error::Error;
use snapgate_domain::{ClusterSnapshot, CopyState};

/// What changed since the stream's previous event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Initial,
    State,
    Progress,
    Heartbeat,
    Terminal,
}

#[derive(Debug, Clone)]
pub(crate) struct WatchEvent {
    /// Shared by every stream that watches the snapshot.
    pub snapshot: Arc<ClusterSnapshot>,
    pub state: CopyState,
    pub observed: SystemTime,
    pub change: Change,
    pub terminal: bool,
    /// For a copy waiting in the gateway's queue: its place (1: next) and the limit it waits on.
    pub queue: Option<(i64, u32)>,
}

pub(super) struct StreamTask {
    pub subscription: Subscription,
    pub first: Arc<Observation>,
    /// Held while the stream lives.
    #[allow(dead_code)]
    pub permit: OwnedSemaphorePermit,
    pub deadline: Option<tokio::time::Instant>,
    pub heartbeat: Duration,
}

pin_project_lite::pin_project! {
    /// The events of one watch, as a `Stream`: the hub's, inline (the stream that serves it is
    /// one allocation, its waits included), or a queued copy's (`queued`), boxed.
    pub(crate) struct WatchStream {
        #[pin]
        inner: Source,
    }
}

/// A stream of events, boxed.
pub(crate) type Events = Pin<Box<dyn Stream<Item = Result<WatchEvent, Error>> + Send>>;

pin_project_lite::pin_project! {
    #[project = SourceProj]
    enum Source {
        Hub { #[pin] hub: HubStream },
        Boxed { events: Events },
    }
}

impl WatchStream {
    /// Any stream of events (a queued copy's watch).
    pub(crate) fn from_stream(events: impl Stream<Item = Result<WatchEvent, Error>> + Send + 'static) -> WatchStream {
        WatchStream { inner: Source::Boxed { events: Box::pin(events) } }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.project().inner.project() {
            SourceProj::Hub { hub } => hub.poll_next(cx),
            SourceProj::Boxed { events } => events.as_mut().poll_next(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// One watcher's stream, polled by hand, its waits inline: an `unfold` of async blocks kept
    /// the state twice and every timer and wait inline (~820 bytes), and tokio-stream's
    /// `WatchStream` boxed its wait for a change (~180 bytes), which at 100,000 streams is
    /// tens of megabytes.
    struct HubStream {
        // Keeps the snapshot in the poll set while the stream lives; its receiver is read
        // after each ring of its bell.
        subscription: Subscription,
        #[pin]
        changes: Ringing,
        // The first observation, until it is sent.
        first: Option<Arc<Observation>>,
        // The last event that was not a heartbeat; none before the first.
        last: Option<WatchEvent>,
        // A terminal event or an error was sent: the stream ends.
        ended: bool,
        // Held while the stream lives.
        _permit: OwnedSemaphorePermit,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
        #[pin]
        heartbeat: tokio::time::Sleep,
        every: Duration,
    }
}

/// The stream of `task`'s events: the first observation, then each change a watcher can see,
/// heartbeats while nothing changes, and an error at shutdown or the caller's deadline.
pub(super) fn stream(task: StreamTask) -> WatchStream {
    // The wait is made before the receiver is first looked at: no change is missed.
    let changes = task.subscription.bell.ringing();
    let hub = HubStream {
        subscription: task.subscription,
        changes,
        first: Some(task.first),
        last: None,
        ended: false,
        _permit: task.permit,
        deadline: task.deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        heartbeat: tokio::time::sleep(task.heartbeat),
        every: task.heartbeat,
    };
    WatchStream { inner: Source::Hub { hub } }
}

impl HubStream {
    /// Sends `outcome`: the stream ends after a terminal event or an error, and the next
    /// heartbeat is due a full interval from now.
    fn send(self: Pin<&mut Self>, outcome: Result<WatchEvent, Error>) -> Poll<Option<Result<WatchEvent, Error>>> {
        let this = self.project();
        match &outcome {
            Ok(event) => {
                *this.ended = event.terminal;
                if event.change != Change::Heartbeat {
                    *this.last = Some(event.clone());
                }
            }
            Err(_) => *this.ended = true,
        }
        let next = tokio::time::Instant::now() + *this.every;
        this.heartbeat.reset(next);
        Poll::Ready(Some(outcome))
    }
}

impl Stream for HubStream {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.as_mut().project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            let outcome = event(&first, None);
            return self.send(outcome);
        }
        if this.deadline.as_mut().is_some_and(|at| at.as_mut().poll(cx).is_ready()) {
            return self.send(Err(Error::DeadlineExceeded));
        }
        let mut changes = this.changes;
        loop {
            let observation = match this.subscription.rx.has_changed() {
                // The channel closed, which its entry's life rules out: told as at shutdown.
                Err(_) => return self.send(Err(Error::ShuttingDown)),
                Ok(true) => this.subscription.rx.borrow_and_update().clone(),
                Ok(false) => match changes.as_mut().poll_rung(cx) {
                    Poll::Ready(()) => continue,
                    Poll::Pending => break,
                },
            };
            match observation.map(|o| event(&o, this.last.as_ref())) {
                // Nothing a watcher can see changed (a refreshed observation).
                None | Some(Ok(WatchEvent { change: Change::Heartbeat, .. })) => continue,
                Some(outcome) => return self.send(outcome),
            }
        }
        if this.heartbeat.poll(cx).is_ready() {
            let Some(last) = &this.last else { return Poll::Pending };
            let beat = WatchEvent { change: Change::Heartbeat, observed: SystemTime::now(), ..last.clone() };
            return self.send(Ok(beat));
        }
        Poll::Pending
    }
}

/// Builds the event an observation makes, given the stream's last state, or the error that
/// ends the stream.
fn event(observation: &Observation, last: Option<&WatchEvent>) -> Result<WatchEvent, Error> {
    let (snapshot, observed) = match observation {
        Observation::Present { snapshot, observed, .. } => (snapshot.clone(), *observed),
        Observation::Gone { last: gone_last, observed, .. } => {
            let snapshot = gone_last.clone().or_else(|| last.map(|e| e.snapshot.clone())).unwrap_or_default();
            (snapshot, *observed)
        }
        Observation::Failing { error } => return Err(error.clone()),
    };
    let (state, percent) = observed_state(observation).unwrap_or((CopyState::Unknown, 0));
    let terminal = state.is_terminal();
    let change = match last {
        None => Change::Initial,
        Some(_) if terminal => Change::Terminal,
        Some(prev) if prev.state != state => Change::State,
        Some(prev) if prev.snapshot.percent_progress != percent => Change::Progress,
        Some(_) => Change::Heartbeat,
    };
    Ok(WatchEvent { snapshot, state, observed, change, terminal, queue: None })
}
