//! The in-process service's log lines, captured per world: a JSON `fmt` subscriber set as
//! the test thread's default, writing whole lines into a shared list.
//!
//! `#[tokio::test]` runs every task of a test on its own thread, so the thread's default
//! subscriber sees the service's events and no other test's.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Where captured lines go.
#[derive(Clone, Default)]
pub(crate) struct LogSink {
    lines: Arc<Mutex<Vec<String>>>,
    echo: bool,
}

impl LogSink {
    pub(crate) fn new(echo: bool) -> LogSink {
        LogSink {
            lines: Arc::default(),
            echo,
        }
    }

    pub(crate) fn push(&self, line: String) {
        if self.echo {
            eprintln!("  [service] {line}");
        }
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Makes this sink the current thread's subscriber until the guard is dropped. Only the
    /// service's own events (and its libraries') are kept: the fakes log elsewhere.
    pub(crate) fn install(&self, rust_log: &str) -> DefaultGuard {
        let filter = EnvFilter::try_new(format!("{rust_log},fakes=off,testkit=off"))
            .unwrap_or_else(|_| EnvFilter::new("info,fakes=off,testkit=off"));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_env_filter(filter)
            .with_writer(self.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

/// One event's bytes; pushed as lines when the formatter drops it.
pub(crate) struct LineWriter {
    sink: LogSink,
    buffer: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.sink.push(line.to_string());
        }
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: self.clone(),
            buffer: Vec::new(),
        }
    }
}
