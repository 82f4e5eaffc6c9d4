//! What a finished sandbox cost (`SandboxGetStats`) and what it printed (`SandboxGetLogs`),
//! shared/docs/modal-features.md §6 and §7 (issue 13 items 4 and 5). Both are bounded:
//! one stats call per try, and a log read with a byte cap and a deadline.

use std::time::{Duration, Instant};

use super::proto::{SandboxGetLogsRequest, SandboxGetStatsRequest, SandboxGetStatsResponse};
use super::{BackendError, ModalBackend, classify};
use crate::backend::StatsCost;
use crate::costs::Resources;
use crate::domain::MachineSpec;

/// Output streams read for a failure tail: stdout, then stderr.
const LOG_FDS: [i32; 2] = [1, 2];
/// Most bytes of output read from one stream (the tail is cut from these).
const LOG_READ_BYTES: usize = 256 * 1024;
/// How long reading one stream may take in all.
const LOG_READ_TIME: Duration = Duration::from_secs(10);
/// Reopenings of a log stream that ended without `eof`.
const LOG_REOPENS: u32 = 3;
/// Statistics cover the sandbox's life when their `until` is at most this much before the
/// service saw it end (samples are a few seconds apart; the reaper sees an end late).
const STATS_SLACK_SECS: f64 = 120.0;

impl ModalBackend {
    /// The resources a sandbox for `machine` is created with (the labels' values, else
    /// the configured defaults).
    pub fn resources(&self, machine: &MachineSpec) -> Resources {
        let s = &self.settings;
        Resources {
            cpu: machine.cpu.unwrap_or(s.cpu),
            memory_gib: f64::from(machine.memory_mib.unwrap_or(s.memory_mib)) / 1024.0,
            gpu: machine
                .gpu
                .as_ref()
                .or(s.gpu.as_ref())
                .map(|g| (g.kind.clone(), g.count.max(1))),
        }
    }

    /// Modal's own figure for a finished sandbox, once its statistics reach its end
    /// (`ended_at`, Unix milliseconds); they arrive a few minutes late.
    pub async fn stats_cost(&self, id: &str, ended_at: i64) -> Result<StatsCost, BackendError> {
        let request = SandboxGetStatsRequest {
            sandbox_id: id.to_string(),
            since: None,
            until: None,
        };
        let resp = self
            .api
            .unary(
                "SandboxGetStats",
                request,
                Duration::from_secs(30),
                |mut c, r| async move { c.sandbox_get_stats(r).await },
            )
            .await
            .map_err(|e| classify(&e))?;
        Ok(read_stats(&resp, ended_at as f64 / 1000.0))
    }

    /// The end of what the sandbox wrote to stdout and stderr; `None` when nothing could be
    /// read. The caller masks and cuts it.
    pub async fn output(&self, id: &str) -> Option<String> {
        let mut out = String::new();
        for fd in LOG_FDS {
            if let Some(text) = self.read_stream(id, fd).await {
                out.push_str(&text);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// One output stream from its start to `eof`, keeping its last [`LOG_READ_BYTES`].
    async fn read_stream(&self, id: &str, fd: i32) -> Option<String> {
        let started = Instant::now();
        let mut last_entry = String::new();
        let mut text = String::new();
        for _ in 0..=LOG_REOPENS {
            let left = LOG_READ_TIME.checked_sub(started.elapsed())?;
            let request = SandboxGetLogsRequest {
                sandbox_id: id.to_string(),
                file_descriptor: fd,
                timeout: left.as_secs_f32().min(5.0),
                last_entry_id: last_entry.clone(),
            };
            let (mut client, req) = self.api.streaming_request(request, left);
            let mut stream = client.sandbox_get_logs(req).await.ok()?.into_inner();
            loop {
                match tokio::time::timeout(left, stream.message()).await {
                    Ok(Ok(Some(batch))) => {
                        for item in &batch.items {
                            text.push_str(&item.data);
                        }
                        if text.len() > LOG_READ_BYTES {
                            let mut cut = text.len() - LOG_READ_BYTES;
                            while !text.is_char_boundary(cut) {
                                cut += 1;
                            }
                            text.drain(..cut);
                        }
                        if !batch.entry_id.is_empty() {
                            last_entry = batch.entry_id;
                        }
                        if batch.eof {
                            return Some(text);
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(_)) | Err(_) => return (!text.is_empty()).then_some(text),
                }
            }
        }
        (!text.is_empty()).then_some(text)
    }
}

/// The cost in a stats answer, if the answer covers the sandbox up to `ended_at` (Unix
/// seconds).
fn read_stats(resp: &SandboxGetStatsResponse, ended_at: f64) -> StatsCost {
    let Some(cost) = resp.cost.as_deref().and_then(|c| c.trim().parse::<f64>().ok()) else {
        return StatsCost::NotYet;
    };
    if !cost.is_finite() || cost < 0.0 || resp.num_datapoints == 0 {
        return StatsCost::NotYet;
    }
    let until = resp
        .until
        .as_ref()
        .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
    if until + STATS_SLACK_SECS < ended_at {
        return StatsCost::NotYet;
    }
    StatsCost::Dollars(cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::modal::proto::StatsTimestamp;

    fn answer(cost: Option<&str>, points: u64, until: i64) -> SandboxGetStatsResponse {
        SandboxGetStatsResponse {
            cost: cost.map(str::to_string),
            num_datapoints: points,
            until: Some(StatsTimestamp {
                seconds: until,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn stats_count_only_once_they_reach_the_sandboxs_end() {
        assert_eq!(
            read_stats(&answer(Some("0.0123"), 10, 1000), 1000.0),
            StatsCost::Dollars(0.0123)
        );
        assert_eq!(
            read_stats(&answer(Some("0.01"), 10, 500), 1000.0),
            StatsCost::NotYet
        );
        assert_eq!(read_stats(&answer(None, 0, 1000), 1000.0), StatsCost::NotYet);
        assert_eq!(
            read_stats(&answer(Some("0.01"), 0, 1000), 1000.0),
            StatsCost::NotYet
        );
        assert_eq!(
            read_stats(&answer(Some("n/a"), 3, 1000), 1000.0),
            StatsCost::NotYet
        );
    }
}
