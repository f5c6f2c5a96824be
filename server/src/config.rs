//! The server's configuration file (TOML, `--config FILE`): the same settings as the command-line
//! flags and environment variables, which override it. Every key is optional; an unknown key or a
//! value of the wrong type is an error naming the key, so a typo never passes silently.
//!
//! ```toml
//! data_dir = "/var/lib/fieldpatch-server"
//! database = "postgres://fieldpatch@db.internal/fieldpatch?sslmode=verify-full&sslrootcert=/etc/fieldpatch/db-ca.pem"
//! listen = "127.0.0.1:8470"
//! tls_cert = "/etc/fieldpatch/server.crt"
//! tls_key = "/etc/fieldpatch/server.key"
//! allow_insecure_non_loopback = false
//! shutdown_grace_secs = 30
//! log = "info"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Settings read from a configuration file; `None` where the file says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Directory for the server keys and the default SQLite database (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Database URL (`--database`). May hold a password: never logged.
    pub database: Option<String>,
    /// Address to listen on (`serve --listen`).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain (`serve --tls-cert`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (`serve --tls-key`).
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP on a non-loopback address (`serve --allow-insecure-non-loopback`).
    pub allow_insecure_non_loopback: Option<bool>,
    /// Seconds requests in flight get to finish at shutdown (`serve --shutdown-grace-secs`).
    pub shutdown_grace_secs: Option<u64>,
    /// Log filter, as `RUST_LOG` takes it (`--log`).
    pub log: Option<String>,
}

/// The keys a configuration file may hold.
pub const KEYS: &[&str] = &[
    "data_dir",
    "database",
    "listen",
    "tls_cert",
    "tls_key",
    "allow_insecure_non_loopback",
    "shutdown_grace_secs",
    "log",
];

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid TOML: {detail}")]
    Syntax { path: PathBuf, detail: String },
    #[error(
        "configuration file {path}: unknown key `{key}`; the keys are {}",
        KEYS.join(", ")
    )]
    UnknownKey { path: PathBuf, key: String },
    #[error("configuration file {path}: key `{key}` {detail}")]
    BadValue { path: PathBuf, key: String, detail: String },
}

impl Config {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Check the text of a configuration file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            ConfigError::Syntax { path: path.to_path_buf(), detail: e.message().to_string() }
        })?;
        let mut c = Config::default();
        for (key, value) in &table {
            let bad = |detail: String| ConfigError::BadValue {
                path: path.to_path_buf(),
                key: key.clone(),
                detail,
            };
            let text = || {
                value.as_str().map(str::to_string).ok_or_else(|| {
                    bad(format!("must be a string in quotes, not {}", value.type_str()))
                })
            };
            match key.as_str() {
                "data_dir" => c.data_dir = Some(PathBuf::from(text()?)),
                "database" => {
                    let url = text()?;
                    if !["postgres://", "postgresql://", "sqlite://"]
                        .iter()
                        .any(|p| url.starts_with(p))
                    {
                        return Err(bad(
                            "must be a postgres://... or sqlite://PATH URL".to_string()
                        ));
                    }
                    c.database = Some(url);
                }
                "listen" => {
                    let addr = text()?;
                    c.listen = Some(addr.parse().map_err(|_| {
                        bad(format!(
                            "must be an address with a port, like \"127.0.0.1:8470\" or \"[::1]:8470\", not {addr:?}"
                        ))
                    })?);
                }
                "tls_cert" => c.tls_cert = Some(PathBuf::from(text()?)),
                "tls_key" => c.tls_key = Some(PathBuf::from(text()?)),
                "allow_insecure_non_loopback" => {
                    c.allow_insecure_non_loopback = Some(value.as_bool().ok_or_else(|| {
                        bad(format!("must be true or false, not {}", value.type_str()))
                    })?)
                }
                "shutdown_grace_secs" => {
                    let n =
                        value.as_integer().filter(|n| (0..=3600).contains(n)).ok_or_else(|| {
                            bad("must be a whole number of seconds, 0 to 3600".into())
                        })?;
                    c.shutdown_grace_secs = Some(n as u64);
                }
                "log" => c.log = Some(text()?),
                _ => {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_path_buf(),
                        key: key.clone(),
                    });
                }
            }
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            let key = if c.tls_cert.is_some() { "tls_key" } else { "tls_cert" };
            return Err(ConfigError::BadValue {
                path: path.to_path_buf(),
                key: key.into(),
                detail: "is missing: HTTPS needs both tls_cert and tls_key".into(),
            });
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("server.toml"))
    }

    #[test]
    fn every_setting_is_read() {
        let c = parse(
            r#"
            data_dir = "/var/lib/fp"
            database = "postgres://fp@db/fp?sslmode=require"
            listen = "[::1]:9000"
            tls_cert = "c.pem"
            tls_key = "k.pem"
            allow_insecure_non_loopback = true
            shutdown_grace_secs = 12
            log = "debug"
            "#,
        )
        .unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/var/lib/fp")));
        assert_eq!(c.database.as_deref(), Some("postgres://fp@db/fp?sslmode=require"));
        assert_eq!(c.listen, Some("[::1]:9000".parse().unwrap()));
        assert_eq!(c.tls_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(c.tls_key.as_deref(), Some(Path::new("k.pem")));
        assert_eq!(c.allow_insecure_non_loopback, Some(true));
        assert_eq!(c.shutdown_grace_secs, Some(12));
        assert_eq!(c.log.as_deref(), Some("debug"));
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_the_bad_key() {
        let e = parse("lisen = \"127.0.0.1:1\"").unwrap_err().to_string();
        assert!(e.contains("unknown key `lisen`") && e.contains("listen"), "{e}");
        let e = parse("listen = \"localhost\"").unwrap_err().to_string();
        assert!(e.contains("key `listen`") && e.contains("\"localhost\""), "{e}");
        let e = parse("listen = 8470").unwrap_err().to_string();
        assert!(e.contains("key `listen` must be a string") && e.contains("integer"), "{e}");
        let e = parse("shutdown_grace_secs = \"30\"").unwrap_err().to_string();
        assert!(e.contains("key `shutdown_grace_secs`"), "{e}");
        let e = parse("allow_insecure_non_loopback = \"yes\"").unwrap_err().to_string();
        assert!(e.contains("key `allow_insecure_non_loopback` must be true or false"), "{e}");
        let e = parse("database = \"mysql://x\"").unwrap_err().to_string();
        assert!(e.contains("key `database`"), "{e}");
        let e = parse("tls_cert = \"c.pem\"").unwrap_err().to_string();
        assert!(e.contains("key `tls_key` is missing"), "{e}");
        let e = parse("listen = ").unwrap_err().to_string();
        assert!(e.contains("server.toml is not valid TOML"), "{e}");
    }
}
