-- Copy jobs: every copy the gateway was asked for, from admission to its end. Portable SQL:
-- the same file migrates SQLite (the embedded default) and PostgreSQL (replicas).
CREATE TABLE copy_jobs (
    id TEXT PRIMARY KEY,
    -- account/region/target: the snapshot a job makes is its key, so a copy is made once.
    job_key TEXT NOT NULL UNIQUE,
    caller TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    source_arn TEXT NOT NULL,
    source_region TEXT NOT NULL,
    engine TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    allocated_storage_gib BIGINT NOT NULL,
    encrypted BIGINT NOT NULL,
    account TEXT NOT NULL,
    region TEXT NOT NULL,
    target TEXT NOT NULL,
    kms_key_id TEXT,
    copy_tags BIGINT NOT NULL,
    tags TEXT NOT NULL,
    cross_region BIGINT NOT NULL,
    state TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    not_before_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    attempts BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until_ms BIGINT,
    snapshot_arn TEXT,
    aws_request_id TEXT,
    failure TEXT
);

CREATE INDEX copy_jobs_by_destination ON copy_jobs (account, region, state, created_ms);
CREATE INDEX copy_jobs_by_state ON copy_jobs (state);
CREATE INDEX copy_jobs_by_creation ON copy_jobs (created_ms);
