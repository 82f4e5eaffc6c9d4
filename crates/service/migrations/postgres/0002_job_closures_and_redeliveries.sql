-- Why the service closed a job that will never get its `completed` event (its conclusion is
-- then 'abandoned'): GitHub answers 404 for it, its repository left ALLOWED_REPOS, it was
-- queued past GitHub's 24 hours, or MAX_ATTEMPTS_PER_JOB runners ended without running it.
ALTER TABLE jobs ADD COLUMN closed_reason TEXT;

-- Redelivery requests per delivery GUID: a delivery that keeps failing is asked for a few
-- times in all, across restarts, not forever. Pruned with the rest of the history.
CREATE TABLE redeliveries (
    guid          TEXT PRIMARY KEY NOT NULL,
    asked         BIGINT NOT NULL,
    last_asked_at BIGINT NOT NULL
);
