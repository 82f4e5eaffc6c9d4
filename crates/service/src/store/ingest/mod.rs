//! Recording job events, from webhooks and from polling, with group commit: `record`
//! queues an event for one writer, which takes everything queued (up to `MAX_GROUP`) as one
//! transaction and answers each request once that transaction is committed.
//!
//! The writer differs per database. On SQLite it is a thread with a connection of its own
//! that calls SQLite directly (`sqlite`); on PostgreSQL a task on the writer's pool
//! (`postgres`). What they share is here: the messages, the job row's values, and the rule
//! that merges an event into its job's row.

mod postgres;
mod sqlite;

use tokio::sync::oneshot;

use super::StoreError;
use crate::domain::JobEvent;

pub(super) use postgres::spawn as spawn_postgres;
pub(super) use sqlite::{Database as SqliteDatabase, spawn as spawn_sqlite};

/// How the store learned of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    Webhook,
    Poll,
    /// A runner scale set's message queue.
    ScaleSet,
}

impl EventSource {
    fn as_str(self) -> &'static str {
        match self {
            EventSource::Webhook => "webhook",
            EventSource::Poll => "poll",
            EventSource::ScaleSet => "scaleset",
        }
    }
}

/// The outcome of recording one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Durably applied.
    Applied,
    /// The delivery GUID was recorded before; nothing changed.
    Duplicate,
}

impl Recorded {
    /// `Applied` for news, `Duplicate` for an event whose delivery was recorded before.
    fn of(news: bool) -> Recorded {
        if news {
            Recorded::Applied
        } else {
            Recorded::Duplicate
        }
    }
}

/// One event to record, and where its outcome goes.
pub(super) struct Request {
    delivery: Option<String>,
    event: JobEvent,
    source: EventSource,
    reply: oneshot::Sender<Result<Recorded, StoreError>>,
}

/// What the writer is sent.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is a record; boxing it would allocate once more per event"
)]
pub(super) enum Message {
    Record(Request),
    /// Write what came before, close the writer's connection, then answer.
    Close(oneshot::Sender<()>),
}

/// At most this many events share one transaction; bounded so one commit stays short.
const MAX_GROUP: usize = 512;

/// How many messages may wait for the writer; a webhook beyond it waits to be queued.
const QUEUE: usize = 4 * MAX_GROUP;

impl super::Store {
    /// Records `event` (and its delivery GUID, if any) and returns once it is on disk.
    pub async fn record(
        &self,
        delivery: Option<String>,
        event: JobEvent,
        source: EventSource,
    ) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            delivery,
            event,
            source,
            reply,
        };
        self.ingest
            .send_async(Message::Record(request))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer once it has written what was queued before; returns when its
    /// connection is closed. Later `record` calls fail with `StoreError::Closed`.
    pub(super) async fn close_writer(&self) {
        let (done, closed) = oneshot::channel();
        if self.ingest.send_async(Message::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// A group taken from the queue: the requests, and the close that ended it, if any.
struct Group {
    requests: Vec<Request>,
    close: Option<oneshot::Sender<()>>,
}

impl Group {
    /// A group starting with `first`, with whatever else is queued added (up to
    /// `MAX_GROUP` requests, and none after a close).
    fn starting_with(first: Message, rx: &flume::Receiver<Message>) -> Group {
        let mut group = Group {
            requests: Vec::with_capacity(MAX_GROUP.min(rx.len() + 1)),
            close: None,
        };
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Record(request) => group.requests.push(request),
                Message::Close(done) => {
                    group.close = Some(done);
                    break;
                }
            }
            next = (group.requests.len() < MAX_GROUP)
                .then(|| rx.try_recv().ok())
                .flatten();
        }
        group
    }

    /// Answers every request with its outcome, or all of them with the group's failure.
    fn answer(&mut self, outcome: Result<Vec<Recorded>, StoreError>) {
        match outcome {
            Ok(results) => {
                for (request, result) in self.requests.drain(..).zip(results) {
                    let _ = request.reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = self.requests.len(), "could not record events");
                let reason = e.to_string();
                for request in self.requests.drain(..) {
                    let _ = request.reply.send(Err(StoreError::WriteFailed(reason.clone())));
                }
            }
        }
    }
}

/// An event's values for its job's row, in `JOB_COLUMNS`' order, as both writers bind them.
struct JobValues<'a> {
    id: i64,
    repo: &'a str,
    run_id: i64,
    run_attempt: i64,
    name: &'a str,
    workflow_name: Option<&'a str>,
    head_sha: Option<&'a str>,
    labels: String,
    label_key: &'a str,
    status: &'static str,
    rank: i64,
    conclusion: Option<&'a str>,
    runner_name: Option<&'a str>,
    source: &'static str,
    /// Both `first_seen_at` and `updated_at`.
    now: i64,
    started_at: Option<i64>,
    completed_at: Option<i64>,
}

impl<'a> JobValues<'a> {
    fn of(request: &'a Request, now: i64) -> JobValues<'a> {
        let e = &request.event;
        let rank = e.status.rank();
        JobValues {
            id: to_i64(e.job_id.0),
            repo: e.repo.as_str(),
            run_id: to_i64(e.run_id),
            run_attempt: i64::from(e.run_attempt),
            name: e.name.as_str(),
            workflow_name: e.workflow_name.as_deref(),
            head_sha: e.head_sha.as_deref(),
            labels: e.labels.to_json(),
            label_key: e.labels.key(),
            status: e.status.as_str(),
            rank,
            conclusion: e.conclusion.as_deref(),
            runner_name: e.runner_name.as_deref(),
            source: request.source.as_str(),
            now,
            started_at: (rank >= 2).then_some(now),
            completed_at: (rank >= 3).then_some(now),
        }
    }
}

/// The columns an event sets, in the order `JobValues` holds them (`now` twice).
const JOB_COLUMNS: &str = "id, repo, run_id, run_attempt, name, workflow_name, head_sha, labels, \
     label_key, status, rank, conclusion, runner_name, source, first_seen_at, updated_at, \
     started_at, completed_at";

/// Values bound per job row.
const JOB_VALUES: usize = 18;

/// Merges each event into its job's row so that the final state is right whatever order
/// events arrive in: the status only moves forward (waiting and queued may swap), the
/// runner name and times are kept once known, and the first labels stay.
const ON_CONFLICT_MERGE: &str = "
ON CONFLICT(id) DO UPDATE SET
    status = CASE WHEN excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1)
                  THEN excluded.status ELSE jobs.status END,
    conclusion = CASE WHEN excluded.rank > jobs.rank THEN excluded.conclusion
                      ELSE COALESCE(jobs.conclusion, excluded.conclusion) END,
    runner_name = COALESCE(jobs.runner_name, excluded.runner_name),
    rank = CASE WHEN excluded.rank > jobs.rank THEN excluded.rank ELSE jobs.rank END,
    run_attempt = CASE WHEN excluded.run_attempt > jobs.run_attempt THEN excluded.run_attempt
                       ELSE jobs.run_attempt END,
    name = CASE WHEN jobs.name = '' THEN excluded.name ELSE jobs.name END,
    workflow_name = COALESCE(jobs.workflow_name, excluded.workflow_name),
    head_sha = COALESCE(jobs.head_sha, excluded.head_sha),
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    completed_at = COALESCE(jobs.completed_at, excluded.completed_at),
    updated_at = excluded.updated_at
WHERE excluded.rank > jobs.rank OR (excluded.rank = 1 AND jobs.rank = 1 AND excluded.status <> jobs.status)
   OR (jobs.runner_name IS NULL AND excluded.runner_name IS NOT NULL)";

/// GitHub ids are below 2^63 in practice; SQLite integers and PostgreSQL bigints are
/// signed 64-bit.
pub(super) fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}
