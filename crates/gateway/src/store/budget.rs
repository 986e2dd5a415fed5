//! The fleet's AWS budgets (PostgreSQL): one token bucket per account and region, counted by
//! the database's own clock so that replicas' clocks do not matter, drawn from in one statement.

use futures_util::future::BoxFuture;
use sqlx::Row;

use super::{Dialect, Store};
use crate::aws::{DEBT_SECS, Draw, FleetBudget};

/// Refills the bucket of `$1` (at `$3` a second up to `$2`, from when it was last counted to
/// now) and reserves `$4` tokens — none if that would take it below `$6` (its debt's floor);
/// when it is more than half full, up to `$5` of the whole tokens there — under the row's lock:
/// concurrent draws of other replicas wait for it and see what it left.
const DRAW: &str = "\
WITH clock AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS ms), \
cur AS ( \
  SELECT b.scope, clock.ms, \
         LEAST($2::FLOAT8, b.tokens + GREATEST(0, clock.ms - b.updated_ms) * $3::FLOAT8 / 1000.0) AS avail \
  FROM aws_budgets b, clock WHERE b.scope = $1 FOR UPDATE OF b \
), \
decided AS ( \
  SELECT scope, ms, avail, \
         CASE WHEN avail - $4::FLOAT8 < $6::FLOAT8 THEN 0 \
              WHEN avail > $2::FLOAT8 / 2.0 THEN GREATEST($4::FLOAT8, LEAST($5::FLOAT8, FLOOR(avail))) \
              ELSE $4::FLOAT8 END AS granted \
  FROM cur \
) \
UPDATE aws_budgets b SET tokens = d.avail - d.granted, updated_ms = GREATEST(b.updated_ms, d.ms) \
FROM decided d WHERE b.scope = d.scope \
RETURNING d.granted::FLOAT8 AS granted, d.avail::FLOAT8 AS available";

/// A bucket not there yet starts full.
const CREATE: &str = "INSERT INTO aws_budgets (scope, tokens, updated_ms) \
VALUES ($1, $2::FLOAT8, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT) ON CONFLICT (scope) DO NOTHING";

impl FleetBudget for Store {
    fn draw(&self, scope: &str, want: u32, ahead: u32, rate: f64, burst: u32) -> BoxFuture<'_, Result<Draw, String>> {
        let scope = scope.to_owned();
        Box::pin(async move {
            if self.dialect != Dialect::Postgres {
                return Err("the fleet's budget is kept only in PostgreSQL".into());
            }
            for _ in 0..2 {
                let row = sqlx::query(DRAW)
                    .bind(&scope)
                    .bind(f64::from(burst))
                    .bind(rate)
                    .bind(f64::from(want))
                    .bind(f64::from(ahead))
                    .bind(-(f64::from(burst) + rate * DEBT_SECS))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| e.to_string())?;
                match row {
                    Some(row) => {
                        let granted: f64 = row.try_get("granted").map_err(|e| e.to_string())?;
                        let available: f64 = row.try_get("available").map_err(|e| e.to_string())?;
                        return Ok(Draw { granted: granted.max(0.0) as u32, available });
                    }
                    None => {
                        sqlx::query(CREATE)
                            .bind(&scope)
                            .bind(f64::from(burst))
                            .execute(&self.pool)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            Err(format!("the budget {scope} could not be created"))
        })
    }
}
