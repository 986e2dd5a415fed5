//! The client commands: `copy`, `get`, `watch`, `cancel`, `list` and `wait`, speaking gRPC to a
//! gateway through `snapgate-client`. Made for CI jobs and workflow engines: configured once by
//! `SNAPGATE_*` variables, waits that survive gateway restarts, a progress bar on a terminal,
//! one line per change elsewhere, NDJSON with `--output json`, and exit codes that say how a
//! copy ended (the table is [`Outcome`]'s, and the README's).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use snapgate_client::{Client, ClientConfig, ClientError, GatewayAddr, pb};
use tonic::Code;

/// How a client command ended; its exit code. Several copies: the worst (highest) one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// The copy is AVAILABLE (or the call succeeded).
    Available = 0,
    /// The copy FAILED.
    Failed = 1,
    /// The copy was CANCELLED or DELETED.
    Cancelled = 3,
    /// The wait's --timeout passed first.
    TimedOut = 4,
    /// No such copy (or source).
    NotFound = 5,
    /// The gateway refused the call: unauthenticated, permission denied, invalid argument,
    /// failed precondition, already exists.
    Refused = 6,
    /// The gateway could not be reached (or stayed unavailable).
    Unreachable = 7,
    /// Anything else (an internal error of the gateway).
    Other = 8,
}

impl Outcome {
    fn of_copy(copy: &pb::Copy) -> Outcome {
        match copy.state() {
            pb::copy::State::Available => Outcome::Available,
            pb::copy::State::Failed => Outcome::Failed,
            pb::copy::State::Cancelled | pb::copy::State::Deleted => Outcome::Cancelled,
            _ => Outcome::Available,
        }
    }

    fn of_error(error: &ClientError) -> Outcome {
        match error {
            ClientError::Unreachable { .. } => Outcome::Unreachable,
            ClientError::TimedOut(..) => Outcome::TimedOut,
            ClientError::Config(_) => Outcome::Refused,
            ClientError::Status(status) => match status.code() {
                Code::NotFound => Outcome::NotFound,
                Code::Unauthenticated
                | Code::PermissionDenied
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::AlreadyExists
                | Code::ResourceExhausted => Outcome::Refused,
                Code::Unavailable | Code::DeadlineExceeded => Outcome::Unreachable,
                _ => Outcome::Other,
            },
        }
    }

    fn word(self) -> &'static str {
        match self {
            Outcome::Available => "available",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::NotFound => "not_found",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Other => "error",
        }
    }

    fn exit(self) -> ExitCode {
        ExitCode::from(self as u8)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Lines for people (a progress bar on a terminal).
    Text,
    /// One JSON object per event (NDJSON), then one per result.
    Json,
}

/// Where the gateway is and who calls it; every flag has its `SNAPGATE_` variable.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// The gateway: HOST:PORT (TLS when --ca-cert or --client-cert is given), http://HOST:PORT,
    /// or https://HOST:PORT.
    #[arg(long, env = "SNAPGATE_ADDR", default_value = "127.0.0.1:50051", global = true)]
    addr: GatewayAddr,
    /// Bearer token (JWT or static token).
    #[arg(long, env = "SNAPGATE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CAs of the gateway's certificate (https).
    #[arg(long, env = "SNAPGATE_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for mTLS.
    #[arg(long, env = "SNAPGATE_CLIENT_CERT", global = true, requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "SNAPGATE_CLIENT_KEY", global = true, requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// text, or json (NDJSON events and results).
    #[arg(long, value_enum, default_value = "text", env = "SNAPGATE_OUTPUT", global = true)]
    output: Output,
    /// Seconds to keep retrying a call the gateway refused with a delay to wait (a caller over
    /// its share, a gateway shedding load or restarting); 0: never.
    #[arg(long, env = "SNAPGATE_RETRY_SECS", default_value_t = 120, global = true)]
    retry_secs: u64,
}

impl Connection {
    pub(crate) fn output(&self) -> Output {
        self.output
    }

    pub(crate) async fn client(&self) -> Result<Client, ClientError> {
        let config = ClientConfig {
            token: self.token.clone(),
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone().zip(self.client_key.clone()),
            retry_for: std::time::Duration::from_secs(self.retry_secs),
            ..ClientConfig::new(self.addr.to_string())
        };
        Client::connect(&config).await
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CopyArgs {
    /// The snapshot to copy (identifier, or ARN for another region or account).
    source: Option<String>,
    /// The new snapshot's identifier.
    target: Option<String>,
    /// Many copies: a file with one `SOURCE TARGET` per line (`-` reads standard input); the
    /// other flags apply to each.
    #[arg(long, conflicts_with_all = ["source", "target"])]
    from_file: Option<PathBuf>,
    #[arg(long)]
    kms_key_id: Option<String>,
    #[arg(long)]
    copy_tags: bool,
    /// A tag KEY=VALUE for the copy (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    #[arg(long)]
    source_region: Option<String>,
    #[arg(long)]
    destination_region: Option<String>,
    #[arg(long)]
    destination_account: Option<String>,
    /// Wait for the copies to end; the exit code says how.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    waiting: WaitOptions,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct WaitOptions {
    /// Give up waiting after this long (e.g. 90s, 45m, 6h).
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct NamesArgs {
    /// Copies, by name (snapshot ARN, or identifier in the gateway's default region).
    #[arg(required = true)]
    names: Vec<String>,
    #[command(flatten)]
    waiting: WaitOptions,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct NameArgs {
    name: String,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    copy: NameArgs,
    /// Ask AWS now instead of taking the gateway's latest observation (at most a poll
    /// interval old); spends one AWS call.
    #[arg(long)]
    fresh: bool,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ListArgs {
    /// Only copies in these states (queued, copying, available, failed, cancelled, deleted).
    #[arg(long = "state", value_parser = parse_state)]
    states: Vec<pb::copy::State>,
    #[arg(long)]
    destination_region: Option<String>,
    #[arg(long)]
    account: Option<String>,
    /// Only copies this caller asked for (a principal id).
    #[arg(long)]
    requested_by: Option<String>,
    /// Copies at most (every page is fetched up to this).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    connection: Connection,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| "expected KEY=VALUE".to_owned())
}

fn parse_state(text: &str) -> Result<pb::copy::State, String> {
    pb::copy::State::from_str_name(&text.to_ascii_uppercase())
        .ok_or_else(|| format!("'{text}' is not a state of a copy"))
}

/// `90`, `90s`, `45m`, `6h`, `2d`, `500ms`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration (like 90s, 45m, 6h)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(format!("'{text}': the unit must be ms, s, m, h or d")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is not a usable duration"))
}

/// Prints what happens to the copies being followed: a bar per copy on a terminal, a line
/// per change otherwise, or NDJSON.
pub(crate) struct Reporter {
    output: Output,
    bars: Option<MultiProgress>,
}

impl Reporter {
    pub(crate) fn new(output: Output) -> Reporter {
        let bars = (output == Output::Text && std::io::stderr().is_terminal()).then(MultiProgress::new);
        Reporter { output, bars }
    }

    fn bar(&self, name: &str) -> Option<ProgressBar> {
        let bars = self.bars.as_ref()?;
        let bar = bars.add(ProgressBar::new(100));
        let style = ProgressStyle::with_template("{prefix:30!} [{bar:30}] {pos:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(short(name).to_owned());
        Some(bar)
    }

    fn event(&self, name: &str, event: &pb::CopyEvent, bar: Option<&ProgressBar>) {
        let Some(copy) = &event.copy else { return };
        match (self.output, bar) {
            (Output::Json, _) => println!("{}", json!({ "event": change(event), "copy": copy_json(copy) })),
            (Output::Text, Some(bar)) => {
                bar.set_position(u64::try_from(copy.percent_progress.clamp(0, 100)).unwrap_or(0));
                bar.set_message(state_text(copy));
            }
            (Output::Text, None) => {
                if event.change() != pb::copy_event::Change::Heartbeat {
                    eprintln!("{}: {} {}%", short(name), state_text(copy), copy.percent_progress);
                }
            }
        }
    }

    fn result(
        &self,
        name: &str,
        outcome: Outcome,
        copy: Option<&pb::Copy>,
        error: Option<&ClientError>,
        bar: Option<&ProgressBar>,
    ) {
        if let Some(bar) = bar {
            bar.finish_with_message(format!("{} ({})", outcome.word(), copy.map(state_text).unwrap_or_default()));
        }
        match self.output {
            Output::Json => {
                let mut object = json!({ "name": name, "outcome": outcome.word(), "exit_code": outcome as u8 });
                if let Some(copy) = copy {
                    object["copy"] = copy_json(copy);
                }
                if let Some(error) = error {
                    object["error"] = json!(error.to_string());
                }
                println!("{object}");
            }
            Output::Text => match (copy, error) {
                (_, Some(error)) => eprintln!("{}: {}: {error}", short(name), outcome.word()),
                (Some(copy), None) => println!("{} {}", copy_name(copy, name), state_text(copy)),
                (None, None) => println!("{name} {}", outcome.word()),
            },
        }
    }
}

fn short(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

fn copy_name<'a>(copy: &'a pb::Copy, fallback: &'a str) -> &'a str {
    if copy.name.is_empty() { fallback } else { &copy.name }
}

fn state_text(copy: &pb::Copy) -> String {
    let state = copy.state().as_str_name().to_ascii_lowercase();
    match copy.state() {
        pb::copy::State::Queued if copy.queue_position > 0 => {
            format!("queued (#{} of the queue, limit {})", copy.queue_position, copy.queue_limit)
        }
        pb::copy::State::Failed if !copy.failure_reason.is_empty() => format!("failed: {}", copy.failure_reason),
        _ => state,
    }
}

fn change(event: &pb::CopyEvent) -> String {
    event.change().as_str_name().to_ascii_lowercase()
}

fn timestamp(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    match t {
        Some(t) => json!(format!("{}.{:09}", t.seconds, t.nanos)),
        None => serde_json::Value::Null,
    }
}

fn copy_json(c: &pb::Copy) -> serde_json::Value {
    json!({
        "name": c.name,
        "snapshot_id": c.snapshot_id,
        "region": c.region,
        "account_id": c.account_id,
        "state": c.state().as_str_name(),
        "aws_status": c.aws_status,
        "percent_progress": c.percent_progress,
        "source_snapshot_arn": c.source_snapshot_arn,
        "engine": c.engine,
        "storage_encrypted": c.storage_encrypted,
        "kms_key_id": c.kms_key_id,
        "queue_position": c.queue_position,
        "queue_limit": c.queue_limit,
        "requested_by": c.requested_by,
        "failure_reason": c.failure_reason,
        "create_time": timestamp(&c.create_time),
        "request_time": timestamp(&c.request_time),
        "tags": c.tags.iter().map(|t| json!({"key": t.key, "value": t.value})).collect::<Vec<_>>(),
    })
}

/// Follows each copy to its end, all at once; returns the worst outcome.
async fn wait_all(client: &Client, names: Vec<String>, timeout: Duration, reporter: &Reporter) -> Outcome {
    let mut waits = Vec::with_capacity(names.len());
    for name in names {
        let bar = reporter.bar(&name);
        let client = client.clone();
        waits.push(async move {
            let result = client.wait(&name, timeout, |event| reporter.event(&name, event, bar.as_ref())).await;
            let outcome = match &result {
                Ok(copy) => Outcome::of_copy(copy),
                Err(error) => Outcome::of_error(error),
            };
            let last = match &result {
                Ok(copy) => Some(copy.clone()),
                Err(ClientError::TimedOut(_, last)) => last.as_deref().cloned(),
                Err(_) => None,
            };
            reporter.result(&name, outcome, last.as_ref(), result.as_ref().err(), bar.as_ref());
            outcome
        });
    }
    let outcomes = futures_util::future::join_all(waits).await;
    summary(reporter, &outcomes);
    outcomes.into_iter().max().unwrap_or(Outcome::Available)
}

fn summary(reporter: &Reporter, outcomes: &[Outcome]) {
    if outcomes.len() < 2 {
        return;
    }
    let mut counts = std::collections::BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.word()).or_insert(0) += 1;
    }
    match reporter.output {
        Output::Json => println!("{}", json!({ "summary": counts, "copies": outcomes.len() })),
        Output::Text => {
            let parts: Vec<String> = counts.iter().map(|(word, n)| format!("{n} {word}")).collect();
            eprintln!("{} copies: {}", outcomes.len(), parts.join(", "));
        }
    }
}

pub(crate) fn fail(reporter: &Reporter, name: &str, error: &ClientError) -> ExitCode {
    let outcome = Outcome::of_error(error);
    reporter.result(name, outcome, None, Some(error), None);
    outcome.exit()
}

/// `copy`: one copy, or many from a file; with `--wait`, follows them to the end.
pub(crate) async fn copy(args: CopyArgs) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::new(args.connection.output);
    let pairs: Vec<(String, String)> = match (&args.from_file, &args.source, &args.target) {
        (Some(path), _, _) => read_pairs(path)?,
        (None, Some(source), Some(target)) => vec![(source.clone(), target.clone())],
        _ => anyhow::bail!("give SOURCE and TARGET, or --from-file FILE"),
    };
    let client = match args.connection.client().await {
        Ok(client) => client,
        Err(error) => return Ok(fail(&reporter, "snapgate", &error)),
    };
    let requests = pairs.into_iter().map(|(source, target)| pb::CopyClusterSnapshotRequest {
        source_snapshot: source,
        target_snapshot_id: target,
        kms_key_id: args.kms_key_id.clone().unwrap_or_default(),
        copy_tags: args.copy_tags,
        tags: args.tags.iter().map(|(k, v)| pb::Tag { key: k.clone(), value: v.clone() }).collect(),
        source_region: args.source_region.clone().unwrap_or_default(),
        destination_region: args.destination_region.clone().unwrap_or_default(),
        destination_account: args.destination_account.clone().unwrap_or_default(),
    });
    let mut worst = Outcome::Available;
    let mut admitted = Vec::new();
    let calls: Vec<_> = requests
        .map(|request| {
            let client = client.clone();
            async move {
                let target = request.target_snapshot_id.clone();
                (target, client.copy(request).await)
            }
        })
        .collect();
    // All asked for at once; the gateway queues what exceeds AWS's limit.
    for (target, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(copy) => {
                if !args.wait {
                    reporter.result(&target, Outcome::Available, Some(&copy), None, None);
                }
                admitted.push(copy_name(&copy, &target).to_owned());
            }
            Err(error) => worst = worst.max(Outcome::of_error(&error)).max(fail_outcome(&reporter, &target, &error)),
        }
    }
    if args.wait && !admitted.is_empty() {
        worst = worst.max(wait_all(&client, admitted, args.waiting.timeout, &reporter).await);
    }
    Ok(worst.exit())
}

fn fail_outcome(reporter: &Reporter, name: &str, error: &ClientError) -> Outcome {
    let outcome = Outcome::of_error(error);
    reporter.result(name, outcome, None, Some(error), None);
    outcome
}

fn read_pairs(path: &PathBuf) -> anyhow::Result<Vec<(String, String)>> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
    };
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some(source), Some(target), None) => pairs.push((source.to_owned(), target.to_owned())),
            _ => anyhow::bail!("{}:{}: expected SOURCE TARGET", path.display(), i + 1),
        }
    }
    anyhow::ensure!(!pairs.is_empty(), "{}: no copies in the file", path.display());
    Ok(pairs)
}

/// `wait` (and `watch`): follow copies to their end; the exit code says how they ended.
pub(crate) async fn wait(args: NamesArgs) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::new(args.connection.output);
    let client = match args.connection.client().await {
        Ok(client) => client,
        Err(error) => return Ok(fail(&reporter, "snapgate", &error)),
    };
    Ok(wait_all(&client, args.names, args.waiting.timeout, &reporter).await.exit())
}

/// `get`: a copy's state now.
pub(crate) async fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let fresh = args.fresh;
    one_copy(args.copy, |client, name| async move { client.get_with(&name, fresh).await }).await
}

/// `cancel`: cancel a copy (a queued one leaves the queue; one in progress is deleted).
pub(crate) async fn cancel(args: NameArgs) -> anyhow::Result<ExitCode> {
    one_copy(args, |client, name| async move { client.cancel(&name).await }).await
}

/// A call about one copy that answers the copy: printed, exit 0; or the error's code.
async fn one_copy<F, Fut>(args: NameArgs, call: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<pb::Copy, ClientError>>,
{
    let reporter = Reporter::new(args.connection.output);
    let result = match args.connection.client().await {
        Ok(client) => call(client, args.name.clone()).await,
        Err(error) => Err(error),
    };
    Ok(match result {
        Ok(copy) => {
            reporter.result(&args.name, Outcome::Available, Some(&copy), None, None);
            ExitCode::SUCCESS
        }
        Err(error) => fail(&reporter, &args.name, &error),
    })
}

/// `list`: the gateway's copies, newest first.
pub(crate) async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::new(args.connection.output);
    let client = match args.connection.client().await {
        Ok(client) => client,
        Err(error) => return Ok(fail(&reporter, "snapgate", &error)),
    };
    let mut request = pb::ListCopiesRequest {
        page_size: 500,
        states: args.states.iter().map(|s| *s as i32).collect(),
        destination_region: args.destination_region.clone().unwrap_or_default(),
        account_id: args.account.clone().unwrap_or_default(),
        requested_by: args.requested_by.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut shown = 0;
    loop {
        let page = match client.list(request.clone()).await {
            Ok(page) => page,
            Err(error) => return Ok(fail(&reporter, "list", &error)),
        };
        for copy in page.copies.iter().take(args.limit - shown) {
            match reporter.output {
                Output::Json => println!("{}", copy_json(copy)),
                Output::Text => println!("{}\t{}\t{}", copy_name(copy, ""), state_text(copy), copy.requested_by),
            }
            shown += 1;
        }
        if page.next_page_token.is_empty() || shown >= args.limit {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45m"), Ok(Duration::from_secs(2700)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn the_worst_outcome_is_the_exit_code() {
        assert!(Outcome::Failed > Outcome::Available);
        assert!(Outcome::Unreachable > Outcome::Refused);
        let refused = ClientError::Status(tonic::Status::permission_denied("no"));
        assert_eq!(Outcome::of_error(&refused), Outcome::Refused);
        assert_eq!(Outcome::of_error(&ClientError::Status(tonic::Status::not_found("x"))), Outcome::NotFound);
    }
}
