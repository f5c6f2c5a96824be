//! `fieldpatch log show|verify|note`: the visit log in the local store.

use clap::Subcommand;
use fieldpatch_core::store::Store;
use fieldpatch_core::visitlog::Event;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum LogCommand {
    /// Show the events of every visit log (or one), in order.
    Show {
        /// Only this log (UUID).
        #[arg(long)]
        log: Option<uuid::Uuid>,
        /// Only the events of this visit (UUID).
        #[arg(long, conflicts_with = "log")]
        visit: Option<uuid::Uuid>,
    },
    /// Verify every visit log; exits non-zero and names the first bad event on any tampering.
    Verify,
    /// Append a technician note to your visit log (signed with your key from the OS keyring).
    Note {
        /// The note text.
        text: String,
    },
}

pub fn run(cmd: LogCommand, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let store = fp.store();
        match cmd {
            LogCommand::Show { visit: Some(visit), .. } => {
                print_events(&store.visit_events(visit).await?, json)
            }
            LogCommand::Show { log, visit: None } => show(store, log, json).await,
            LogCommand::Verify => verify(store, json).await,
            LogCommand::Note { text } => {
                let event = fp.note(text).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&event)?);
                } else {
                    println!(
                        "appended note as seq {} of log {}",
                        event.body.seq, event.body.log_id
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn show(store: &Store, only: Option<uuid::Uuid>, json: bool) -> anyhow::Result<ExitCode> {
    let logs = match only {
        Some(id) => vec![store.visit_log(id).await?],
        None => store.visit_logs().await?,
    };
    let mut all: Vec<Event> = Vec::new();
    for info in &logs {
        let mut after = 0;
        loop {
            let page = store.log_events(info.log_id, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.body.seq;
            if !json {
                for e in &page {
                    println!("{}", line(e));
                }
            }
            all.extend(page);
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("the visit log is empty");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_events(events: &[Event], json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(events)?);
    } else if events.is_empty() {
        println!("no events");
    }
    if !json {
        for e in events {
            println!("{}", line(e));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn line(e: &Event) -> String {
    let mut detail = serde_json::to_value(&e.body.kind).unwrap_or_default();
    if let Some(map) = detail.as_object_mut() {
        map.remove("kind");
    }
    format!(
        "{:>5}  {}  {:<22} {}{}",
        e.body.seq,
        e.body.time.format("%Y-%m-%dT%H:%M:%SZ"),
        e.body.kind.tag(),
        e.body.device.as_deref().map(|d| format!("[{d}] ")).unwrap_or_default(),
        detail
    )
}

async fn verify(store: &Store, json: bool) -> anyhow::Result<ExitCode> {
    let results = store.verify_all_logs().await?;
    let ok = results.iter().all(|r| r.is_ok());
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        if results.is_empty() {
            println!("no visit log yet: nothing to verify");
        }
        for r in &results {
            match &r.problem {
                None => println!("log {}: {} events verify", r.log_id, r.verified),
                Some(p) => {
                    eprintln!("log {}: TAMPERED after {} good events: {p}", r.log_id, r.verified)
                }
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
