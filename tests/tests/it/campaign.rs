//! The quick fault campaign: every fault of every family once, each run checked against the
//! invariants of `fieldpatch_e2e::campaign` (the long campaign, 1,000 runs per family, is
//! `scripts/campaign`). A run that breaks one names its seed, which reproduces it.

use fieldpatch_e2e::campaign::{self, Family, Release};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_of_every_family_keeps_the_invariants() {
    let tmp = tempfile::tempdir().unwrap();
    let release = Release::make(tmp.path());
    let secret = campaign::keep_secret(&tmp.path().join("keyring")).await.unwrap();
    let mut runs = Vec::new();
    let mut seed = 1;
    // FIELDPATCH_CAMPAIGN_SEED=N runs only the run of that seed (with its events traced when
    // FIELDPATCH_CAMPAIGN_TRACE is set); FIELDPATCH_CAMPAIGN_FAMILY=NAME only the runs of the
    // family of that name (as the campaign's table names it).
    let only: Option<u64> =
        std::env::var("FIELDPATCH_CAMPAIGN_SEED").ok().and_then(|s| s.parse().ok());
    let family_only = std::env::var("FIELDPATCH_CAMPAIGN_FAMILY").ok();
    for family in Family::ALL {
        for fault in family.faults() {
            if only.is_some_and(|o| o != seed)
                || family_only.as_deref().is_some_and(|f| f != family.name())
            {
                seed += 1;
                continue;
            }
            let run =
                campaign::run(&release, tmp.path(), seed, Some(family), Some(*fault), &secret)
                    .await;
            eprintln!(
                "seed {seed}: {} {} {}: {} in {:.2} s",
                family.name(),
                fault.name(),
                run.detail,
                run.ending.name(),
                run.elapsed.as_secs_f64()
            );
            runs.push(run);
            seed += 1;
        }
    }
    let broken: Vec<String> = runs
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| {
            format!(
                "seed {} ({}, {} {}): {}",
                r.seed,
                r.family.name(),
                r.fault.name(),
                r.detail,
                r.violations.join("; ")
            )
        })
        .collect();
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    // The baseline patches; the faults that cannot end in a patch do not claim one.
    for r in &runs {
        let name = r.ending.name();
        match r.fault {
            campaign::Fault::None => assert_eq!(name, "succeeded", "{r:?}"),
            campaign::Fault::FailsHealthCheck
            | campaign::Fault::PowerLossOnTestBoot
            | campaign::Fault::CrashAtBootRollback => assert_eq!(name, "rolled back", "{r:?}"),
            campaign::Fault::VerifyError
            | campaign::Fault::FlashWriteFail
            | campaign::Fault::CrashAtBoot
            | campaign::Fault::RefusedByDaemon => assert_eq!(name, "failed cleanly", "{r:?}"),
            _ => {}
        }
    }
}
