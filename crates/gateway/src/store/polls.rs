//! The fleet's pollers in PostgreSQL: a lease per account and region, what each replica
//! watches, the latest observation of each watched snapshot, and the notifications that tell
//! the holder to poll and the others that a round was recorded.

use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::Row;

use super::{Dialect, Store};
use crate::watch::FleetPolls;

/// The channel of the pollers' notifications: `<sender> <kind> <scope>`.
pub(super) const POLLS: &str = "snapgate_polls";

/// Now, by the database's clock (every replica's leases are counted by the same clock).
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Identifiers travel as one text, a line each (snapshot identifiers have no line breaks).
fn lines(ids: &[String]) -> String {
    ids.join("\n")
}

fn failed(error: sqlx::Error) -> String {
    error.to_string()
}

impl Store {
    fn fleet_only(&self) -> Result<(), String> {
        if self.dialect == Dialect::Postgres { Ok(()) } else { Err("the fleet's pollers need PostgreSQL".into()) }
    }

    async fn tell(&self, kind: &str, scope: &str) -> Result<(), String> {
        let payload = format!("{} {kind} {scope}", self.name);
        sqlx::query("SELECT pg_notify($1, $2)").bind(POLLS).bind(payload).execute(&self.pool).await.map_err(failed)?;
        Ok(())
    }
}

impl FleetPolls for Store {
    fn hold<'a>(&'a self, scope: &'a str, lease: Duration) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            self.fleet_only()?;
            let sql = format!(
                "INSERT INTO poll_leases (scope, holder, expires_ms) VALUES ($1, $2, {NOW_MS} + $3) \
                 ON CONFLICT (scope) DO UPDATE SET holder = EXCLUDED.holder, expires_ms = EXCLUDED.expires_ms \
                 WHERE poll_leases.holder = EXCLUDED.holder OR poll_leases.expires_ms < {NOW_MS} \
                 RETURNING holder"
            );
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let row = sqlx::query(&sql)
                .bind(scope)
                .bind(&self.name)
                .bind(lease_ms)
                .fetch_optional(&self.pool)
                .await
                .map_err(failed)?;
            Ok(row.is_some())
        })
    }

    fn register<'a>(&'a self, scope: &'a str, ids: &'a [String], lease: Duration) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.fleet_only()?;
            let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
            let mut tx = self.pool.begin().await.map_err(failed)?;
            sqlx::query(
                "DELETE FROM poll_watched WHERE scope = $1 AND replica = $2 \
                 AND NOT (snapshot_id = ANY(string_to_array($3, chr(10))))",
            )
            .bind(scope)
            .bind(&self.name)
            .bind(lines(ids))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
            let upsert = format!(
                "INSERT INTO poll_watched (scope, replica, snapshot_id, expires_ms) \
                 SELECT $1, $2, id, {NOW_MS} + $4 FROM unnest(string_to_array($3, chr(10))) AS id \
                 ON CONFLICT (scope, replica, snapshot_id) DO UPDATE SET expires_ms = EXCLUDED.expires_ms"
            );
            sqlx::query(&upsert)
                .bind(scope)
                .bind(&self.name)
                .bind(lines(ids))
                .bind(lease_ms)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)
        })
    }

    fn watched<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            self.fleet_only()?;
            let sql =
                format!("SELECT DISTINCT snapshot_id FROM poll_watched WHERE scope = $1 AND expires_ms > {NOW_MS}");
            let rows = sqlx::query(&sql).bind(scope).fetch_all(&self.pool).await.map_err(failed)?;
            rows.iter().map(|row| row.try_get::<String, _>("snapshot_id").map_err(failed)).collect()
        })
    }

    fn record<'a>(&'a self, scope: &'a str, observations: &'a [(String, String)]) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.fleet_only()?;
            let records: Vec<serde_json::Value> =
                observations.iter().map(|(id, body)| serde_json::json!({ "id": id, "body": body })).collect();
            let upsert = format!(
                "INSERT INTO poll_observations (scope, snapshot_id, body, observed_ms) \
                 SELECT $1, x.id, x.body, {NOW_MS} FROM json_to_recordset($2::json) AS x(id TEXT, body TEXT) \
                 ON CONFLICT (scope, snapshot_id) DO UPDATE SET body = EXCLUDED.body, observed_ms = EXCLUDED.observed_ms"
            );
            sqlx::query(&upsert)
                .bind(scope)
                .bind(serde_json::Value::Array(records).to_string())
                .execute(&self.pool)
                .await
                .map_err(failed)?;
            // What nobody has watched for a while goes (an hour: watchers come back to a copy).
            let cleanup = format!(
                "DELETE FROM poll_observations WHERE scope = $1 AND observed_ms < {NOW_MS} - 3600000; \
                 DELETE FROM poll_watched WHERE scope = $1 AND expires_ms < {NOW_MS} - 60000"
            );
            for statement in cleanup.split("; ") {
                sqlx::query(statement).bind(scope).execute(&self.pool).await.map_err(failed)?;
            }
            self.tell("observed", scope).await
        })
    }

    fn observations<'a>(
        &'a self,
        scope: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, String, i64)>, String>> {
        Box::pin(async move {
            self.fleet_only()?;
            let sql = format!(
                "SELECT snapshot_id, body, {NOW_MS} - observed_ms AS age_ms FROM poll_observations \
                 WHERE scope = $1 AND snapshot_id = ANY(string_to_array($2, chr(10)))"
            );
            let rows = sqlx::query(&sql).bind(scope).bind(lines(ids)).fetch_all(&self.pool).await.map_err(failed)?;
            rows.iter()
                .map(|row| Ok((row.try_get("snapshot_id")?, row.try_get("body")?, row.try_get("age_ms")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(failed)
        })
    }

    fn ask<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.fleet_only()?;
            self.tell("ask", scope).await
        })
    }
}
