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

use futures_util::stream::BoxStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

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
    pub shutdown: CancellationToken,
}

/// The events of one watch, as a `Stream`.
pub(crate) struct WatchStream {
    inner: BoxStream<'static, Result<WatchEvent, Error>>,
}

impl WatchStream {
    /// A stream fed by another task (a queued copy's watch).
    pub(crate) fn from_receiver(rx: mpsc::Receiver<Result<WatchEvent, Error>>) -> WatchStream {
        WatchStream { inner: Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Where a stream stands between two of its events.
struct State {
    task: StreamTask,
    /// The last event that was not a heartbeat; none before the first.
    last: Option<WatchEvent>,
    /// A terminal event or an error was sent: the stream ends.
    ended: bool,
}

/// The stream of `task`'s events: the first observation, then each change a watcher can see,
/// heartbeats while nothing changes, and an error at shutdown or the caller's deadline.
pub(super) fn stream(task: StreamTask) -> WatchStream {
    let state = State { task, last: None, ended: false };
    WatchStream { inner: Box::pin(futures_util::stream::unfold(state, next)) }
}

async fn next(mut state: State) -> Option<(Result<WatchEvent, Error>, State)> {
    if state.ended {
        return None;
    }
    let outcome = match &state.last {
        None => event(&state.task.first, None),
        Some(last) => following(&mut state.task, last).await,
    };
    match &outcome {
        Ok(event) => {
            state.ended = event.terminal;
            if event.change != Change::Heartbeat {
                state.last = Some(event.clone());
            }
        }
        Err(_) => state.ended = true,
    }
    Some((outcome, state))
}

/// The event after `last`: a change, a heartbeat, or the error that ends the stream.
async fn following(task: &mut StreamTask, last: &WatchEvent) -> Result<WatchEvent, Error> {
    let deadline = async {
        match task.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let heartbeat = tokio::time::sleep(task.heartbeat);
    tokio::pin!(heartbeat);
    loop {
        tokio::select! {
            biased;
            () = task.shutdown.cancelled() => return Err(Error::ShuttingDown),
            () = &mut deadline => return Err(Error::DeadlineExceeded),
            changed = task.subscription.rx.changed() => {
                if changed.is_err() {
                    return Err(Error::ShuttingDown);
                }
                let observation = task.subscription.rx.borrow_and_update().clone();
                match observation.map(|o| event(&o, Some(last))) {
                    // Nothing a watcher can see changed (a refreshed observation).
                    None => continue,
                    Some(Ok(e)) if e.change == Change::Heartbeat => continue,
                    Some(result) => return result,
                }
            }
            () = &mut heartbeat => {
                return Ok(WatchEvent { change: Change::Heartbeat, observed: SystemTime::now(), ..last.clone() });
            }
        }
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
