-- One poller per account and region for the replicas sharing this database (PostgreSQL): the
-- replica holding a region's lease polls what every replica's watchers and readers need (each
-- replica keeps its watched snapshots here, for a lease's time at a time) and leaves each
-- round's observations here for the others, who are told by a notification.
CREATE TABLE poll_leases (
    scope TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);

CREATE TABLE poll_watched (
    scope TEXT NOT NULL,
    replica TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, replica, snapshot_id)
);

CREATE TABLE poll_observations (
    scope TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,
    body TEXT NOT NULL,
    observed_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, snapshot_id)
);
