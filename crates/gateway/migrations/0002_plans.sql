-- DR plans: declared by a caller (their owner), run on their schedule by whichever replica
-- claims a slot. Portable SQL, as 0001.
CREATE TABLE plans (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    -- The plan as declared, JSON: the file's shape.
    spec TEXT NOT NULL,
    -- Slots before the first apply are not the plan's.
    applied_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    -- Bumped by every apply.
    generation BIGINT NOT NULL
);

-- Every run of a plan. slot_key is unique: a scheduled slot ('<plan>@<slot_ms>') is claimed
-- once across replicas; a run asked for by RunPlan has its own key.
CREATE TABLE plan_runs (
    id TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    slot_key TEXT NOT NULL UNIQUE,
    slot_ms BIGINT,
    cause TEXT NOT NULL,
    state TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    reason TEXT
);

CREATE INDEX plan_runs_by_plan ON plan_runs (plan, started_ms);

-- What a run did, cluster by cluster and destination by destination.
CREATE TABLE plan_run_items (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    cluster_id TEXT NOT NULL,
    source_arn TEXT,
    destination TEXT NOT NULL,
    copy_name TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (run_id, seq)
);

-- The copies plans made. Retention expires only a copy recorded here as the plan's (and tagged
-- as its own in AWS); expired_ms is set once, by whichever replica deleted it.
CREATE TABLE plan_copies (
    account TEXT NOT NULL,
    region TEXT NOT NULL,
    target TEXT NOT NULL,
    plan TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    source_arn TEXT NOT NULL,
    source_time_ms BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expired_ms BIGINT,
    PRIMARY KEY (account, region, target)
);

CREATE INDEX plan_copies_by_plan ON plan_copies (plan, account, region, cluster_id);
