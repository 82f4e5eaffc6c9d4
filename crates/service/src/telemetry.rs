//! Logging: human-readable or JSON lines, level from `RUST_LOG` (default `info`). Log
//! lines carry ids and names only; tokens, webhook secrets, JIT configs and webhook bodies
//! are never logged.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call is a no-op (tests start several services).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// An error and its causes on one line, `outer: cause: cause…`, leaving out a cause whose
/// text the line already holds. Libraries often both print their cause and return it as
/// the source (sqlx's "error returned from database: (code: 14) unable to open database
/// file" is followed by its source, "(code: 14) unable to open database file"), so
/// anyhow's `{:#}` said the same thing up to three times.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("error returned from database: {0}")]
    struct Wrapping(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("(code: 14) unable to open database file")]
    struct Inner;

    #[test]
    fn a_cause_already_quoted_by_the_error_above_it_is_said_once() {
        let error =
            anyhow::Error::new(Wrapping(Inner)).context("could not open the store at sqlite:///x/s.db");
        assert_eq!(
            error_chain(&error),
            "could not open the store at sqlite:///x/s.db: error returned from database: \
             (code: 14) unable to open database file"
        );
    }

    #[test]
    fn causes_with_text_of_their_own_are_all_kept_in_order() {
        let error = anyhow::anyhow!("connection refused")
            .context("could not reach Modal")
            .context("could not start");
        assert_eq!(
            error_chain(&error),
            "could not start: could not reach Modal: connection refused"
        );
    }
}
