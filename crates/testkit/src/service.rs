//! The service as a child process: for tests that SIGKILL or restart it, and for benchmarks
//! that measure its memory and CPU.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::logs::LogSink;

/// A running `modal-github-runner serve`.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
    logs: LogSink,
}

impl ServiceProcess {
    /// Runs `command` (the service binary and `serve`, or a program that serves the same
    /// way) with exactly `env` (plus PATH and HOME) on `port`, and waits until `/readyz`
    /// answers 200. Returns the process and how long it took to become ready.
    pub(crate) async fn start(
        command: &[String],
        env: &[(String, String)],
        port: u16,
        sink: LogSink,
    ) -> std::io::Result<(ServiceProcess, Duration)> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("no service command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("PORT", port.to_string())
            .env("BIND_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        if let Some(stderr) = child.stderr.take() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.push(line);
                }
            });
        }
        let mut service = ServiceProcess {
            child,
            port,
            logs: sink,
        };
        service.wait_ready().await?;
        Ok((service, started.elapsed()))
    }

    async fn wait_ready(&mut self) -> std::io::Result<()> {
        fakes::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(std::io::Error::other)?;
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "the service exited during start-up ({status}):\n{}",
                    self.tail(20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(std::io::Error::other("the service did not become ready in 120 s"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now and at its peak, in KiB (`/proc/<pid>/status`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User plus system CPU time used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        // After the command: state is field 3, utime 14 and stime 15 (1-based).
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
            .sum();
        // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
        Duration::from_millis(ticks * 10)
    }

    pub fn tail(&self, n: usize) -> String {
        let logs = self.logs.lines();
        logs[logs.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, then waits up to 30 s for the exit; its code (`None`: killed after all).
    pub async fn stop(mut self) -> Option<i32> {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
