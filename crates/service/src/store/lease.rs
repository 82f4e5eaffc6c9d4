//! The leader lease (PostgreSQL): one row naming the replica that runs the planner,
//! provisioner, reaper and reconciler, until when, and a fencing token that grows at every
//! takeover. The leader renews it every third of its length; a replica that finds it
//! expired takes it over. Times are the database server's, so replicas' clocks need not
//! agree. On SQLite there is one replica and it always leads: nothing here is consulted.
//!
//! Fencing: a leader paused past its lease (a long GC pause, SIGSTOP, a frozen VM) still
//! believes it leads when it wakes. Every store write of the leader's loops holds the lease
//! row under its token inside its transaction (`hold`), and fails with `StoreError::Fenced`
//! once the lease expired or changed hands. Every GitHub or backend call is preceded by
//! `check_token` (`leader::Fence`): no call starts once the loss is seen, but a call whose
//! check passed just before a pause can still go out (docs/reliability.md §7).

use std::time::Duration;

use sqlx::Row;

use super::{Backend, Store, StoreError};

/// The database server's clock, in Unix milliseconds.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Who leads, as the lease row says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The replica id of the holder; empty when nobody ever led.
    pub holder: String,
    /// The fencing token of the holder's term.
    pub token: i64,
    /// When the holder's term began (Unix ms, the database's clock).
    pub since_ms: i64,
    /// Until when the lease holds unless renewed (Unix ms, the database's clock).
    pub expires_ms: i64,
    /// Whether the lease is still valid now.
    pub live: bool,
    /// How long it still holds (ms, by the database's clock; negative once it expired):
    /// when a follower should try to take it over.
    pub remaining_ms: i64,
}

impl Store {
    /// Takes the lease for `replica` if it is free or expired, or renews it if `replica`
    /// holds it; returns the token `replica` now leads under, or `None` if another replica
    /// holds a live lease. A renewal keeps the token; a takeover (even of one's own expired
    /// lease) increments it, so anything done under the old term is fenced off. With the
    /// token comes the start of the term (Unix ms).
    pub async fn acquire_lease(
        &self,
        replica: &str,
        length: Duration,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let length = i64::try_from(length.as_millis()).unwrap_or(i64::MAX / 2);
        let sql = format!(
            "UPDATE leader_lease SET
                 token = CASE WHEN holder = $1 AND expires_at > {NOW_MS} THEN token ELSE token + 1 END,
                 since = CASE WHEN holder = $1 AND expires_at > {NOW_MS} THEN since ELSE {NOW_MS} END,
                 holder = $1,
                 expires_at = {NOW_MS} + $2
             WHERE id = 1 AND (holder = $1 OR expires_at <= {NOW_MS})
             RETURNING token, since"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(replica)
            .bind(length)
            .fetch_optional(self.writer())
            .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("token")?, r.try_get("since")?)))
            .transpose()?)
    }

    /// Gives the lease up (at shutdown) so another replica takes over at once instead of
    /// after it expires.
    pub async fn release_lease(&self, replica: &str, token: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE leader_lease SET expires_at = 0 WHERE id = 1 AND holder = $1 AND token = $2")
            .bind(replica)
            .bind(token)
            .execute(self.writer())
            .await?;
        Ok(())
    }

    /// The lease as stored; `None` on SQLite, which has no lease.
    pub async fn lease_state(&self) -> Result<Option<LeaseState>, StoreError> {
        if self.backend() == Backend::Sqlite {
            return Ok(None);
        }
        let sql = format!(
            "SELECT holder, token, since, expires_at, (expires_at > {NOW_MS}) AS live,
                    (expires_at - {NOW_MS}) AS remaining
             FROM leader_lease WHERE id = 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_one(self.pool())
            .await?;
        Ok(Some(LeaseState {
            holder: row.try_get("holder")?,
            token: row.try_get("token")?,
            since_ms: row.try_get("since")?,
            expires_ms: row.try_get("expires_at")?,
            live: row.try_get("live")?,
            remaining_ms: row.try_get("remaining")?,
        }))
    }

    /// Succeeds only while `token` is the live lease's token: what the leader's loops check
    /// right before a GitHub or backend call. `StoreError::Fenced` means this replica lost
    /// the lease (or it expired while the replica was paused) and must not make the call.
    pub async fn check_token(&self, token: i64) -> Result<(), StoreError> {
        let sql =
            format!("SELECT token FROM leader_lease WHERE id = 1 AND token = $1 AND expires_at > {NOW_MS}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(token)
            .fetch_optional(self.pool())
            .await?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced(token)),
        }
    }
}

/// Locks the lease row for sharing while `token` is the live lease's; `Fenced` otherwise.
pub(super) async fn hold(conn: &mut sqlx::AnyConnection, token: i64) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT token FROM leader_lease WHERE id = 1 AND token = $1 AND expires_at > {NOW_MS} FOR SHARE"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(token)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(_) => Ok(()),
        None => Err(StoreError::Fenced(token)),
    }
}
