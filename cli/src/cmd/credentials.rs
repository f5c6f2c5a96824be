//! `fieldpatch credentials set|get|delete|list`: secrets in the OS keyring.
//!
//! Secrets are read from stdin (or a prompt with echo off on a terminal), never from arguments,
//! so they do not end up in shell history or the process list.

use anyhow::Context;
use clap::Subcommand;
use fieldpatch_core::credentials::{CredentialName, Secret};
use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum CredentialsCommand {
    /// Store a secret (read from stdin or a prompt). NAME: technician-key, sync-token,
    /// device/<device>/<password|psk|token> or site/<site>/<model>/<password|psk|token>.
    Set { name: CredentialName },
    /// Check a secret exists; print it only with --reveal.
    Get {
        name: CredentialName,
        /// Print the secret value on stdout.
        #[arg(long)]
        reveal: bool,
    },
    /// Delete a secret from the keyring.
    Delete { name: CredentialName },
    /// List the names of stored secrets (never their values).
    List,
}

pub fn run(cmd: CredentialsCommand, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let creds = fp.credentials().await?;
        let backend = creds.backend();
        match cmd {
            CredentialsCommand::Set { name } => {
                let secret = read_secret(&name)?;
                fp.set_credential(&name, &secret).await?;
                println!("stored {name} in the {backend} keyring");
            }
            CredentialsCommand::Get { name, reveal } => {
                let secret = creds.get(&name).await?;
                if reveal {
                    println!("{}", secret.expose());
                } else {
                    println!("{name} is set in the {backend} keyring (pass --reveal to print it)");
                }
            }
            CredentialsCommand::Delete { name } => {
                if fp.delete_credential(&name).await? {
                    println!("deleted {name} from the {backend} keyring");
                } else {
                    eprintln!("{name} was not stored");
                    return Ok(ExitCode::from(1));
                }
            }
            CredentialsCommand::List => {
                let names = creds.list().await?;
                if json {
                    let v = serde_json::json!({ "backend": backend, "credentials": names });
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else if names.is_empty() {
                    println!("no credentials stored (keyring: {backend})");
                } else {
                    for n in names {
                        println!("{:<48} {:<15} {}", n.name, n.backend, n.updated_at);
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn read_secret(name: &CredentialName) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        // Echo goes off before the prompt shows, so nothing typed after the prompt is echoed.
        let _echo = EchoOff::new();
        eprint!("secret for {name}: ");
        stdin.lock().read_line(&mut value).context("reading the secret")?;
        eprintln!();
    } else {
        stdin.lock().read_to_string(&mut value).context("reading the secret from stdin")?;
    }
    let trimmed = value.trim_end_matches(['\r', '\n']).to_string();
    zeroize_string(&mut value);
    anyhow::ensure!(!trimmed.is_empty(), "no secret given on stdin for {name}");
    Ok(Secret::new(trimmed))
}

fn zeroize_string(s: &mut String) {
    // Overwrite before dropping so the plain copy does not linger in freed memory.
    let len = s.len();
    s.clear();
    s.extend(std::iter::repeat_n('\0', len));
}

/// Turns terminal echo off while alive.
struct EchoOff {
    #[cfg(unix)]
    saved: Option<nix::sys::termios::Termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        #[cfg(unix)]
        {
            use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
            let stdin = std::io::stdin();
            let saved = tcgetattr(&stdin).ok();
            if let Some(t) = &saved {
                let mut quiet = t.clone();
                quiet.local_flags.remove(LocalFlags::ECHO);
                let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
            }
            EchoOff { saved }
        }
        #[cfg(not(unix))]
        EchoOff {}
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}
