-- The leader lease (PostgreSQL only: on SQLite the one replica always leads). One row.
-- `token` grows by one at every takeover: the fencing token every write of the leader's
-- loops that leads to a GitHub or backend call is made under. Times are the database
-- server's Unix milliseconds, so replicas' clocks need not agree.
CREATE TABLE leader_lease (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    token      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    since      BIGINT NOT NULL
);
INSERT INTO leader_lease (id, holder, token, expires_at, since) VALUES (1, '', 0, 0, 0);
