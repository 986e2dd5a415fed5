-- A plan's runs decide as its owner: who applied it, with the facts policies look at (method,
-- groups, team, issuer) as authentication established them then, JSON.
ALTER TABLE plans ADD COLUMN owner_facts TEXT NOT NULL DEFAULT '{}';

-- A run is run by one replica at a time: the one that claimed it, marking it alive; a run whose
-- replica stopped marking it is taken over by another and run again (target ids make every copy
-- once).
ALTER TABLE plan_runs ADD COLUMN runner TEXT;
ALTER TABLE plan_runs ADD COLUMN heartbeat_ms BIGINT;

-- The recovery point an item's copy holds: when its source snapshot was taken.
ALTER TABLE plan_run_items ADD COLUMN recovery_ms BIGINT;
