-- modal-github-runner store schema (PostgreSQL), migration 1: the same tables as SQLite's
-- migration 1 in PostgreSQL's dialect (integers are bigint, as SQLite's are 64-bit). Never
-- edit a released migration; add the next file. Times are Unix milliseconds.

-- X-GitHub-Delivery GUIDs of recorded events: a redelivered or doubled event is answered
-- "duplicate" instead of being applied twice, whichever replica received it.
CREATE TABLE IF NOT EXISTS deliveries (
    guid        TEXT PRIMARY KEY NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_by_time ON deliveries(received_at);

-- Jobs that asked for our label, merged from webhooks and polling.
CREATE TABLE IF NOT EXISTS jobs (
    id            BIGINT PRIMARY KEY,        -- GitHub job id
    repo          TEXT NOT NULL,             -- owner/name as GitHub spells it
    run_id        BIGINT NOT NULL,
    run_attempt   BIGINT NOT NULL,
    name          TEXT NOT NULL,
    workflow_name TEXT,
    head_sha      TEXT,
    labels        TEXT NOT NULL,             -- JSON array, original spelling
    label_key     TEXT NOT NULL,             -- sorted, lower-cased, comma-joined
    status        TEXT NOT NULL,             -- waiting | queued | in_progress | completed
    rank          BIGINT NOT NULL,           -- 1 not started, 2 running, 3 done
    conclusion    TEXT,
    runner_name   TEXT,                      -- the runner that took it
    source        TEXT NOT NULL,             -- webhook | poll
    first_seen_at BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    started_at    BIGINT,
    completed_at  BIGINT,
    mp_group      TEXT,                      -- workflow job key that max-parallel counts by
    max_parallel  BIGINT                     -- NULL: not resolved yet; 0: unlimited
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(rank) WHERE rank < 3;
CREATE INDEX IF NOT EXISTS jobs_by_runner ON jobs(runner_name) WHERE runner_name IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs(run_id);
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(updated_at) WHERE rank = 3;

-- One row per runner name; see domain::RunnerState for the life cycle.
CREATE TABLE IF NOT EXISTS runners (
    name        TEXT PRIMARY KEY NOT NULL,
    job_id      BIGINT NOT NULL,             -- the job it was made for
    attempt     BIGINT NOT NULL,
    repo        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    label_key   TEXT NOT NULL,
    state       TEXT NOT NULL,
    github_id   BIGINT,
    sandbox_id  TEXT,
    failure     TEXT,                        -- why it failed or was retired
    retryable   BIGINT NOT NULL DEFAULT 1,   -- whether a failure should back off, not give up
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    started_at  BIGINT,                      -- sandbox created
    ended_at    BIGINT
);
CREATE INDEX IF NOT EXISTS runners_live ON runners(state) WHERE state NOT IN ('done', 'failed');
CREATE INDEX IF NOT EXISTS runners_by_job ON runners(job_id);
CREATE INDEX IF NOT EXISTS runners_ended ON runners(updated_at) WHERE state IN ('done', 'failed');

-- Workflow runs whose `strategy.max-parallel` settings were looked up.
CREATE TABLE IF NOT EXISTS runs (
    run_id     BIGINT PRIMARY KEY,
    repo       TEXT NOT NULL,
    state      TEXT NOT NULL,                -- resolved | unreadable
    strategy   TEXT NOT NULL,                -- JSON: workflow jobs and their max-parallel
    updated_at BIGINT NOT NULL
);
