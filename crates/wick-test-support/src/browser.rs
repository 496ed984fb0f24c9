//! A headless Chromium driven over the Chrome DevTools Protocol, so that integration tests can load
//! a real page (the gateway's live chart), run JavaScript in it, wait for what it shows and take
//! screenshots.
//!
//! Only what tests need: one browser process per [`Browser`] (killed, with its profile directory
//! removed, on drop), one DevTools WebSocket per [`Page`], and request/answer calls matched by
//! `id`; events are read and dropped. The binary is Debian's `chromium` (`WICK_CHROMIUM` overrides
//! it); a missing browser fails the test with the command that installs it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to print its DevTools address (a cold start on a busy machine).
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one DevTools call may take before the page is considered stuck.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Browser::open`] waits for the page's `load` event.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Every page's viewport (CSS pixels, device scale factor 1), so that screenshots have a known size.
pub const VIEWPORT: (u32, u32) = (1280, 800);

/// A headless Chromium process with its own temporary profile.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    user_data_dir: PathBuf,
    websocket_url: String,
}

impl Browser {
    /// Starts `chromium --headless=new` on a free DevTools port and waits (blocking, up to 30 s)
    /// until it prints the DevTools address.
    pub fn launch() -> Result<Browser> {
        let binary = std::env::var("WICK_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
        let user_data_dir = std::env::temp_dir().join(crate::unique_name("wick-chromium"));
        std::fs::create_dir_all(&user_data_dir).with_context(|| format!("creating {}", user_data_dir.display()))?;
        let mut command = Command::new(&binary);
        command
            .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0"])
            .arg(format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1))
            .arg(format!("--user-data-dir={}", user_data_dir.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that drop ends the renderers and helpers with it.
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&user_data_dir);
                if e.kind() == std::io::ErrorKind::NotFound {
                    bail!("the browser `{binary}` is not installed: run `apt-get install chromium`, or set WICK_CHROMIUM to its path");
                }
                return Err(e).with_context(|| format!("starting {binary}"));
            }
        };
        // From here on, dropping `browser` kills the process and removes the profile.
        let stderr = child.stderr.take();
        let mut browser = Browser { child, user_data_dir, websocket_url: String::new() };
        let stderr = stderr.context("chromium's stderr was not captured")?;
        browser.websocket_url = browser.read_devtools_url(&binary, stderr)?;
        Ok(browser)
    }

    /// Reads stderr until `DevTools listening on ws://...`. A thread keeps draining it afterwards
    /// so that a chatty browser never blocks on a full pipe.
    fn read_devtools_url(&mut self, binary: &str, stderr: std::process::ChildStderr) -> Result<String> {
        let (lines_tx, lines_rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // The receiver is gone once the address is known; keep reading regardless.
                let _ = lines_tx.send(line);
            }
        });
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("DevTools listening on ") {
                        return Ok(url.to_owned());
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{binary} printed no DevTools address in {LAUNCH_TIMEOUT:?}; its stderr: {}", tail(&seen))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    bail!("{binary} exited ({status}) before printing its DevTools address; its stderr: {}", tail(&seen))
                }
            }
        }
    }

    /// The browser's DevTools WebSocket, `ws://127.0.0.1:<port>/devtools/browser/<id>`.
    pub fn websocket_url(&self) -> &str {
        &self.websocket_url
    }

    /// Opens `url` in a new tab with a [`VIEWPORT`]-sized viewport and returns once its `load`
    /// event has fired (`document.readyState` is `complete`). A navigation error (connection refused, bad host) is an error; an HTTP
    /// error status is not, the page shows what the server sent.
    pub async fn open(&self, url: &str) -> Result<Page> {
        let browser = Connection::connect(&self.websocket_url).await?;
        let created = browser.call("Target.createTarget", json!({ "url": "about:blank" })).await?;
        let target_id = created.get("targetId").and_then(Value::as_str).context("Target.createTarget answered without a targetId")?;
        let host = self
            .websocket_url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("unexpected DevTools address {}", self.websocket_url))?;
        let page = Page {
            connection: Connection::connect(&format!("ws://{host}/devtools/page/{target_id}")).await?,
            target_id: target_id.to_owned(),
        };
        // The window's own viewport is smaller than the window by whatever frame headless draws.
        let metrics = json!({ "width": VIEWPORT.0, "height": VIEWPORT.1, "deviceScaleFactor": 1, "mobile": false });
        page.connection.call("Emulation.setDeviceMetricsOverride", metrics).await?;
        page.navigate(url).await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: the browser process and the zygote, renderer and crash handler it forked.
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.user_data_dir);
    }
}

/// The last lines a process printed, for an error message.
fn tail(lines: &[String]) -> String {
    let start = lines.len().saturating_sub(10);
    let text = lines[start..].join(" | ");
    if text.is_empty() {
        "(nothing)".to_owned()
    } else {
        text
    }
}

/// One tab, driven over its own DevTools WebSocket.
#[derive(Debug)]
pub struct Page {
    connection: Connection,
    target_id: String,
}

impl Page {
    /// The DevTools target id of the tab.
    pub fn target_id(&self) -> &str {
        &self.target_id
    }

    /// Loads `url` in this tab and waits for its `load` event.
    pub async fn navigate(&self, url: &str) -> Result<()> {
        let answer = self.connection.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer.get("errorText").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            bail!("loading {url}: {error}");
        }
        self.wait_for("document.readyState === 'complete'", LOAD_TIMEOUT).await.with_context(|| format!("loading {url}"))?;
        Ok(())
    }

    /// Evaluates `js` in the page and returns its value as JSON (`null` for `undefined`). A
    /// promise is awaited. A JavaScript exception is an error with the exception's message.
    pub async fn eval(&self, js: &str) -> Result<Value> {
        self.evaluate(js).await?.map_err(|exception| anyhow!("evaluating `{js}` threw {exception}"))
    }

    /// Polls `js_condition` every 50 ms until it is truthy (in the JavaScript sense) and returns
    /// its value. An exception counts as not yet (the page may still be loading). On timeout the
    /// error names the condition and its last value or exception.
    pub async fn wait_for(&self, js_condition: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("(not evaluated)");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.evaluate(js_condition)).await {
                Ok(Ok(Ok(value))) if truthy(&value) => return Ok(value),
                Ok(Ok(Ok(value))) => last = value.to_string(),
                Ok(Ok(Err(exception))) => last = format!("exception {exception}"),
                Ok(Err(e)) => return Err(e.context(format!("waiting for `{js_condition}`"))),
                Err(_) => last = format!("{last}, then no answer"),
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for `{js_condition}`; last value: {last}");
            }
            tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&self) -> Result<Vec<u8>> {
        let answer = self.connection.call("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = answer.get("data").and_then(Value::as_str).context("Page.captureScreenshot answered without data")?;
        decode_base64(data).context("decoding the screenshot")
    }

    /// `Runtime.evaluate`: the outer error is the connection's, the inner one the page's exception.
    async fn evaluate(&self, js: &str) -> Result<std::result::Result<Value, String>> {
        let params = json!({ "expression": js, "returnByValue": true, "awaitPromise": true });
        let answer = self.connection.call("Runtime.evaluate", params).await?;
        if let Some(details) = answer.get("exceptionDetails") {
            let description = details.pointer("/exception/description").and_then(Value::as_str);
            let value = details.pointer("/exception/value").filter(|v| !v.is_null()).map(Value::to_string);
            let text = details.get("text").and_then(Value::as_str);
            let message = description.map(str::to_owned).or(value).or(text.map(str::to_owned)).unwrap_or_else(|| details.to_string());
            return Ok(Err(message));
        }
        Ok(Ok(answer.pointer("/result/value").cloned().unwrap_or(Value::Null)))
    }
}

/// JavaScript truthiness of a JSON value.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A DevTools WebSocket. One call at a time; answers are matched to calls by `id`, so an answer
/// that arrives after its call timed out is skipped like an event.
#[derive(Debug)]
struct Connection {
    url: String,
    session: Mutex<Session>,
}

#[derive(Debug)]
struct Session {
    socket: Socket,
    next_id: u64,
}

impl Connection {
    async fn connect(url: &str) -> Result<Connection> {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.with_context(|| format!("connecting to DevTools at {url}"))?;
        Ok(Connection { url: url.to_owned(), session: Mutex::new(Session { socket, next_id: 0 }) })
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        match tokio::time::timeout(CALL_TIMEOUT, self.call_unbounded(method, params)).await {
            Ok(answer) => answer,
            Err(_) => bail!("DevTools at {} did not answer {method} in {CALL_TIMEOUT:?}", self.url),
        }
    }

    async fn call_unbounded(&self, method: &str, params: Value) -> Result<Value> {
        let mut session = self.session.lock().await;
        session.next_id += 1;
        let id = session.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        session.socket.send(Message::text(request.to_string())).await.with_context(|| format!("sending {method} to {}", self.url))?;
        loop {
            let message = session
                .socket
                .next()
                .await
                .with_context(|| format!("DevTools at {} closed the connection before answering {method}", self.url))?
                .with_context(|| format!("reading the answer to {method} from {}", self.url))?;
            let text = match message {
                Message::Text(text) => text,
                Message::Close(frame) => bail!("DevTools at {} closed the connection ({frame:?}) before answering {method}", self.url),
                _ => continue,
            };
            let answer: Value = serde_json::from_str(&text).with_context(|| format!("DevTools sent a message that is not JSON: {text}"))?;
            if answer.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(error) = answer.get("error") {
                let message = error.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| error.to_string());
                bail!("{method} failed: {message}");
            }
            return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
        }
    }
}

/// Standard base64 (RFC 4648, with or without padding), which is how DevTools sends binary data.
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut count = 0;
    for (i, byte) in text.bytes().enumerate() {
        let sextet = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("not base64: byte {byte:#04x} at {i}"),
        };
        bits = (bits << 6) | u32::from(sextet);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert_eq!(decode_base64("TQ").unwrap(), b"M");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("iVBORw0KGgo=").unwrap(), [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a]);
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        let err = decode_base64("TW Fu").unwrap_err();
        assert!(err.to_string().contains("at 2"), "{err}");
    }

    #[test]
    fn truthiness_is_javascripts() {
        for falsy in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&falsy), "{falsy}");
        }
        for truthy_value in [json!(true), json!(1), json!(-0.5), json!("0"), json!([]), json!({})] {
            assert!(truthy(&truthy_value), "{truthy_value}");
        }
    }
}
