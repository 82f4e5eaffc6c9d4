//! `SandboxGetStats` and `SandboxGetLogs` (shared/docs/modal-features.md §6, §7; issue 13
//! items 4 and 5).
//!
//! Statistics are computed from the sandbox's requested resources × its lifetime at the
//! published sandbox rates, and, like Modal's, arrive late: an answer covers the sandbox
//! only up to `now - stats_delay` (configurable, default none), with no data points (and no
//! `cost`) before that reaches its start. Logs serve the entrypoint's recorded output once
//! its process is gone; the fake records stdout and stderr in one file, so both come on
//! STDOUT (as with a PTY) and STDERR is empty.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use modal_proto::{
    SandboxGetLogsRequest, SandboxGetStatsRequest, SandboxGetStatsResponse, StatsTimestamp, TaskLogs,
    TaskLogsBatch,
};

use super::error::RpcError;
use super::lifecycle::Lifecycle;
use super::state::{Shared, clamp_secs, unix_now};
use super::types::SandboxResources;

/// Published sandbox rates, USD per second (modal-features.md §6).
const CPU_PER_CORE_SECOND: f64 = 0.000_039_42;
const MEMORY_PER_GIB_SECOND: f64 = 0.000_006_72;
/// Modal's defaults for a sandbox that asks for nothing: 0.125 cores, 128 MiB.
const DEFAULT_MILLI_CPU: u32 = 125;
const DEFAULT_MEMORY_MB: u32 = 128;
/// Seconds between statistics samples.
const SAMPLE_SECS: f64 = 5.0;
/// Longest wait of one `SandboxGetLogs` call for the output of a sandbox still stopping.
const MAX_LOG_WAIT_SECS: f64 = 55.0;
/// STDOUT, STDERR.
const FD_STDOUT: i32 = 1;

/// The stream `SandboxGetLogs` answers with.
pub(crate) type LogStream = ReceiverStream<Result<TaskLogsBatch, Status>>;

/// What the stats and logs of one sandbox are made from.
pub(crate) struct UsageInput {
    pub(crate) created_at: f64,
    pub(crate) finished_at: Option<f64>,
    pub(crate) resources: SandboxResources,
    pub(crate) lifecycle: Lifecycle,
}

/// `SandboxGetStats`: the sandbox's cost so far, as far as the delayed samples reach.
pub(crate) fn stats(
    shared: &Arc<Shared>,
    request: SandboxGetStatsRequest,
) -> Result<SandboxGetStatsResponse, RpcError> {
    let usage = shared.with_state(|state| state.sandbox(&request.sandbox_id).map(|s| s.usage()))?;
    let delay = shared.stats_delay();
    let now = unix_now();
    let reach = (now - delay.as_secs_f64()).min(usage.finished_at.unwrap_or(now));
    let seconds = reach - usage.created_at;
    if seconds <= 0.0 {
        return Ok(SandboxGetStatsResponse {
            since: Some(timestamp(usage.created_at)),
            ..Default::default()
        });
    }
    let r = &usage.resources;
    let cores = f64::from(if r.milli_cpu == 0 {
        DEFAULT_MILLI_CPU
    } else {
        r.milli_cpu
    }) / 1000.0;
    let gib = f64::from(if r.memory_mb == 0 {
        DEFAULT_MEMORY_MB
    } else {
        r.memory_mb
    }) / 1024.0;
    let cpu_cost = cores * seconds * CPU_PER_CORE_SECOND;
    let memory_cost = gib * seconds * MEMORY_PER_GIB_SECOND;
    Ok(SandboxGetStatsResponse {
        cost: Some(format!("{:.9}", cpu_cost + memory_cost)),
        cost_by_resource: HashMap::from([
            ("CPU".to_string(), format!("{cpu_cost:.9}")),
            ("Memory".to_string(), format!("{memory_cost:.9}")),
        ]),
        num_datapoints: (seconds / SAMPLE_SECS).ceil().max(1.0) as u64,
        duration_hours: seconds / 3600.0,
        billed_cpu_core_seconds: cores * seconds,
        billed_memory_gib_seconds: gib * seconds,
        since: Some(timestamp(usage.created_at)),
        until: Some(timestamp(reach)),
    })
}

/// `SandboxGetLogs`: the recorded output after `last_entry_id`, then `eof`. A sandbox still
/// running (or still stopping) is waited for up to the request's `timeout`; the stream then
/// ends without `eof`, and the client reopens it.
pub(crate) async fn logs(
    shared: &Arc<Shared>,
    request: SandboxGetLogsRequest,
) -> Result<LogStream, RpcError> {
    let usage = shared.with_state(|state| state.sandbox(&request.sandbox_id).map(|s| s.usage()))?;
    let wait = clamp_secs(request.timeout, 0.0, MAX_LOG_WAIT_SECS);
    let stopped = async {
        usage.lifecycle.wait_outcome(wait).await;
        usage.lifecycle.wait_stopped(wait).await;
    };
    let done = tokio::select! {
        () = stopped => true,
        () = shared.shutdown.cancelled() => false,
    };
    if !done {
        return Err(RpcError::shutting_down());
    }
    let (tx, rx) = mpsc::channel(4);
    let mut batches = Vec::new();
    if let Some(stopped) = usage.lifecycle.stopped() {
        let started = request.last_entry_id.is_empty() || request.last_entry_id == "0-0";
        let text = stopped.log_tail.unwrap_or_default();
        if started && request.file_descriptor == FD_STDOUT && !text.is_empty() {
            batches.push(TaskLogsBatch {
                task_id: String::new(),
                items: vec![TaskLogs {
                    data: text,
                    file_descriptor: FD_STDOUT,
                    ..Default::default()
                }],
                entry_id: "1-0".into(),
                ..Default::default()
            });
        }
        batches.push(TaskLogsBatch {
            entry_id: "1-0".into(),
            eof: true,
            app_done: true,
            ..Default::default()
        });
    }
    for batch in batches {
        // The receiver is in the stream just returned; the channel has room for both.
        let _ = tx.try_send(Ok(batch));
    }
    Ok(ReceiverStream::new(rx))
}

fn timestamp(unix: f64) -> StatsTimestamp {
    StatsTimestamp {
        seconds: unix.floor() as i64,
        nanos: ((unix - unix.floor()) * 1e9) as i32,
    }
}
