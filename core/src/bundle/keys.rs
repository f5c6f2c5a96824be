//! Where private signing keys come from.
//!
//! [`KeySource`] is the one place a signing key is loaded, so other sources (the OS keyring) slot
//! in as variants. Private keys are PKCS#8 PEM files created with mode 0600; a key file that group
//! or others can read is refused. Key material is never formatted into an error or a log.

use super::BundleError;
use super::signature::key_id;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, spki::der::pem::LineEnding};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A place a private signing key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PKCS#8 PEM file the user names (mode 0600).
    File(PathBuf),
}

impl KeySource {
    /// Load the signing key.
    pub fn load(&self) -> Result<SigningKey, BundleError> {
        match self {
            KeySource::File(path) => load_key_file(path),
        }
    }
}

fn key_err(reason: String) -> BundleError {
    BundleError::Key { reason }
}

fn load_key_file(path: &Path) -> Result<SigningKey, BundleError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| BundleError::io(format!("reading key file {}", path.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(key_err(format!(
                "key file {} can be read by other users (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            )));
        }
    }
    if meta.len() > 16 << 10 {
        return Err(key_err(format!("{} is too large to be a key file", path.display())));
    }
    let pem = std::fs::read_to_string(path)
        .map_err(|e| BundleError::io(format!("reading key file {}", path.display()), e))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
        key_err(format!(
            "{} is not an ed25519 PKCS#8 PEM private key (make one with `fieldpatch keys generate`)",
            path.display()
        ))
    })
}

/// Generate a new key and write its private half to `path` (which must not exist) with mode 0600.
/// Returns the key id and the public key (hex).
pub fn generate_key_file(path: &Path) -> Result<(String, String), BundleError> {
    let key = SigningKey::generate(&mut rand::rand_core::UnwrapErr(rand::rngs::SysRng));
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| key_err("could not encode the new key".into()))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        BundleError::io(format!("creating key file {} (it must not exist yet)", path.display()), e)
    })?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| BundleError::io(format!("writing key file {}", path.display()), e))?;
    let public = key.verifying_key();
    Ok((key_id(&public), hex::encode(public.as_bytes())))
}
