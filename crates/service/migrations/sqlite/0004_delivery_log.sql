-- Delivery GUIDs land here first, in arrival order, and are folded into `deliveries` in
-- sorted batches (store/ingest.rs). A GUID is a random key: inserted one group at a time,
-- each dirtied its own page of `deliveries`' index, which every commit wrote to the log;
-- appended here they share pages, and a fold of thousands in order dirties each page of
-- the index once. A GUID is recorded if it is in either table.
CREATE TABLE delivery_log (
    guid        TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
