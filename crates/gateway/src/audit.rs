//! The audit trail: one record per refused authentication, per authorization decision, per
//! copy job's start and end, per plan applied or deleted and per snapshot a plan expired.
//! CloudTrail shows only the gateway's role; this is the record of who asked. Records carry
//! identities, resources and decisions, never a token, key or presigned URL.
//!
//! A record is one JSON object a line (`timestamp`, `target` = `snapgate::audit`, `event`, then
//! the event's fields; absent fields are left out), built straight into one buffer, without the
//! general-purpose log formatter's per-field work, and queued to a writer thread of its own
//! (`snapgate-audit`) that writes what has queued up in one system call (at most
//! [`BATCH_BYTES`], so a batch is never split among other writers' lines on a pipe). The queue
//! holds `[audit] queue_records`; when it is full the record is dropped and counted
//! (`snapgate_audit_records_dropped_total`): a sink that cannot keep up never delays a call.
//! Records go to standard error beside the log lines, or to `[audit] path`, whatever `RUST_LOG`
//! says.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{Datelike, Timelike};

use crate::auth::policy::{Action, Decision};
use crate::auth::{AuthError, Caller};
use crate::config::AuditSettings;
use crate::telemetry::AUDIT_TARGET;

/// The most a write of the writer thread carries: `PIPE_BUF`, the size up to which Linux
/// writes to a pipe whole, never interleaved with the log writer's lines.
pub(crate) const BATCH_BYTES: usize = 4096;

/// How long the writer lets records gather after the first of a batch arrives.
const LINGER: Duration = Duration::from_millis(10);

enum Message {
    Record(Vec<u8>),
    /// Answered once everything queued before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// The queue and its writer thread.
pub(crate) struct Trail {
    queue: SyncSender<Message>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    written: AtomicU64,
    dropped: AtomicU64,
}

impl Trail {
    /// A trail writing to `sink` from a thread of its own, `capacity` records queued at most.
    pub(crate) fn new(sink: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Trail> {
        let (queue, records) = std::sync::mpsc::sync_channel(capacity.max(1));
        let counts = Arc::new(Counts::default());
        let written = counts.clone();
        // The thread ends when the trail (the queue's one sender) is dropped.
        std::thread::Builder::new().name("snapgate-audit".into()).spawn(move || write_all(records, sink, &written))?;
        Ok(Trail { queue, counts })
    }

    /// Queues `record`; drops and counts it when the queue is full.
    fn send(&self, record: Vec<u8>) {
        match self.queue.try_send(Message::Record(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits until what was queued before is written, `timeout` at most; whether it was.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (done, written) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Message::Flush(done);
        // A full queue: wait for room, up to the deadline, rather than drop the flush.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if std::time::Instant::now() < deadline => {
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return false,
            }
        }
        written.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())).is_ok()
    }

    /// Records written so far.
    pub(crate) fn written(&self) -> u64 {
        self.counts.written.load(Ordering::Relaxed)
    }

    /// Records dropped so far: the queue was full, or the sink refused them.
    pub(crate) fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: takes what has queued up, writes it in batches of whole records.
fn write_all(records: Receiver<Message>, mut sink: Box<dyn Write + Send>, counts: &Counts) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut in_batch = 0u64;
    let mut flushes = Vec::new();
    let write = |batch: &mut Vec<u8>, in_batch: &mut u64, sink: &mut Box<dyn Write + Send>| {
        if batch.is_empty() {
            return;
        }
        if sink.write_all(batch).is_ok() {
            counts.written.fetch_add(*in_batch, Ordering::Relaxed);
        } else {
            counts.dropped.fetch_add(*in_batch, Ordering::Relaxed);
        }
        batch.clear();
        *in_batch = 0;
    };
    loop {
        // Blocks until something comes; ends when the trail is gone.
        let mut next = match records.recv() {
            Ok(message) => Some(message),
            Err(_) => break,
        };
        // Lingers before taking what has queued, so that a burst of calls wakes this thread
        // once rather than once a record: asleep on a timer it is not the queue's waiter, and a
        // call queuing a record makes no wake-up (nor a switch of the CPU to this thread).
        std::thread::sleep(LINGER);
        while let Some(message) = next.take() {
            match message {
                Message::Record(record) => {
                    if batch.len() + record.len() > BATCH_BYTES {
                        write(&mut batch, &mut in_batch, &mut sink);
                    }
                    batch.extend_from_slice(&record);
                    in_batch += 1;
                }
                Message::Flush(done) => flushes.push(done),
            }
            next = records.try_recv().ok();
        }
        write(&mut batch, &mut in_batch, &mut sink);
        let _ = sink.flush();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    write(&mut batch, &mut in_batch, &mut sink);
    let _ = sink.flush();
}

static TRAIL: OnceLock<Trail> = OnceLock::new();

/// Sends the process's records where `settings` say; the first call decides (a process holds
/// one trail), later ones are ignored.
pub(crate) fn install(settings: &AuditSettings) -> std::io::Result<()> {
    if TRAIL.get().is_some() {
        return Ok(());
    }
    let sink: Box<dyn Write + Send> = match &settings.path {
        Some(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        None => Box::new(std::io::stderr()),
    };
    let _ = TRAIL.set(Trail::new(sink, settings.queue_records)?);
    Ok(())
}

/// The process's trail (standard error and the default queue if nothing installed another).
fn trail() -> Option<&'static Trail> {
    if let Some(trail) = TRAIL.get() {
        return Some(trail);
    }
    let _ = install(&AuditSettings::default());
    TRAIL.get()
}

/// Records written by the process's trail so far.
pub(crate) fn records_written() -> u64 {
    TRAIL.get().map_or(0, Trail::written)
}

/// Records the process's trail dropped so far.
pub(crate) fn records_dropped() -> u64 {
    TRAIL.get().map_or(0, Trail::dropped)
}

/// Writes what is queued (at exit), waiting `timeout` at most.
pub(crate) fn flush(timeout: Duration) {
    if let Some(trail) = TRAIL.get() {
        trail.flush(timeout);
    }
}

/// One record being built: a JSON object in one buffer.
struct Record(Vec<u8>);

impl Record {
    fn new(event: &str) -> Record {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(b"{\"timestamp\":\"");
        let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
        let _ = write!(
            buf,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            now.year(),
            now.month(),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.timestamp_subsec_micros().min(999_999)
        );
        buf.extend_from_slice(b"\",\"target\":\"");
        buf.extend_from_slice(AUDIT_TARGET.as_bytes());
        buf.extend_from_slice(b"\"");
        Record(buf).str("event", event)
    }

    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(mut self, key: &str, value: &str) -> Record {
        self.key(key);
        self.0.push(b'"');
        escape_into(&mut self.0, value);
        self.0.push(b'"');
        self
    }

    fn opt(self, key: &str, value: Option<&str>) -> Record {
        match value {
            Some(value) => self.str(key, value),
            None => self,
        }
    }

    /// A value written by its `Display`, escaped as it is written.
    fn display(mut self, key: &str, value: impl std::fmt::Display) -> Record {
        self.key(key);
        self.0.push(b'"');
        let _ = write!(Escaping(&mut self.0), "{value}");
        self.0.push(b'"');
        self
    }

    fn num(mut self, key: &str, value: i64) -> Record {
        self.key(key);
        let _ = write!(self.0, "{value}");
        self
    }

    fn list(mut self, key: &str, values: &[String]) -> Record {
        self.key(key);
        self.0.push(b'[');
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.0.push(b'"');
            escape_into(&mut self.0, value);
            self.0.push(b'"');
        }
        self.0.push(b']');
        self
    }

    /// The trace and span ids of the call the record is made in, when it is traced.
    fn traced(self) -> Record {
        match crate::telemetry::ids_of(&tracing::Span::current()) {
            Some((trace_id, span_id)) => self.str("trace_id", &trace_id).str("span_id", &span_id),
            None => self,
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"}\n");
        self.0
    }

    fn emit(self) {
        if let Some(trail) = trail() {
            trail.send(self.finish());
        }
    }
}

/// JSON string escaping: quotes, backslashes and control characters; the rest is UTF-8 as is.
fn escape_into(buf: &mut Vec<u8>, value: &str) {
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            let _ = write!(buf, "\\u{b:04x}");
        } else {
            buf.extend_from_slice(escape);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
}

/// `fmt::Write` into a record, escaped.
struct Escaping<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// A call refused before it reached a handler.
pub(crate) fn unauthenticated(method: &str, error: &AuthError, remote: Option<SocketAddr>) {
    let record = Record::new("authentication").str("method", method).str("decision", "unauthenticated");
    let record = record.display("reason", error);
    let record = match remote {
        Some(remote) => record.display("remote", remote),
        None => record,
    };
    record.traced().emit();
}

/// An authorization decision about `resource` (a snapshot ARN); for copies, where it goes
/// and, once AWS answered, its request id and outcome.
pub(crate) struct DecisionEvent<'a> {
    pub caller: &'a Caller,
    pub action: Action,
    pub resource: &'a str,
    pub destination: Option<String>,
    pub decision: &'a Decision,
    pub aws_request_id: Option<&'a str>,
    /// "ok" or the error the call ended with, for allowed calls that went to AWS.
    pub outcome: Option<&'a str>,
}

impl DecisionEvent<'_> {
    /// Records a decision that is not (yet) followed by an AWS call of its own.
    pub(crate) fn decided(
        caller: &Caller,
        action: Action,
        resource: &str,
        destination: Option<String>,
        decision: &Decision,
    ) {
        DecisionEvent { caller, action, resource, destination, decision, aws_request_id: None, outcome: None }.emit();
    }

    pub(crate) fn emit(&self) {
        self.record().emit();
    }

    fn record(&self) -> Record {
        Record::new("authorization")
            .str("caller", &self.caller.id)
            .str("authn", self.caller.method.as_str())
            .str("action", self.action.name())
            .str("resource", self.resource)
            .opt("destination", self.destination.as_deref())
            .str("decision", if self.decision.allowed { "allow" } else { "deny" })
            .list("policies", &self.decision.policies)
            .opt("aws_request_id", self.aws_request_id)
            .opt("outcome", self.outcome)
            .traced()
    }
}

/// A ListCopies page: how many of its copies policies let the caller see, and how many not
/// (one record a page, not one a copy).
pub(crate) fn list_decision(caller: &Caller, shown: usize, hidden: usize) {
    list_decision_of(Action::ListCopies, caller, shown, hidden);
}

/// A listing (ListCopies, ListPlans): how many entries policies let the caller see, and how
/// many not.
pub(crate) fn list_decision_of(action: Action, caller: &Caller, shown: usize, hidden: usize) {
    Record::new("authorization")
        .str("caller", &caller.id)
        .str("authn", caller.method.as_str())
        .str("action", action.name())
        .num("shown", shown as i64)
        .num("hidden", hidden as i64)
        .traced()
        .emit();
}

/// A copy job's start or end, with the AWS request id that started it.
pub(crate) fn job_event(event: &str, job: &crate::store::Job, aws_request_id: Option<&str>, failure: Option<&str>) {
    let j = &job.new;
    Record::new("copy_job")
        .str("job_event", event)
        .str("job", &j.id)
        .str("caller", &j.caller)
        .str("source", &j.source_arn)
        .display("destination", format_args!("{}/{}/{}", j.account, j.region, j.target))
        .opt("aws_request_id", aws_request_id)
        .opt("failure", failure)
        .emit();
}

/// A DR plan's run deleting one of its own old copies (or finding it gone), with the request id
/// of the delete: the audit trail of every snapshot the gateway ever deletes by retention.
pub(crate) fn plan_expiry(plan: &str, run: &str, owner: &str, copy: &str, aws_request_id: Option<&str>, how: &str) {
    Record::new("plan_expiry")
        .str("plan", plan)
        .str("run", run)
        .str("caller", owner)
        .str("resource", copy)
        .opt("aws_request_id", aws_request_id)
        .str("outcome", how)
        .emit();
}

/// A DR plan applied or deleted.
pub(crate) fn plan_event(event: &str, plan: &str, caller: &Caller, generation: i64) {
    Record::new("plan")
        .str("plan_event", event)
        .str("plan", plan)
        .str("caller", &caller.id)
        .num("generation", generation)
        .emit();
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::auth::AuthMethod;

    /// A sink that keeps what is written, and holds the writer while `gate` is locked.
    #[derive(Clone, Default)]
    struct Sink {
        written: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.gate.lock().map_err(|_| std::io::Error::other("poisoned"))?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn caller() -> Caller {
        Caller { id: "svc-\"payments\"".into(), method: AuthMethod::Jwt, groups: Vec::new(), team: None, issuer: None }
    }

    fn lines(sink: &Sink) -> Vec<serde_json::Value> {
        let written = sink.written.lock().unwrap().clone();
        String::from_utf8(written).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_decision_is_one_json_line_with_who_what_which_and_why() {
        let sink = Sink::default();
        let trail = Trail::new(Box::new(sink.clone()), 16).unwrap();
        let decision =
            Decision { allowed: true, policies: vec!["platform-team".into(), "reads".into()], errors: Vec::new() };
        let event = DecisionEvent {
            caller: &caller(),
            action: Action::GetCopy,
            resource: "arn:aws:rds:us-east-1:111111111111:cluster-snapshot:orders-1",
            destination: None,
            decision: &decision,
            aws_request_id: None,
            outcome: Some("ok\nnext"),
        };
        trail.send(event.record().finish());
        assert!(trail.flush(Duration::from_secs(5)));
        let lines = lines(&sink);
        assert_eq!(lines.len(), 1);
        let r = &lines[0];
        assert_eq!(r["target"], "snapgate::audit");
        assert_eq!(r["event"], "authorization");
        assert_eq!(r["caller"], "svc-\"payments\"");
        assert_eq!(r["authn"], "jwt");
        assert_eq!(r["action"], "GetCopy");
        assert_eq!(r["resource"], "arn:aws:rds:us-east-1:111111111111:cluster-snapshot:orders-1");
        assert_eq!(r["decision"], "allow");
        assert_eq!(r["policies"], serde_json::json!(["platform-team", "reads"]));
        assert_eq!(r["outcome"], "ok\nnext");
        assert!(r.get("aws_request_id").is_none(), "absent fields are left out");
        let stamp = r["timestamp"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(stamp).is_ok(), "{stamp}");
        assert_eq!((trail.written(), trail.dropped()), (1, 0));
    }

    #[test]
    fn escaping_keeps_every_string_valid_json() {
        for value in ["plain", "quote \" and \\ backslash", "ctl \u{1} \u{1f} \u{7f} tab\t", "ünï ☃", ""] {
            let mut buf = b"\"".to_vec();
            escape_into(&mut buf, value);
            buf.push(b'"');
            let parsed: String = serde_json::from_slice(&buf).unwrap();
            assert_eq!(parsed, value);
        }
    }

    #[test]
    fn a_full_queue_drops_records_and_counts_them_without_waiting_for_the_sink() {
        let sink = Sink::default();
        // The sink is held: the writer thread blocks on its first write.
        let held = sink.gate.lock().unwrap();
        let trail = Trail::new(Box::new(sink.clone()), 4).unwrap();
        // Every send returns while the sink is held: none waits for it (a send that waited
        // would never return, and the test would not end).
        for i in 0..100 {
            trail.send(Record::new("authorization").num("i", i).finish());
        }
        let dropped = trail.dropped();
        // Four wait in the queue and the writer took at most one batch out of it.
        assert!((100 - 4 - BATCH_BYTES as u64 / 60..=96).contains(&dropped), "dropped {dropped}");
        drop(held);
        assert!(trail.flush(Duration::from_secs(5)));
        let lines = lines(&sink);
        assert_eq!(lines.len() as u64, 100 - dropped);
        assert_eq!(trail.written() + trail.dropped(), 100);
        // What was kept is whole and in order.
        let kept: Vec<i64> = lines.iter().map(|l| l["i"].as_i64().unwrap()).collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
    }

    #[test]
    fn records_queued_together_are_written_in_few_writes_of_whole_lines() {
        let sink = Sink::default();
        let held = sink.gate.lock().unwrap();
        let trail = Trail::new(Box::new(sink.clone()), 1000).unwrap();
        for i in 0..200 {
            trail.send(Record::new("authorization").num("i", i).str("resource", &"x".repeat(100)).finish());
        }
        drop(held);
        assert!(trail.flush(Duration::from_secs(5)));
        assert_eq!(lines(&sink).len(), 200);
        let writes = sink.writes.load(Ordering::Relaxed);
        // ~190 bytes a record, 4096 bytes a write at most: ~10 writes, not 200.
        assert!(writes <= 15, "{writes} writes");
    }
}
