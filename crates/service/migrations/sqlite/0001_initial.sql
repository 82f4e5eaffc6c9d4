-- modal-github-runner store schema (SQLite), migration 1: the schema as it was when it was
-- applied at every start, before versioned migrations. Every statement is idempotent, so a
-- database that code wrote takes this migration as applied without losing a row. Never edit
-- a released migration (a database that applied it would be refused); add the next file.
-- Times are Unix milliseconds.

-- X-GitHub-Delivery GUIDs of recorded events: a redelivered or doubled event is answered
-- "duplicate" instead of being applied twice.
CREATE TABLE IF NOT EXISTS deliveries (
    guid        TEXT PRIMARY KEY NOT NULL,
    received_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries(received_at);

-- Jobs that asked for our label, merged from webhooks and polling.
CREATE TABLE IF NOT EXISTS jobs (
    id            INTEGER PRIMARY KEY,       -- GitHub job id
    repo          TEXT NOT NULL,             -- owner/name as GitHub spells it
    run_id        INTEGER NOT NULL,
    run_attempt   INTEGER NOT NULL,
    name          TEXT NOT NULL,
    workflow_name TEXT,
    head_sha      TEXT,
    labels        TEXT NOT NULL,             -- JSON array, original spelling
    label_key     TEXT NOT NULL,             -- sorted, lower-cased, comma-joined
    status        TEXT NOT NULL,             -- waiting | queued | in_progress | completed
    rank          INTEGER NOT NULL,          -- 1 not started, 2 running, 3 done
    conclusion    TEXT,
    runner_name   TEXT,                      -- the runner that took it
    source        TEXT NOT NULL,             -- webhook | poll
    first_seen_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    mp_group      TEXT,                      -- workflow job key that max-parallel counts by
    max_parallel  INTEGER                    -- NULL: not resolved yet; 0: unlimited
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(rank) WHERE rank < 3;
CREATE INDEX IF NOT EXISTS jobs_by_runner ON jobs(runner_name) WHERE runner_name IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs(run_id);
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(updated_at) WHERE rank = 3;

-- One row per runner name; see domain::RunnerState for the life cycle.
CREATE TABLE IF NOT EXISTS runners (
    name        TEXT PRIMARY KEY NOT NULL,
    job_id      INTEGER NOT NULL,            -- the job it was made for
    attempt     INTEGER NOT NULL,
    repo        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    label_key   TEXT NOT NULL,
    state       TEXT NOT NULL,
    github_id   INTEGER,
    sandbox_id  TEXT,
    failure     TEXT,                        -- why it failed or was retired
    retryable   INTEGER NOT NULL DEFAULT 1,  -- whether a failure should back off, not give up
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    started_at  INTEGER,                     -- sandbox created
    ended_at    INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runners_live ON runners(state) WHERE state NOT IN ('done', 'failed');
CREATE INDEX IF NOT EXISTS runners_by_job ON runners(job_id);
CREATE INDEX IF NOT EXISTS runners_ended ON runners(updated_at) WHERE state IN ('done', 'failed');

-- Workflow runs whose `strategy.max-parallel` settings were looked up.
CREATE TABLE IF NOT EXISTS runs (
    run_id     INTEGER PRIMARY KEY,
    repo       TEXT NOT NULL,
    state      TEXT NOT NULL,                -- resolved | unreadable
    strategy   TEXT NOT NULL,                -- JSON: workflow jobs and their max-parallel
    updated_at INTEGER NOT NULL
);
