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
        Self::start_with_args(base, application, &[])
    }

    /// [`Session::start`], starting the application with `args`.
    pub fn start_with_args(
        base: &str,
        application: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let http =
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build()?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "wry",
            "tauri:options": {"application": application, "args": args}
        }}});
        // tauri-driver answers before its native WebKitWebDriver is ready: retry until a session
        // is created or the deadline passes, and report the last answer.
        let deadline = Instant::now() + Duration::from_secs(30);
        let id = loop {
            let attempt = http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(r.json::<Value>()?))
                .and_then(|body| {
                    body["value"]["sessionId"]
                        .as_str()
                        .map(str::to_string)
                        .with_context(|| format!("no session id in WebDriver answer: {body}"))
                });
            match attempt {
                Ok(id) => break id,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250))
                }
                Err(e) => return Err(e.context("WebDriver did not start a session in 30 s")),
            }
        };
        Ok(Session { http, base: base.to_string(), id })
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
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
                let text =
                    self.call(reqwest::Method::GET, &format!("/element/{eid}/text"), None)?;
                return Ok(text.as_str().unwrap_or_default().to_string());
            }
            if Instant::now() > deadline {
                bail!("no element {css:?} after {timeout:?}: {}", found.unwrap_err());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn find(&self, css: &str) -> anyhow::Result<String> {
        let el = self.call(
            reqwest::Method::POST,
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        Ok(el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .context("element reference missing")?
            .to_string())
    }

    /// Click the element matching the CSS selector (waiting for it to exist and be enabled).
    pub fn click(&self, css: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = self.find(css).and_then(|eid| {
                let enabled =
                    self.call(reqwest::Method::GET, &format!("/element/{eid}/enabled"), None)?;
                if enabled != Value::Bool(true) {
                    bail!("{css} is disabled");
                }
                self.call(reqwest::Method::POST, &format!("/element/{eid}/click"), Some(json!({})))
            });
            match attempt {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!("clicking {css}")));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Type `text` into the input matching the CSS selector.
    pub fn type_text(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let eid = self.find(css)?;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{eid}/value"),
            Some(
                json!({"text": text, "value": text.chars().map(String::from).collect::<Vec<_>>()}),
            ),
        )?;
        Ok(())
    }

    /// Wait until the text of the element matching `css` satisfies `ok`; returns that text.
    pub fn wait_for(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Ok(eid) = self.find(css)
                && let Ok(t) =
                    self.call(reqwest::Method::GET, &format!("/element/{eid}/text"), None)
            {
                last = t.as_str().unwrap_or_default().to_string();
                if ok(&last) {
                    return Ok(last);
                }
            }
            if Instant::now() > deadline {
                bail!("{css}: still {last:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Run `script` in the window as an asynchronous script (it calls the last of its
    /// `arguments` with its result) and return that result.
    pub fn execute_async(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Resize the window to `width` x `height` (CSS pixels of the outer window).
    pub fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )?;
        Ok(())
    }

    /// Press `key` (a character, or a WebDriver key code such as `"\u{E004}"` for Tab) on
    /// whatever has the keyboard focus, as a user would.
    pub fn press_key(&self, key: &str) -> anyhow::Result<()> {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}
        ]}]});
        self.call(reqwest::Method::POST, "/actions", Some(actions))?;
        Ok(())
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
