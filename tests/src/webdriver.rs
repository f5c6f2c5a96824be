//! A minimal W3C WebDriver client for driving the real Tauri window through `tauri-driver`.

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One WebDriver session.
#[derive(Debug)]
pub struct Session {
    http: reqwest::blocking::Client,
    base: String,
    id: String,
}

impl Session {
    /// Open a session on the driver at `base` (for example `http://127.0.0.1:4444`) that starts
    /// the Tauri application at `application`. Retries while the driver is still starting.
    pub fn start(base: &str, application: &std::path::Path) -> anyhow::Result<Self> {
        let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "wry",
            "tauri:options": {"application": application}
        }}});
        let deadline = Instant::now() + Duration::from_secs(30);
        let resp = loop {
            match http.post(format!("{base}/session")).json(&caps).send() {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline && e.is_connect() => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => return Err(e).context("WebDriver did not answer"),
            }
        };
        let body: Value = resp.json()?;
        let id = body["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session id in WebDriver answer: {body}"))?
            .to_string();
        Ok(Session { http, base: base.to_string(), id })
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{}", self.base, self.id, path);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send()?.json()?;
        if let Some(err) = v["value"]["error"].as_str() {
            bail!("WebDriver error {err}: {}", v["value"]["message"]);
        }
        Ok(v["value"].clone())
    }

    /// Wait until an element matching the CSS selector exists and return its text.
    pub fn wait_text(&self, css: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            if let Ok(el) = found {
                let eid = el
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .context("element reference missing")?
                    .to_string();
                let text = self.call(reqwest::Method::GET, &format!("/element/{eid}/text"), None)?;
                return Ok(text.as_str().unwrap_or_default().to_string());
            }
            if Instant::now() > deadline {
                bail!("no element {css:?} after {timeout:?}: {}", found.unwrap_err());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A PNG screenshot of the window.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let v = self.call(reqwest::Method::GET, "/screenshot", None)?;
        let b64 = v.as_str().context("screenshot is not a string")?;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }

    /// End the session (closes the app).
    pub fn close(self) -> anyhow::Result<()> {
        self.http.delete(format!("{}/session/{}", self.base, self.id)).send()?;
        Ok(())
    }
}
