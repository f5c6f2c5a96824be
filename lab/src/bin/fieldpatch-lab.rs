//! `fieldpatch-lab`: run simulated devices by hand.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "fieldpatch-lab", version, about = "Simulated devices for Fieldpatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Open a raw pseudo-terminal and echo every byte back (checks a client's serial setup).
    Loopback,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Loopback => {
            use std::io::{Read, Write};
            let pty = fieldpatch_lab::pty::Pty::open()?;
            println!("{}", pty.path().display());
            let mut rx = pty.controller_clone()?;
            let mut tx = pty.controller_clone()?;
            let mut buf = [0u8; 512];
            loop {
                let n = rx.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                tx.write_all(&buf[..n])?;
            }
        }
    }
}
