//! The job store: every copy the gateway was asked for, in a database through sqlx. SQLite by
//! default (a file under `store.data_dir`: no server, one gateway process per file), PostgreSQL
//! when `store.url` names one (several replicas share one queue). Both speak the same portable
//! SQL through sqlx's `Any` driver; the one statement that differs is how a replica takes the
//! queue of a destination for itself (PostgreSQL: a transaction-scoped advisory lock; SQLite: a
//! lock in the process). Migrations are versioned in `crates/gateway/migrations` and run at
//! start.

mod jobs;

use std::borrow::Cow;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

pub(crate) use jobs::{Admitted, Job, JobFilter, JobState, NewJob};

use crate::config::StoreSettings;

/// The migrations, in order; their text is in the repository and in the binary.
const MIGRATIONS: &[(i64, &str, &str)] = &[(1, "copy jobs", include_str!("../../migrations/0001_copy_jobs.sql"))];

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
        Ok(Store { pool, dialect, claims: tokio::sync::Mutex::new(()) })
    }
}
