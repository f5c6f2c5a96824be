//! A private X server (Xvfb) for tests that open real windows.

use anyhow::{Context, bail};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Xvfb on its own display; killed on drop.
#[derive(Debug)]
pub struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    /// Start Xvfb on a free display number (chosen by the server via `-displayfd`).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_screen("1280x800x24")
    }

    /// [`Xvfb::start`] with a screen of `geometry` (`WIDTHxHEIGHTxDEPTH`, e.g. `1366x768x24`).
    pub fn start_with_screen(geometry: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", geometry, "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start Xvfb: install it (Debian: apt-get install xvfb)")?;
        let mut out = child.stdout.take().unwrap();
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match out.read(&mut byte)? {
                0 => bail!("Xvfb exited before reporting its display"),
                _ if byte[0] == b'\n' => break,
                _ => buf.push(byte[0]),
            }
        }
        let display = format!(":{}", String::from_utf8(buf)?.trim());
        Ok(Xvfb { child, display })
    }

    /// The `DISPLAY` value for clients.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The X window whose title contains `title`, waited for up to `timeout` (a native dialog a
    /// window opened, say).
    pub fn window_titled(&self, title: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.xdotool(&["search", "--onlyvisible", "--name", title]);
            if let Ok(ids) = &out
                && let Some(id) = ids.lines().next()
            {
                return Ok(id.trim().to_string());
            }
            if Instant::now() > deadline {
                bail!("no window titled {title:?} appeared within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `xdotool` on this display (keys and text go to the focused window, as a keyboard's
    /// would); its output. Each call is bounded to 30 s.
    pub fn xdotool(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("timeout")
            .arg("30")
            .arg("xdotool")
            .args(args)
            .env("DISPLAY", &self.display)
            .output()
            .context("cannot run xdotool: install it (Debian: apt-get install xdotool)")?;
        if !out.status.success() {
            bail!(
                "xdotool {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
