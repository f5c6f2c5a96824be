//! The long fault campaign: `--runs N` randomized flash runs per device family (default 1,000),
//! each with one fault drawn from its seed (see `fieldpatch_e2e::campaign`), with the counts by
//! ending and fault and every broken invariant, as a table on stdout and as JSON
//! (`--json FILE`). Seeds count up from `--seed S` (default: from the clock, printed), so a
//! campaign and each of its runs can be repeated.
//!
//! `cargo bench -p fieldpatch-e2e --bench fault_campaign -- --runs 1000 [--family udp|serial|dfu|esp|swupdate]`
//! (what `scripts/campaign` runs, in a private D-Bus session with a keyring).

use fieldpatch_e2e::campaign::{self, Family, Release, Run};
use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let runs: u64 = arg("--runs").and_then(|r| r.parse().ok()).unwrap_or(1000);
    let first: u64 = arg("--seed").and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() * 1_000_000)
            .unwrap_or(1)
    });
    let json = arg("--json");
    // --family udp|serial|dfu|esp|swupdate: one family only (to run the families side by side).
    let families: Vec<Family> = match arg("--family").as_deref() {
        None => Family::ALL.to_vec(),
        Some("udp") => vec![Family::SmpUdp],
        Some("serial") => vec![Family::SmpSerial],
        Some("dfu") => vec![Family::Dfu],
        Some("esp") => vec![Family::Esp],
        Some("swupdate") => vec![Family::Swupdate],
        Some(other) => {
            eprintln!("--family {other}: give udp, serial, dfu, esp or swupdate");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let release = Release::make(tmp.path());
    let secret = rt.block_on(campaign::keep_secret(&tmp.path().join("keyring"))).unwrap();
    println!("fault campaign: {runs} runs per family, seeds from {first}");
    let started = Instant::now();
    let mut all: Vec<Run> = Vec::new();
    let mut seed = first;
    for family in families {
        for i in 0..runs {
            let run =
                rt.block_on(campaign::run(&release, tmp.path(), seed, Some(family), None, &secret));
            if !run.violations.is_empty() {
                println!(
                    "VIOLATION seed {seed} ({}, {} {}): {}",
                    family.name(),
                    run.fault.name(),
                    run.detail,
                    run.violations.join("; ")
                );
            }
            all.push(run);
            seed += 1;
            if (i + 1) % 100 == 0 {
                eprintln!(
                    "{}: {} runs, {:.0} s",
                    family.name(),
                    i + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let tally = campaign::tally(&all);
    println!();
    println!(
        "| family | runs | succeeded | resumed | rolled back | failed cleanly | not attempted | invariant violations |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (family, t) in &tally {
        let n = |k: &str| t.endings.get(k).copied().unwrap_or(0);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            family.name(),
            t.runs,
            n("succeeded"),
            n("resumed"),
            n("rolled back"),
            n("failed cleanly"),
            n("not attempted"),
            t.violations
        );
    }
    println!();
    println!("| family | runs by fault |");
    println!("|---|---|");
    for (family, t) in &tally {
        let faults: Vec<String> = t.faults.iter().map(|(f, n)| format!("{f} {n}")).collect();
        println!("| {} | {} |", family.name(), faults.join(", "));
    }
    let violations: usize = tally.values().map(|t| t.violations).sum();
    println!();
    println!(
        "{} runs in {:.0} s, first seed {first}: {violations} invariant violation(s)",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = json {
        let doc = serde_json::json!({
            "first_seed": first,
            "runs_per_family": runs,
            "seconds": started.elapsed().as_secs_f64(),
            "families": tally.iter().map(|(f, t)| serde_json::json!({
                "family": f.name(),
                "runs": t.runs,
                "endings": t.endings,
                "faults": t.faults,
                "violations": t.violations,
            })).collect::<Vec<_>>(),
            "violations": all.iter().filter(|r| !r.violations.is_empty()).map(|r| serde_json::json!({
                "seed": r.seed, "family": r.family.name(), "fault": r.fault.name(),
                "detail": r.detail, "violations": r.violations,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
    // The campaign's SWUpdate daemon stops with the release, before the exit.
    drop(release);
    if violations > 0 {
        std::process::exit(1);
    }
}
