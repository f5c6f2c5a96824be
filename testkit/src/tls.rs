//! A self-signed certificate for a loopback HTTPS server, made by the `openssl` tool (installed
//! by `scripts/setup`): an EC P-256 key, valid for a day, for `127.0.0.1` and `localhost`, with
//! `CA:FALSE` so rustls accepts it as the end entity it also anchors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The certificate and key files, PEM.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SelfSigned {
    /// The certificate's PEM bytes (what a client adds as its trusted root).
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert).expect("the certificate was written")
    }
}

/// Write `cert.pem` and `key.pem` into `dir`.
pub fn self_signed(dir: &Path) -> SelfSigned {
    self_signed_for(dir, "IP:127.0.0.1,DNS:localhost")
}

/// [`self_signed`] for the names in `subject_alt_names` (openssl's form: `IP:192.0.2.1`).
pub fn self_signed_for(dir: &Path, subject_alt_names: &str) -> SelfSigned {
    let files = SelfSigned { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=fieldpatch-test"])
        .args(["-addext", &format!("subjectAltName={subject_alt_names}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup installs it)");
    assert!(status.success(), "openssl could not make a self-signed certificate");
    files
}
