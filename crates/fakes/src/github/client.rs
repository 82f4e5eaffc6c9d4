//! The HTTP client the fakes use to deliver webhooks and the fake runner uses to talk to
//! the fake Actions service: reqwest, over one process-wide connection pool, with a
//! per-request timeout. Only `http://` targets are ever used.

use std::sync::OnceLock;
use std::time::Duration;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A client with a timeout; cheap to create. `new` ones share one pool of kept-alive
/// connections; `one_shot` ones open a connection per request.
#[derive(Debug, Clone)]
pub struct HttpClient {
    timeout: Duration,
    reuse: bool,
}

fn shared(reuse: bool) -> Result<&'static reqwest::Client, HttpError> {
    static POOLED: OnceLock<reqwest::Client> = OnceLock::new();
    static FRESH: OnceLock<reqwest::Client> = OnceLock::new();
    let cell = if reuse { &POOLED } else { &FRESH };
    if let Some(c) = cell.get() {
        return Ok(c);
    }
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30));
    if !reuse {
        builder = builder.pool_max_idle_per_host(0);
    }
    let client = builder.build().map_err(|e| HttpError::Request(e.to_string()))?;
    Ok(cell.get_or_init(|| client))
}

impl HttpClient {
    /// A client whose requests fail after `timeout`, over kept-alive connections.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, reuse: true }
    }

    /// A client that opens a connection per request, as GitHub's webhook deliveries do:
    /// a load balancer in front of several replicas then spreads them.
    pub fn one_shot(timeout: Duration) -> Self {
        Self {
            timeout,
            reuse: false,
        }
    }

    /// Sends one request; the whole exchange is bounded by the timeout.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, HttpError> {
        let method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| HttpError::Request(e.to_string()))?;
        let mut req = shared(self.reuse)?
            .request(method, url)
            .timeout(self.timeout)
            .body(body.to_vec());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.map_err(|e| self.classify(e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await.map_err(|e| self.classify(e))?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// POSTs a JSON document.
    pub async fn post_json(&self, url: &str, value: &serde_json::Value) -> Result<HttpResponse, HttpError> {
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.send("POST", url, &[("content-type", "application/json")], &body)
            .await
    }

    fn classify(&self, e: reqwest::Error) -> HttpError {
        if e.is_timeout() {
            HttpError::Timeout(self.timeout)
        } else if e.is_connect() {
            HttpError::Connect(e.without_url().to_string())
        } else {
            HttpError::Request(e.without_url().to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = HttpClient::new(Duration::from_secs(2))
            .send("GET", &format!("http://{addr}/"), &[], b"")
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, HttpError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let (_conn, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let err = HttpClient::new(Duration::from_millis(200))
            .send("GET", &format!("http://{addr}/"), &[], b"")
            .await
            .expect_err("no answer");
        assert!(matches!(err, HttpError::Timeout(_)), "{err:?}");
        hold.abort();
    }
}
