//! One watcher's stream: a task turns observations into events and feeds a small bounded
//! channel. A slow client never makes the server buffer: the watch channel keeps only the
//! latest observation, so intermediate percentages may be skipped, but the terminal event is
//! always sent. A client that goes away is noticed at once (`Sender::closed`) and its
//! subscription and stream permit go with the task.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use crate::tasks::Tasks;
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
    pub permit: OwnedSemaphorePermit,
    pub deadline: Option<tokio::time::Instant>,
    pub heartbeat: Duration,
    pub shutdown: CancellationToken,
}

/// The events of one watch, as a `Stream`.
pub(crate) struct WatchStream {
    rx: mpsc::Receiver<Result<WatchEvent, Error>>,
}

impl WatchStream {
    /// A stream fed by another task (a queued copy's watch).
    pub(crate) fn from_receiver(rx: mpsc::Receiver<Result<WatchEvent, Error>>) -> WatchStream {
        WatchStream { rx }
    }
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Events buffered per stream; small on purpose (see the module comment).
const BUFFER: usize = 2;

pub(super) fn spawn(tasks: &Tasks, task: StreamTask) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tasks.spawn(run(task, tx));
    WatchStream { rx }
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

async fn run(mut task: StreamTask, tx: mpsc::Sender<Result<WatchEvent, Error>>) {
    let _permit = task.permit;
    let mut last = match event(&task.first, None) {
        Ok(first) => first,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let done = last.terminal;
    if tx.send(Ok(last.clone())).await.is_err() || done {
        return;
    }
    let deadline = async {
        match task.deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        let heartbeat = tokio::time::sleep(task.heartbeat);
        let next = tokio::select! {
            biased;
            () = task.shutdown.cancelled() => Err(Error::ShuttingDown),
            () = tx.closed() => return,
            () = &mut deadline => Err(Error::DeadlineExceeded),
            changed = task.subscription.rx.changed() => {
                if changed.is_err() {
                    Err(Error::ShuttingDown)
                } else {
                    let observation = task.subscription.rx.borrow_and_update().clone();
                    match observation.map(|o| event(&o, Some(&last))) {
                        // Nothing a watcher can see changed (a refreshed observation).
                        None => continue,
                        Some(Ok(e)) if e.change == Change::Heartbeat => continue,
                        Some(result) => result,
                    }
                }
            }
            () = heartbeat => Ok(WatchEvent { change: Change::Heartbeat, observed: SystemTime::now(), ..last.clone() }),
        };
        match next {
            Ok(event) => {
                let terminal = event.terminal;
                if event.change != Change::Heartbeat {
                    last = event.clone();
                }
                if tx.send(Ok(event)).await.is_err() || terminal {
                    return;
                }
            }
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        }
    }
}
