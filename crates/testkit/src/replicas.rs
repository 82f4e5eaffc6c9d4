//! Several replicas of the service on one PostgreSQL database: a fresh database per test,
//! more replicas sharing a world's fakes and store, and a TCP proxy that plays the load
//! balancer in front of them (round robin, skipping a replica that refuses connections)
//! or stands between one replica and a fake to record when it sent requests.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::Connection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::logs::LogSink;
use crate::service::ServiceProcess;
use crate::world::World;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A new, empty database on the PostgreSQL server `TEST_DATABASE_URL` names (which
/// `scripts/test` starts), for one test. Without the variable: a failure when `CI` is set,
/// otherwise `None` after printing that the test was skipped.
pub async fn fresh_postgres_database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("TEST_DATABASE_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "TEST_DATABASE_URL is unset in CI: the PostgreSQL tests would not run (scripts/test sets it)"
        );
        eprintln!("skipped {test}: TEST_DATABASE_URL is unset (scripts/postgres start sets it)");
        return None;
    };
    let name = format!(
        "e2e_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        test.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(30)
            .collect::<String>()
    )
    .to_lowercase();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("TEST_DATABASE_URL answers");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    Some(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

/// One more replica: the world's service binary on its own port, with its own logs.
pub struct Replica {
    pub process: Option<ServiceProcess>,
    pub port: u16,
    logs: LogSink,
}

impl Replica {
    pub fn logs(&self) -> Vec<String> {
        self.logs.lines()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServiceProcess::pid)
    }

    /// SIGTERM, and waits for the exit; its code.
    pub async fn stop(&mut self) -> Option<i32> {
        match self.process.take() {
            Some(p) => p.stop().await,
            None => None,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }
}

impl World {
    /// Starts another replica of the service (`Options::process` worlds) with the world's
    /// environment (same fakes, same `DATABASE_URL`) on a port of its own, `extra`
    /// overriding; waits until it is ready.
    pub async fn start_replica(&self, extra: &[(&str, &str)]) -> Replica {
        self.start_replica_on(crate::free_port(), extra).await
    }

    /// `start_replica` on a given port (a replica restarted where the balancer expects it).
    pub async fn start_replica_on(&self, port: u16, extra: &[(&str, &str)]) -> Replica {
        let crate::ServiceMode::Process { command } = self.options().mode.clone() else {
            panic!("replicas run as processes (Options::process)");
        };
        let mut env = self.service_env();
        env.retain(|(k, _)| k != "PORT" && !extra.iter().any(|(e, _)| e == k));
        env.push(("PORT".into(), port.to_string()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let logs = LogSink::new(self.options().echo_logs);
        let (process, _) = ServiceProcess::start(&command, &env, port, logs.clone())
            .await
            .unwrap_or_else(|e| panic!("the replica did not start: {e}"));
        Replica {
            process: Some(process),
            port,
            logs,
        }
    }
}

/// A TCP proxy on a port of its own, forwarding each connection to the next of its
/// upstream ports that accepts it. It records when requests went upstream: every chunk a
/// client sent over HTTP/1, every HEADERS frame (a new call) over HTTP/2.
pub struct Proxy {
    pub port: u16,
    requests: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(upstreams: Vec<u16>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (recorded, st) = (requests.clone(), stop.clone());
        let upstreams = Arc::new(upstreams);
        let turn = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = st.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((client, _)) = accepted else { continue };
                let first = turn.fetch_add(1, Ordering::Relaxed);
                let (upstreams, recorded, st) = (upstreams.clone(), recorded.clone(), st.clone());
                tokio::spawn(async move {
                    if let Some(server) = connect_next(&upstreams, first).await {
                        tokio::select! {
                            () = st.cancelled() => {}
                            () = relay(client, server, recorded) => {}
                        }
                    }
                });
            }
        });
        Proxy { port, requests, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// When requests went through, oldest first, each with its first line (HTTP/1) or
    /// `HTTP/2 HEADERS`.
    pub fn requests(&self) -> Vec<(Instant, String)> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The first upstream from `first` on (round robin) that accepts a connection.
async fn connect_next(upstreams: &[u16], first: usize) -> Option<TcpStream> {
    for i in 0..upstreams.len() {
        let port = upstreams[(first + i) % upstreams.len()];
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)).await {
            return Some(stream);
        }
    }
    None
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn relay(client: TcpStream, server: TcpStream, recorded: Arc<Mutex<Vec<(Instant, String)>>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        let mut http2: Option<bool> = None;
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            pending.extend_from_slice(&buf[..n]);
            if http2.is_none() && pending.len() >= HTTP2_PREFACE.len() {
                let is2 = pending.starts_with(HTTP2_PREFACE);
                http2 = Some(is2);
                if is2 {
                    pending.drain(..HTTP2_PREFACE.len());
                }
            }
            let calls: Vec<String> = match http2 {
                Some(true) => vec!["HTTP/2 HEADERS".to_string(); headers_frames(&mut pending)],
                Some(false) => {
                    let line = String::from_utf8_lossy(&pending);
                    let first = line.lines().next().unwrap_or_default().to_string();
                    pending.clear();
                    vec![first]
                }
                None => Vec::new(),
            };
            if let Ok(mut r) = recorded.lock() {
                r.extend(calls.into_iter().map(|c| (now, c)));
            }
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}

/// Counts the complete HTTP/2 HEADERS frames at the start of `pending` and removes every
/// complete frame.
fn headers_frames(pending: &mut Vec<u8>) -> usize {
    let mut calls = 0;
    loop {
        if pending.len() < 9 {
            return calls;
        }
        let len = (usize::from(pending[0]) << 16) | (usize::from(pending[1]) << 8) | usize::from(pending[2]);
        if pending.len() < 9 + len {
            return calls;
        }
        if pending[3] == 0x1 {
            calls += 1;
        }
        pending.drain(..9 + len);
    }
}
