//! A real headless browser for tests of pages: Chromium, driven through the DevTools
//! protocol (a JSON-over-WebSocket protocol), so a test reads what the page *shows*
//! (`document.body.innerText`, after layout) rather than its HTML source, and can keep a
//! screenshot. CI installs Debian's `chromium` package; without it the test fails, it is
//! never skipped.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page open.
pub struct Browser {
    child: Child,
    page: Socket,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// The Chromium binary: `CHROMIUM` if set, else the first of the usual names on `PATH`.
fn binary() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| which(name))
        .unwrap_or("chromium")
        .to_string()
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}

impl Browser {
    /// Starts Chromium on `url` in a window of `width`×`height` and waits until the page
    /// has loaded.
    pub async fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.path().display()),
                &format!("--window-size={width},{height}"),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start Chromium ({}): {e}; install Debian's chromium",
                    binary()
                )
            });
        let stderr = child.stderr.take().expect("stderr");
        let endpoint = tokio::time::timeout(Duration::from_secs(30), devtools_endpoint(stderr))
            .await
            .expect("Chromium printed its DevTools endpoint in time");
        let page = page_socket(&endpoint).await;
        let mut browser = Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        };
        browser.wait_loaded(url).await;
        browser
    }

    /// The text the page shows, as laid out.
    pub async fn text(&mut self) -> String {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({"expression": "document.body.innerText", "returnByValue": true}),
            )
            .await;
        answer["result"]["value"].as_str().unwrap_or_default().to_string()
    }

    /// Saves a PNG of the page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let answer = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["data"].as_str().unwrap_or_default())
            .expect("a base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("screenshot written");
    }

    /// Polls until the page at `url` (not the blank page a new tab starts with) is loaded.
    async fn wait_loaded(&mut self, url: &str) {
        for _ in 0..300 {
            let answer = self
                .call(
                    "Runtime.evaluate",
                    json!({"expression": "[document.readyState, location.href]", "returnByValue": true}),
                )
                .await;
            let state = &answer["result"]["value"];
            if state[0] == "complete" && state[1].as_str().is_some_and(|href| href.starts_with(url)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the page did not finish loading");
    }

    /// One DevTools command and its result, skipping the events sent meanwhile.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params}).to_string();
        self.page
            .send(Message::text(request))
            .await
            .expect("sent to Chromium");
        while let Some(message) = self.page.next().await {
            let Ok(Message::Text(text)) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
        panic!("Chromium closed the DevTools connection");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Reads Chromium's stderr until it says where its DevTools endpoint listens.
async fn devtools_endpoint(stderr: tokio::process::ChildStderr) -> String {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(at) = line.find("ws://") {
            let ws = &line[at..];
            // ws://127.0.0.1:PORT/devtools/browser/ID → http://127.0.0.1:PORT
            let host = ws
                .trim_start_matches("ws://")
                .split('/')
                .next()
                .unwrap_or_default();
            return format!("http://{host}");
        }
    }
    panic!("Chromium exited without a DevTools endpoint");
}

/// Connects to the DevTools socket of the first page target.
async fn page_socket(endpoint: &str) -> Socket {
    for _ in 0..100 {
        let targets: Vec<Value> = match reqwest::get(format!("{endpoint}/json/list")).await {
            Ok(resp) => resp.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        if let Some(ws) = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        {
            let (socket, _) = tokio_tungstenite::connect_async(ws)
                .await
                .expect("DevTools socket");
            return socket;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Chromium has no page target");
}
