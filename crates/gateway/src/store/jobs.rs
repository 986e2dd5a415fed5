//! The `copy_jobs` table: a job per copy asked for, keyed by the snapshot it makes.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Dialect, Store, StoreError};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Waiting for a slot (or for its backoff after AWS's own limit refused it).
    Queued,
    /// Claimed by a gateway, which is calling CopyDBClusterSnapshot under a lease.
    Starting,
    /// AWS is copying.
    Copying,
    Available,
    Failed,
    Cancelled,
    Deleted,
}

impl JobState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Copying => "copying",
            JobState::Available => "available",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Deleted => "deleted",
        }
    }

    fn parse(text: &str) -> JobState {
        match text {
            "queued" => JobState::Queued,
            "starting" => JobState::Starting,
            "copying" => JobState::Copying,
            "available" => JobState::Available,
            "cancelled" => JobState::Cancelled,
            "deleted" => JobState::Deleted,
            _ => JobState::Failed,
        }
    }

    /// Whether nothing more will happen to the job.
    pub(crate) fn is_terminal(self) -> bool {
        matches!(self, JobState::Available | JobState::Failed | JobState::Cancelled | JobState::Deleted)
    }
}

/// What a new job records: the request, who asked, and what the gateway knew of the source
/// when it admitted it.
#[derive(Debug, Clone)]
pub(crate) struct NewJob {
    pub id: String,
    pub caller: String,
    /// What CopyDBClusterSnapshot is sent as the source: an identifier or an ARN.
    pub source_ref: String,
    pub source_arn: String,
    pub source_region: String,
    pub engine: String,
    pub engine_version: String,
    pub cluster_id: String,
    pub allocated_storage_gib: i64,
    pub encrypted: bool,
    /// The destination account ("" when unknown: the gateway's own).
    pub account: String,
    pub region: String,
    pub target: String,
    pub kms_key_id: Option<String>,
    pub copy_tags: bool,
    pub tags: Vec<(String, String)>,
    pub cross_region: bool,
    pub created_ms: i64,
}

impl NewJob {
    pub(crate) fn key(&self) -> String {
        job_key(&self.account, &self.region, &self.target)
    }
}

pub(crate) fn job_key(account: &str, region: &str, target: &str) -> String {
    format!("{account}/{region}/{}", target.to_ascii_lowercase())
}

/// A job as stored.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub new: NewJob,
    pub state: JobState,
    pub attempts: i64,
    pub snapshot_arn: Option<String>,
    pub aws_request_id: Option<String>,
    pub failure: Option<String>,
}

/// What ListCopies asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobFilter {
    pub states: Vec<JobState>,
    pub region: Option<String>,
    pub account: Option<String>,
    pub caller: Option<String>,
    /// (created_ms, id) of the last job of the previous page.
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

const COLUMNS: &str = "id, caller, source_ref, source_arn, source_region, engine, engine_version, cluster_id, \
    allocated_storage_gib, encrypted, account, region, target, kms_key_id, copy_tags, tags, cross_region, state, \
    created_ms, attempts, snapshot_arn, aws_request_id, failure";

/// A job AWS is copying, or that a live lease is starting (`$4`: now).
const ACTIVE: &str = "(state = 'copying' OR (state = 'starting' AND lease_until_ms >= $4))";
/// A job that may be claimed: queued and due, or starting under a lease that expired.
const DUE: &str = "((state = 'queued' AND not_before_ms <= $4) OR (state = 'starting' AND lease_until_ms < $4))";
/// A job's turn among its caller's: its caller's jobs in progress come first, then its
/// waiting ones oldest first; `ORDER BY turn` takes callers in turn, the fewest in progress
/// first (`$4`: now).
const TURN: &str = "ROW_NUMBER() OVER (PARTITION BY caller ORDER BY CASE WHEN (state = 'copying' \
    OR (state = 'starting' AND lease_until_ms >= $4)) THEN 0 ELSE 1 END, created_ms, id)";

fn job_of(row: &AnyRow) -> Result<Job, sqlx::Error> {
    let tags: String = row.try_get("tags")?;
    let tags: Vec<(String, String)> = serde_json::from_str(&tags).unwrap_or_default();
    let state: String = row.try_get("state")?;
    Ok(Job {
        new: NewJob {
            id: row.try_get("id")?,
            caller: row.try_get("caller")?,
            source_ref: row.try_get("source_ref")?,
            source_arn: row.try_get("source_arn")?,
            source_region: row.try_get("source_region")?,
            engine: row.try_get("engine")?,
            engine_version: row.try_get("engine_version")?,
            cluster_id: row.try_get("cluster_id")?,
            allocated_storage_gib: row.try_get("allocated_storage_gib")?,
            encrypted: row.try_get::<i64, _>("encrypted")? != 0,
            account: row.try_get("account")?,
            region: row.try_get("region")?,
            target: row.try_get("target")?,
            kms_key_id: row.try_get("kms_key_id")?,
            copy_tags: row.try_get::<i64, _>("copy_tags")? != 0,
            tags,
            cross_region: row.try_get::<i64, _>("cross_region")? != 0,
            created_ms: row.try_get("created_ms")?,
        },
        state: JobState::parse(&state),
        attempts: row.try_get("attempts")?,
        snapshot_arn: row.try_get("snapshot_arn")?,
        aws_request_id: row.try_get("aws_request_id")?,
        failure: row.try_get("failure")?,
    })
}

/// The result of admitting a job.
pub(crate) enum Admitted {
    /// A new job, queued.
    New(Job),
    /// A job for the same target was there already (it may be from another source).
    Existing(Job),
}

impl Store {
    /// Records a queued job, unless one for the same target is there: then that one. A job
    /// whose copy failed or was cancelled or deleted gives way to the new one, and stays as
    /// history (`retire`).
    pub(crate) async fn admit(&self, job: &NewJob) -> Result<Admitted, StoreError> {
        let key = job.key();
        for _ in 0..3 {
            if let Some(existing) = self.by_key(&key).await? {
                if !matches!(existing.state, JobState::Failed | JobState::Cancelled | JobState::Deleted) {
                    return Ok(Admitted::Existing(existing));
                }
                self.retire(&existing, existing.state, None, job.created_ms).await?;
            }
            let inserted = sqlx::query(
                "INSERT INTO copy_jobs (id, job_key, caller, source_ref, source_arn, source_region, engine, \
                 engine_version, cluster_id, allocated_storage_gib, encrypted, account, region, target, kms_key_id, \
                 copy_tags, tags, cross_region, state, created_ms, not_before_ms, attempts) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 'queued', $19, $19, 0) \
                 ON CONFLICT (job_key) DO NOTHING",
            )
            .bind(&job.id)
            .bind(&key)
            .bind(&job.caller)
            .bind(&job.source_ref)
            .bind(&job.source_arn)
            .bind(&job.source_region)
            .bind(&job.engine)
            .bind(&job.engine_version)
            .bind(&job.cluster_id)
            .bind(job.allocated_storage_gib)
            .bind(i64::from(job.encrypted))
            .bind(&job.account)
            .bind(&job.region)
            .bind(&job.target)
            .bind(&job.kms_key_id)
            .bind(i64::from(job.copy_tags))
            .bind(serde_json::to_string(&job.tags).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(job.cross_region))
            .bind(job.created_ms)
            .execute(&self.pool)
            .await?;
            if inserted.rows_affected() == 1 {
                self.changed().await;
                return Ok(Admitted::New(self.get(&job.id).await?.ok_or(sqlx::Error::RowNotFound)?));
            }
        }
        // Three rounds of someone else's insert and retirement: theirs stands.
        Ok(Admitted::Existing(self.by_key(&key).await?.ok_or(sqlx::Error::RowNotFound)?))
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM copy_jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_of).transpose()?)
    }

    /// The job that makes `target` in `account` and `region`, for reads: from the lookups
    /// kept until this process changes a job (another replica's change shows within
    /// `LOOKUP_TTL`), else from the database.
    pub(crate) async fn find(&self, account: &str, region: &str, target: &str) -> Result<Option<Job>, StoreError> {
        let key = job_key(account, region, target);
        if let Some(found) = self.lookups.found.get(&key) {
            return Ok(found);
        }
        let generation = self.lookups.generation();
        let found = self.by_key(&key).await?;
        self.lookups.keep(generation, || self.lookups.found.insert(key, found.clone()));
        Ok(found)
    }

    async fn by_key(&self, key: &str) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM copy_jobs WHERE job_key = $1"))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(job_of).transpose()?)
    }

    /// Destinations (account, region) with jobs that may be claimable now.
    pub(crate) async fn destinations_with_work(&self, now: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT account, region FROM copy_jobs \
             WHERE (state = 'queued' AND not_before_ms <= $1) OR (state = 'starting' AND lease_until_ms < $1)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("account")?, r.try_get("region")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError)
    }

    /// Takes, for `owner` and until `lease_until`, claimable jobs of a destination (queued and
    /// due, or starting under a lease that expired), callers in turn and each caller's oldest
    /// first: cross-region ones up to
    /// `cross_limit` in progress at once, same-region ones up to `same_limit`. Serialized per
    /// destination across replicas, so the limits hold.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn claim(
        &self,
        account: &str,
        region: &str,
        cross_limit: i64,
        same_limit: i64,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let _serial = match self.dialect {
            Dialect::Sqlite => Some(self.claims.lock().await),
            Dialect::Postgres => None,
        };
        // SQLite: take the write lock at once; a read transaction cannot become a writer in
        // WAL mode once another writer committed (SQLITE_BUSY_SNAPSHOT).
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock_key(account, region)).execute(&mut *tx).await?;
        }
        let mut claimed = Vec::new();
        for (cross, limit) in [(true, cross_limit), (false, same_limit)] {
            let in_progress: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM copy_jobs WHERE account = $1 AND region = $2 AND cross_region = $3 \
                 AND (state = 'copying' OR (state = 'starting' AND lease_until_ms >= $4))",
            )
            .bind(account)
            .bind(region)
            .bind(i64::from(cross))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            let free = (limit - in_progress).max(0);
            if free == 0 {
                continue;
            }
            // Callers in turn: a caller's turn is how many of its jobs would be in progress
            // with this one, so the caller with the fewest in progress goes first (the oldest
            // job among equals), and a fleet of hundreds does not keep another team's one copy
            // waiting for hours. (Window functions: SQLite 3.25+, PostgreSQL.) Without a limit
            // every due job starts now, in any order: no turns to take.
            let sql = if limit == i64::MAX {
                format!(
                    "SELECT {COLUMNS} FROM copy_jobs WHERE account = $1 AND region = $2 AND cross_region = $3 \
                     AND {DUE} ORDER BY created_ms, id LIMIT $5"
                )
            } else {
                format!(
                    "SELECT {COLUMNS} FROM (SELECT *, {TURN} AS turn FROM copy_jobs \
                     WHERE account = $1 AND region = $2 AND cross_region = $3 AND ({ACTIVE} OR {DUE})) AS due \
                     WHERE {DUE} ORDER BY turn, created_ms, id LIMIT $5"
                )
            };
            let rows = sqlx::query(&sql)
                .bind(account)
                .bind(region)
                .bind(i64::from(cross))
                .bind(now)
                .bind(free)
                .fetch_all(&mut *tx)
                .await?;
            for row in &rows {
                let job = job_of(row)?;
                sqlx::query(
                    "UPDATE copy_jobs SET state = 'starting', lease_owner = $1, lease_until_ms = $2, \
                     attempts = attempts + 1 WHERE id = $3",
                )
                .bind(owner)
                .bind(lease_until)
                .bind(&job.new.id)
                .execute(&mut *tx)
                .await?;
                claimed.push(Job { state: JobState::Starting, attempts: job.attempts + 1, ..job });
            }
        }
        tx.commit().await?;
        self.changed().await;
        Ok(claimed)
    }

    /// AWS started the copy (or it was started already by this job): the job is copying. A
    /// queued job is started at once when it takes the place of one whose snapshot is gone.
    pub(crate) async fn mark_copying(
        &self,
        id: &str,
        snapshot_arn: &str,
        aws_request_id: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE copy_jobs SET state = 'copying', snapshot_arn = $1, aws_request_id = $2, started_ms = $3, \
             lease_owner = NULL, lease_until_ms = NULL WHERE id = $4 AND state IN ('queued', 'starting')",
        )
        .bind(snapshot_arn)
        .bind(aws_request_id)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.changed().await;
        Ok(done.rows_affected() == 1)
    }

    /// Back in the queue until `not_before` (AWS's own limit, throttling, an outage).
    pub(crate) async fn requeue(&self, id: &str, not_before: i64, why: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE copy_jobs SET state = 'queued', not_before_ms = $1, lease_owner = NULL, lease_until_ms = NULL, \
             failure = $2 WHERE id = $3 AND state = 'starting'",
        )
        .bind(not_before)
        .bind(why)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.changed().await;
        Ok(done.rows_affected() == 1)
    }

    /// Ends a job that is `from` (starting or copying) in `state`; returns whether this call
    /// ended it (another replica may have first).
    pub(crate) async fn finish(
        &self,
        id: &str,
        from: JobState,
        state: JobState,
        failure: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE copy_jobs SET state = $1, failure = COALESCE($2, failure), finished_ms = $3, lease_owner = NULL, \
             lease_until_ms = NULL WHERE id = $4 AND state = $5",
        )
        .bind(state.as_str())
        .bind(failure)
        .bind(now)
        .bind(id)
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        self.changed().await;
        Ok(done.rows_affected() == 1)
    }

    /// Makes a job that ended history: it no longer holds its target (a new job may make the
    /// copy again) and it ends `state` (`Deleted` for a copy that was made and whose snapshot
    /// is gone since). Only the job as `job` saw it is retired: of concurrent retirements (other
    /// requests, other replicas) one wins; returns whether this one did.
    pub(crate) async fn retire(
        &self,
        job: &Job,
        state: JobState,
        failure: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        // A target identifier has no '#', so a retired key never meets a current one.
        let done = sqlx::query(
            "UPDATE copy_jobs SET job_key = job_key || '#' || id, state = $1, failure = COALESCE($2, failure), \
             finished_ms = COALESCE(finished_ms, $3) WHERE id = $4 AND state = $5 AND job_key = $6",
        )
        .bind(state.as_str())
        .bind(failure)
        .bind(now)
        .bind(&job.new.id)
        .bind(job.state.as_str())
        .bind(job.new.key())
        .execute(&self.pool)
        .await?;
        self.changed().await;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets a job (its request failed as a whole, before anything was admitted).
    pub(crate) async fn forget(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM copy_jobs WHERE id = $1").bind(id).execute(&self.pool).await?;
        self.changed().await;
        Ok(())
    }

    /// The ids of the jobs AWS is copying now: the dispatcher's round reads them all, so only
    /// the ids (a round over 10,000 copies read ~15 MiB of whole jobs it already followed).
    pub(crate) async fn copying_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM copy_jobs WHERE state = 'copying'").fetch_all(&self.pool).await?)
    }

    /// A queued job's place among the queued jobs of its destination (1: next), in the order
    /// `claim` takes them: callers in turn, the fewest in progress first.
    pub(crate) async fn queue_position(&self, job: &Job, now: i64) -> Result<i64, StoreError> {
        if let Some(position) = self.lookups.positions.get(&job.new.id) {
            return Ok(position);
        }
        let generation = self.lookups.generation();
        let position = self.count_ahead(job, now).await? + 1;
        self.lookups.keep(generation, || self.lookups.positions.insert(job.new.id.clone(), position));
        Ok(position)
    }

    async fn count_ahead(&self, job: &Job, now: i64) -> Result<i64, StoreError> {
        let ahead: i64 = sqlx::query(&format!(
            "WITH q AS (SELECT id, state, created_ms, {TURN} AS turn FROM copy_jobs \
             WHERE account = $1 AND region = $2 AND cross_region = $3 AND ({ACTIVE} OR state = 'queued')), \
             me AS (SELECT turn, created_ms, id FROM q WHERE id = $5) \
             SELECT COUNT(*) AS n FROM q, me WHERE q.state = 'queued' AND (q.turn < me.turn OR (q.turn = me.turn \
             AND (q.created_ms < me.created_ms OR (q.created_ms = me.created_ms AND q.id < me.id))))"
        ))
        .bind(&job.new.account)
        .bind(&job.new.region)
        .bind(i64::from(job.new.cross_region))
        .bind(now)
        .bind(&job.new.id)
        .fetch_one(&self.pool)
        .await?
        .try_get("n")?;
        Ok(ahead)
    }

    /// Queued and in-progress jobs per destination, for the gauges.
    pub(crate) async fn depths(&self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT account, region, \
             SUM(CASE WHEN state = 'queued' THEN 1 ELSE 0 END) AS queued, \
             SUM(CASE WHEN state IN ('starting', 'copying') THEN 1 ELSE 0 END) AS active \
             FROM copy_jobs WHERE state IN ('queued', 'starting', 'copying') GROUP BY account, region",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("account")?, r.try_get("region")?, r.try_get("queued")?, r.try_get("active")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError)
    }

    /// A page of jobs, newest first.
    pub(crate) async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM copy_jobs WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if !filter.states.is_empty() {
            let marks: Vec<String> = filter.states.iter().map(|_| next()).collect();
            sql.push_str(&format!(" AND state IN ({})", marks.join(", ")));
        }
        if filter.region.is_some() {
            sql.push_str(&format!(" AND region = {}", next()));
        }
        if filter.account.is_some() {
            sql.push_str(&format!(" AND account = {}", next()));
        }
        if filter.caller.is_some() {
            sql.push_str(&format!(" AND caller = {}", next()));
        }
        if filter.after.is_some() {
            let (a, b, c) = (next(), next(), next());
            sql.push_str(&format!(" AND (created_ms < {a} OR (created_ms = {b} AND id < {c}))"));
        }
        sql.push_str(&format!(" ORDER BY created_ms DESC, id DESC LIMIT {}", next()));
        let mut query = sqlx::query(&sql);
        for state in &filter.states {
            query = query.bind(state.as_str());
        }
        for value in [&filter.region, &filter.account, &filter.caller].into_iter().flatten() {
            query = query.bind(value.as_str());
        }
        if let Some((created, id)) = &filter.after {
            query = query.bind(*created).bind(*created).bind(id.as_str());
        }
        let rows = query.bind(filter.limit).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(job_of).collect::<Result<_, _>>()?)
    }
}

/// The advisory lock of a destination's queue (PostgreSQL): a stable 63-bit hash.
fn lock_key(account: &str, region: &str) -> i64 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("snapgate-queue/{account}/{region}").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_be_bytes((hash >> 1).to_be_bytes())
}
