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

/// The events of one watch, as a `Stream`: the hub's, inline (the stream that serves it is
/// one allocation), or a queued copy's (`queued`), boxed.
pub(crate) struct WatchStream {
    inner: Source,
}

enum Source {
    Hub(HubStream),
    Boxed(Pin<Box<dyn Stream<Item = Result<WatchEvent, Error>> + Send>>),
}

impl WatchStream {
    /// Any stream of events (a queued copy's watch).
    pub(crate) fn from_stream(events: impl Stream<Item = Result<WatchEvent, Error>> + Send + 'static) -> WatchStream {
        WatchStream { inner: Source::Boxed(Box::pin(events)) }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.inner {
            Source::Hub(hub) => Pin::new(hub).poll_next(cx),
            Source::Boxed(events) => events.as_mut().poll_next(cx),
        }
    }
}

/// One watcher's stream, polled by hand: its state is a few hundred bytes, where an `unfold`
/// of async blocks kept the state twice and every timer and wait inline (~820 bytes), which at
/// 10,000 streams is megabytes.
struct HubStream {
    /// Keeps the snapshot in the poll set while the stream lives.
    _subscription: Subscription,
    /// The snapshot's observations as they change.
    changes: tokio_stream::wrappers::WatchStream<Option<Arc<Observation>>>,
    /// The first observation, until it is sent.
    first: Option<Arc<Observation>>,
    /// The last event that was not a heartbeat; none before the first.
    last: Option<WatchEvent>,
    /// A terminal event or an error was sent: the stream ends.
    ended: bool,
    _permit: OwnedSemaphorePermit,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    every: Duration,
}

/// The stream of `task`'s events: the first observation, then each change a watcher can see,
/// heartbeats while nothing changes, and an error at shutdown or the caller's deadline.
pub(super) fn stream(task: StreamTask) -> WatchStream {
    let changes = tokio_stream::wrappers::WatchStream::from_changes(task.subscription.rx.clone());
    let stream = HubStream {
        _subscription: task.subscription,
        changes,
        first: Some(task.first),
        last: None,
        ended: false,
        _permit: task.permit,
        deadline: task.deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
        heartbeat: Box::pin(tokio::time::sleep(task.heartbeat)),
        every: task.heartbeat,
    };
    WatchStream { inner: Source::Hub(stream) }
}

impl HubStream {
    /// Sends `outcome`: the stream ends after a terminal event or an error, and the next
    /// heartbeat is due a full interval from now.
    fn send(&mut self, outcome: Result<WatchEvent, Error>) -> Poll<Option<Result<WatchEvent, Error>>> {
        match &outcome {
            Ok(event) => {
                self.ended = event.terminal;
                if event.change != Change::Heartbeat {
                    self.last = Some(event.clone());
                }
            }
            Err(_) => self.ended = true,
        }
        let next = tokio::time::Instant::now() + self.every;
        self.heartbeat.as_mut().reset(next);
        Poll::Ready(Some(outcome))
    }
}

impl Stream for HubStream {
    type Item = Result<WatchEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(first) = this.first.take() {
            let outcome = event(&first, None);
            return this.send(outcome);
        }
        if this.deadline.as_mut().is_some_and(|at| at.as_mut().poll(cx).is_ready()) {
            return this.send(Err(Error::DeadlineExceeded));
        }
        loop {
            match Pin::new(&mut this.changes).poll_next(cx) {
                Poll::Ready(None) => return this.send(Err(Error::ShuttingDown)),
                Poll::Ready(Some(observation)) => match observation.map(|o| event(&o, this.last.as_ref())) {
                    // Nothing a watcher can see changed (a refreshed observation).
                    None | Some(Ok(WatchEvent { change: Change::Heartbeat, .. })) => continue,
                    Some(outcome) => return this.send(outcome),
                },
                Poll::Pending => break,
            }
        }
        if this.heartbeat.as_mut().poll(cx).is_ready() {
            let Some(last) = &this.last else { return Poll::Pending };
            let beat = WatchEvent { change: Change::Heartbeat, observed: SystemTime::now(), ..last.clone() };
            return this.send(Ok(beat));
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
