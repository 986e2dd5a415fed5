//! The job store: every copy the gateway was asked for, in a database through sqlx. SQLite by
//! default (a file under `store.data_dir`: no server, one gateway process per file), PostgreSQL
//! when `store.url` names one (several replicas share one queue). Both speak the same portable
//! SQL through sqlx's `Any` driver; the one statement that differs is how a replica takes the
//! queue of a destination for itself (PostgreSQL: a transaction-scoped advisory lock; SQLite: a
//! lock in the process). Migrations are versioned in `crates/gateway/migrations` and run at
//! start.

mod budget;
mod jobs;
mod notify;
pub(crate) mod plans;
mod polls;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

pub(crate) use jobs::{Admitted, Job, JobFilter, JobState, NewJob};
#[allow(unused_imports)] // The plan API and scheduler of issue #29 use them next.
pub(crate) use plans::{NewRun, PlanCopyRecord, PlanRecord, Run, RunItem};

use crate::config::StoreSettings;

/// The migrations, in order; their text is in the repository and in the binary.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "copy jobs", include_str!("../../migrations/0001_copy_jobs.sql")),
    (2, "plans", include_str!("../../migrations/0002_plans.sql")),
    (3, "plan owners and runners", include_str!("../../migrations/0003_plan_runs.sql")),
    (4, "the fleet's AWS budgets", include_str!("../../migrations/0004_aws_budgets.sql")),
    (5, "the fleet's pollers", include_str!("../../migrations/0005_fleet_polls.sql")),
];

#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

pub(crate) struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite: claims of one process are serialized here (one process per SQLite file).
    claims: tokio::sync::Mutex<()>,
    lookups: Lookups,
    /// PostgreSQL's URL, for the listener's own connection.
    url: Option<String>,
    /// This process's name in its announcements (it does not hear its own).
    name: String,
    /// Counts the other replicas' changes heard.
    remote: tokio::sync::watch::Sender<u64>,
    /// The other replicas' pollers' notices heard.
    poll_notices: tokio::sync::broadcast::Sender<(String, String)>,
}

/// How long a job looked up for a read is kept: another replica's change to it shows within
/// this (this process's own changes show at once).
const LOOKUP_TTL: Duration = Duration::from_millis(500);

/// Jobs and queue places looked up for reads. A job changes a few times in its life while
/// readers ask for it thousands of times a second (a GetCopy of a copy in progress, many
/// watchers of a queued one): without these, every read is a database round trip (SQLite: a
/// hop to its worker thread and back). Every change this process makes forgets them all.
struct Lookups {
    found: moka::sync::Cache<String, Option<jobs::Job>>,
    positions: moka::sync::Cache<String, i64>,
    /// Bumped by every change: a lookup that raced one is not kept.
    changes: std::sync::atomic::AtomicU64,
}

impl Lookups {
    fn new() -> Lookups {
        fn kept<V: Clone + Send + Sync + 'static>() -> moka::sync::Cache<String, V> {
            moka::sync::Cache::builder().max_capacity(100_000).time_to_live(LOOKUP_TTL).build()
        }
        Lookups { found: kept(), positions: kept(), changes: std::sync::atomic::AtomicU64::new(0) }
    }

    fn generation(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps what was looked up when `generation` began, unless a change came since.
    fn keep(&self, generation: u64, insert: impl FnOnce()) {
        if self.generation() == generation {
            insert();
        }
    }

    fn forget(&self) {
        self.changes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.found.invalidate_all();
        self.positions.invalidate_all();
    }
}

/// A failure of the store: the database is unreachable or refused a statement.
#[derive(Debug, thiserror::Error)]
#[error("job store: {0}")]
pub(crate) struct StoreError(#[from] sqlx::Error);

impl Store {
    /// Connects (creating a SQLite file and its directory when needed) and migrates.
    pub(crate) async fn open(settings: &StoreSettings) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let url = settings.url();
        let dialect = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            anyhow::bail!("store.url: '{}' is neither a sqlite: nor a postgres:// URL", settings.redacted_url());
        };
        if dialect == Dialect::Sqlite {
            std::fs::create_dir_all(&settings.data_dir)
                .with_context(|| format!("store.data_dir: cannot create {}", settings.data_dir.display()))?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 4 } else { settings.max_connections })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // Readers do not wait for the writer; a writer waits for another.
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("store: cannot open {}", settings.redacted_url()))?;
        let migrator = Migrator::new(Embedded).await.context("store: migrations")?;
        migrator.run(&pool).await.with_context(|| format!("store: migrating {}", settings.redacted_url()))?;
        tracing::info!(store = %settings.redacted_url(), "job store ready");
        Ok(Store {
            pool,
            dialect,
            claims: tokio::sync::Mutex::new(()),
            lookups: Lookups::new(),
            url: (dialect == Dialect::Postgres).then_some(url),
            name: uuid::Uuid::new_v4().to_string(),
            remote: tokio::sync::watch::Sender::new(0),
            poll_notices: tokio::sync::broadcast::Sender::new(1024),
        })
    }

    /// Whether replicas may share this store (PostgreSQL).
    pub(crate) fn shared(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// After a change to the jobs: lookups kept for reads are forgotten, and the other
    /// replicas told.
    async fn changed(&self) {
        self.lookups.forget();
        self.announce().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, caller: &str, created_ms: i64) -> NewJob {
        NewJob {
            id: id.into(),
            caller: caller.into(),
            source_ref: "src".into(),
            source_arn: "arn:aws:rds:us-west-2:123456789012:cluster-snapshot:src".into(),
            source_region: "us-west-2".into(),
            engine: "aurora-postgresql".into(),
            engine_version: "15.4".into(),
            cluster_id: "c".into(),
            allocated_storage_gib: 10,
            encrypted: false,
            account: "123456789012".into(),
            region: "us-east-1".into(),
            target: id.into(),
            kms_key_id: None,
            copy_tags: false,
            tags: Vec::new(),
            cross_region: true,
            created_ms,
        }
    }

    async fn scratch_store() -> (Store, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("snapgate-store-test-{}", uuid::Uuid::new_v4()));
        (Store::open(&StoreSettings { data_dir: dir.clone(), ..StoreSettings::default() }).await.unwrap(), dir)
    }

    /// Reads are answered from lookups kept between changes, and every change this process
    /// makes is seen by the next read at once: a kept lookup is never older than a change.
    #[tokio::test]
    async fn kept_lookups_never_hide_this_processs_changes() {
        let (store, dir) = scratch_store().await;
        let find = || store.find("123456789012", "us-east-1", "a");
        assert!(find().await.unwrap().is_none());
        let Admitted::New(a) = store.admit(&job("a", "fleet", 1)).await.unwrap() else { panic!("new") };
        assert_eq!(find().await.unwrap().map(|j| j.state), Some(JobState::Queued));
        let Admitted::New(b) = store.admit(&job("b", "payments", 2)).await.unwrap() else { panic!("new") };
        assert_eq!(store.queue_position(&b, 3).await.unwrap(), 2);
        // The claim takes one slot: the fleet's oldest; payments' copy is next.
        let claimed = store.claim("123456789012", "us-east-1", 1, 1, "me", 3, 100_000).await.unwrap();
        assert_eq!(claimed.iter().map(|j| j.new.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(find().await.unwrap().map(|j| j.state), Some(JobState::Starting));
        assert_eq!(store.queue_position(&b, 3).await.unwrap(), 1);
        assert!(store.mark_copying(&a.new.id, "arn:x", None, 4).await.unwrap());
        assert_eq!(find().await.unwrap().map(|j| j.state), Some(JobState::Copying));
        assert!(store.finish(&a.new.id, JobState::Copying, JobState::Available, None, 5).await.unwrap());
        assert_eq!(find().await.unwrap().map(|j| j.state), Some(JobState::Available));
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
