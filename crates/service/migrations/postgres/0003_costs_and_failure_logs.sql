-- modal-github-runner store schema (PostgreSQL), migration 3: what each runner cost, the tail
-- of a failed sandbox's output, and provisioning pauses (the daily spend cap). Times are Unix
-- milliseconds. The same tables as SQLite's migration 3.

-- One row per runner whose cost is known: from Modal's sandbox statistics (`stats`) or
-- estimated from resources × seconds at the configured rates (`rates`). The job is the one
-- the runner ran, else the one it was made for; per-job and per-repository spend are sums.
CREATE TABLE costs (
    runner_name TEXT PRIMARY KEY NOT NULL,
    job_id      BIGINT NOT NULL,
    repo        TEXT NOT NULL,
    dollars     DOUBLE PRECISION NOT NULL,
    source      TEXT NOT NULL,               -- stats | rates
    recorded_at BIGINT NOT NULL              -- counts toward this UTC day's spend
);
CREATE INDEX costs_by_time ON costs(recorded_at);
CREATE INDEX costs_by_job ON costs(job_id);

-- The masked tail of a sandbox's output when it ended before or while running its job.
CREATE TABLE failure_logs (
    runner_name TEXT PRIMARY KEY NOT NULL,
    reason      TEXT NOT NULL,
    tail        TEXT NOT NULL,               -- secrets masked before it was stored
    recorded_at BIGINT NOT NULL
);

-- Why provisioning is paused and until when (e.g. 'spend': MAX_SPEND_PER_DAY reached,
-- until the next UTC midnight), so `status` can say why jobs stay queued.
CREATE TABLE pauses (
    kind   TEXT PRIMARY KEY NOT NULL,
    reason TEXT NOT NULL,
    until  BIGINT NOT NULL
);
