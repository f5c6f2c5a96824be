//! The real SWUpdate daemon for tests, and `.swu` images to feed it, made with the real tools
//! (`swupdate`, `cpio`, `openssl`, installed by `scripts/setup`).
//!
//! - [`Vendor`]: an RSA key and a self-signed certificate with the emailProtection purpose (what
//!   SWUpdate checks a signer for).
//! - [`Swu`]: writes `sw-description` (libconfig) with one `raw` image, signs it with
//!   `openssl cms -sign ... -outform DER -nosmimecap -binary`, and packs `cpio -H crc`; variants for
//!   unsigned, wrong-signer, wrong-hardware and tampered images.
//! - [`Daemon`]: `swupdate -H BOARD:REV -k CERT -w "... --auth-domain ... --global-auth-file ..."`
//!   on a free loopback port with its own `TMPDIR` (its IPC sockets) and log; killed on drop. It
//!   panics with a clear message when `swupdate` cannot run, so no test passes without the peer.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A signing vendor: `key.pem` and `cert.pem` in its folder.
#[derive(Debug, Clone)]
pub struct Vendor {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Vendor {
    /// A new vendor key and certificate in `dir` (created), common name `cn`.
    pub fn new(dir: &Path, cn: &str) -> Vendor {
        std::fs::create_dir_all(dir).unwrap();
        let v = Vendor { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        let status = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={cn}")])
            .args(["-addext", "extendedKeyUsage=emailProtection"])
            .args(["-addext", "keyUsage=digitalSignature"])
            .arg("-keyout")
            .arg(&v.key)
            .arg("-out")
            .arg(&v.cert)
            .stderr(Stdio::null())
            .status()
            .expect("openssl runs (scripts/setup installs it)");
        assert!(status.success(), "openssl could not make a vendor certificate");
        v
    }

    /// The certificate, PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).unwrap()
    }
}

/// How to build a `.swu`.
#[derive(Debug, Clone)]
pub struct Swu {
    pub version: String,
    pub hardware: Vec<String>,
    /// The payload's file name inside the archive.
    pub image_name: String,
    pub image: Vec<u8>,
    /// Where the `raw` handler writes it on the device.
    pub device_path: PathBuf,
    /// Sign with this vendor (`None`: no `sw-description.sig`).
    pub signer: Option<Vendor>,
    /// Replace the payload after the description (and its sha256) was made.
    pub tamper: bool,
}

impl Swu {
    /// The `sw-description` text.
    pub fn description(&self) -> String {
        let hw: Vec<String> = self.hardware.iter().map(|h| format!("\"{h}\"")).collect();
        format!(
            "software =\n{{\n\tversion = \"{}\";\n\thardware-compatibility = [ {} ];\n\timages: (\n\t{{\n\t\tfilename = \"{}\";\n\t\ttype = \"raw\";\n\t\tdevice = \"{}\";\n\t\tsha256 = \"{}\";\n\t}}\n\t);\n}}\n",
            self.version,
            hw.join(", "),
            self.image_name,
            self.device_path.display(),
            sha256_hex(&self.image),
        )
    }

    /// Writes the `.swu` as `dir/name` (working files in `dir/name.d`) and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        self.try_write(dir, name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Swu::write`], saying what failed instead of panicking (the demo builds its gateway's
    /// image with it and runs without the gateway when the tools are missing).
    pub fn try_write(&self, dir: &Path, name: &str) -> Result<PathBuf, String> {
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let work = dir.join(format!("{name}.d"));
        std::fs::create_dir_all(&work).map_err(|e| io(&work.display().to_string(), e))?;
        std::fs::write(work.join("sw-description"), self.description())
            .map_err(|e| io("sw-description", e))?;
        let mut payload = self.image.clone();
        if self.tamper
            && let Some(last) = payload.last_mut()
        {
            *last ^= 0x5a;
        }
        std::fs::write(work.join(&self.image_name), &payload)
            .map_err(|e| io(&self.image_name, e))?;
        let mut members = vec!["sw-description".to_string()];
        if let Some(v) = &self.signer {
            let status = Command::new("openssl")
                .args(["cms", "-sign", "-in", "sw-description", "-out", "sw-description.sig"])
                .arg("-signer")
                .arg(&v.cert)
                .arg("-inkey")
                .arg(&v.key)
                .args(["-outform", "DER", "-nosmimecap", "-binary"])
                .current_dir(&work)
                .status()
                .map_err(|e| io("cannot run openssl (install it)", e))?;
            if !status.success() {
                return Err("openssl cms -sign failed".into());
            }
            members.push("sw-description.sig".into());
        }
        members.push(self.image_name.clone());
        let out = dir.join(name);
        let file = std::fs::File::create(&out).map_err(|e| io(&out.display().to_string(), e))?;
        let mut child = Command::new("cpio")
            .args(["-o", "-H", "crc", "--quiet"])
            .current_dir(&work)
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .map_err(|e| io("cannot run cpio (install it)", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(members.join("\n").as_bytes()).map_err(|e| io("cpio", e))?;
        }
        if !child.wait().map_err(|e| io("cpio", e))?.success() {
            return Err("cpio failed".into());
        }
        Ok(out)
    }
}

/// Lowercase hex SHA-256 (by the `sha256sum` tool, so the kit needs no hashing crate).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// Digest credentials the daemon accepts.
#[derive(Debug, Clone)]
pub struct DaemonAuth {
    pub user: String,
    pub realm: String,
    pub password: String,
}

/// A running `swupdate` with its web server, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// A regular file standing for the device's flash (the `raw` handler's target).
    pub flash: PathBuf,
}

impl Daemon {
    /// Starts `swupdate -H hardware -k vendor_cert -w ...` in `dir` (created).
    pub fn start(
        dir: &Path,
        hardware: &str,
        vendor_cert: &Path,
        auth: Option<&DaemonAuth>,
    ) -> Daemon {
        Daemon::start_with(dir, hardware, vendor_cert, auth, false)
    }

    /// [`Daemon::start`], with `post_update`: the daemon's post-update command (`-p`, what a
    /// gateway runs to reboot into the new software when asked on `/restart`) touches
    /// [`Daemon::restart_marker`].
    pub fn start_with(
        dir: &Path,
        hardware: &str,
        vendor_cert: &Path,
        auth: Option<&DaemonAuth>,
        post_update: bool,
    ) -> Daemon {
        Daemon::try_start_with(dir, hardware, vendor_cert, auth, post_update)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Daemon::start_with`], saying what failed instead of panicking.
    pub fn try_start_with(
        dir: &Path,
        hardware: &str,
        vendor_cert: &Path,
        auth: Option<&DaemonAuth>,
        post_update: bool,
    ) -> Result<Daemon, String> {
        Daemon::launch(dir, hardware, vendor_cert, auth, post_update, false)
    }

    /// [`Daemon::try_start_with`] for a daemon that must not outlive its process even when that
    /// process is killed (the demo's gateway): on Linux the kernel kills the daemon when the
    /// thread that started it ends, so call this from a thread that lives as long as the daemon
    /// is used (the main thread).
    pub fn try_start_tied(
        dir: &Path,
        hardware: &str,
        vendor_cert: &Path,
        auth: Option<&DaemonAuth>,
    ) -> Result<Daemon, String> {
        Daemon::launch(dir, hardware, vendor_cert, auth, false, true)
    }

    fn launch(
        dir: &Path,
        hardware: &str,
        vendor_cert: &Path,
        auth: Option<&DaemonAuth>,
        post_update: bool,
        tied: bool,
    ) -> Result<Daemon, String> {
        let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
        let www = dir.join("www");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&www).map_err(|e| io(&www, e))?;
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        std::fs::write(www.join("index.html"), "<html>swupdate</html>\n")
            .map_err(|e| io(&www, e))?;
        let flash = dir.join("flash.bin");
        std::fs::write(&flash, b"").map_err(|e| io(&flash, e))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let mut web = format!("-r {} -p {port}", www.display());
        if let Some(a) = auth {
            let file = dir.join("htdigest");
            let ha1 = md5_hex(&format!("{}:{}:{}", a.user, a.realm, a.password))?;
            std::fs::write(&file, format!("{}:{}:{ha1}\n", a.user, a.realm))
                .map_err(|e| io(&file, e))?;
            web.push_str(&format!(
                " --auth-domain {} --global-auth-file {}",
                a.realm,
                file.display()
            ));
        }
        let log = dir.join("swupdate.log");
        let out = std::fs::File::create(&log).map_err(|e| io(&log, e))?;
        let err = out.try_clone().map_err(|e| io(&log, e))?;
        let mut command = Command::new("swupdate");
        command.args(["-v", "-H", hardware, "-k"]).arg(vendor_cert);
        if post_update {
            command.arg("-p").arg(format!("touch {}", dir.join("restarted").display()));
        }
        #[cfg(target_os = "linux")]
        if tied {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: between fork and exec the child only makes one prctl call, which is
            // async-signal-safe.
            #[allow(unsafe_code, reason = "pre_exec is the only way to set PR_SET_PDEATHSIG")]
            unsafe {
                command.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = tied;
        let child = command
            .args(["-w", &web])
            .env("TMPDIR", &tmp)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start the SWUpdate daemon (`swupdate`; on Debian: apt install swupdate): {e}"
                )
            })?;
        let mut d = Daemon { child, port, dir: dir.to_path_buf(), log, flash };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "the SWUpdate daemon exited at start ({status}); its log:\n{}",
                    d.log_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the SWUpdate daemon did not listen on port {port} within 10 s; its log:\n{}",
                    d.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    /// The file the post-update command of [`Daemon::start_with`] touches.
    pub fn restart_marker(&self) -> PathBuf {
        self.dir.join("restarted")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the daemon has logged so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Whether the daemon ever began an install (an image reached it).
    pub fn started_an_update(&self) -> bool {
        self.log_text().contains("Software Update started")
    }

    /// The flash file's bytes.
    pub fn flash_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.flash).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn md5_hex(s: &str) -> Result<String, String> {
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run md5sum: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(s.as_bytes()).map_err(|e| format!("md5sum: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("md5sum: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "md5sum printed nothing".into())
}
