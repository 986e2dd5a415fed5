-- The pace of AWS calls that the replicas sharing this database hold together: one token
-- bucket per account and region (tokens left, and when, by the database's clock, they were
-- counted), drawn from a few tokens at a time. Only PostgreSQL's replicas use it; a SQLite
-- gateway is one process and paces itself.
CREATE TABLE aws_budgets (
    scope TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated_ms BIGINT NOT NULL
);
