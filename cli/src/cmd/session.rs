//! `fieldpatch plan` and `fieldpatch session run|resume|status`: offline batch flashing.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use fieldpatch_core::bundle::input::read_bounded;
use fieldpatch_core::catalog::Catalog;
use fieldpatch_core::plan::{Disposition, Plan};
use fieldpatch_core::progress::TransferProgress;
use fieldpatch_core::session::batch::{MAX_LIST_FILE, read_devices};
use fieldpatch_core::session::{
    Observer, Phase, SessionEvent, SessionOptions, SessionState, Threshold,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where the verified catalog comes from.
#[derive(Args, Debug, Clone)]
pub struct CatalogArgs {
    /// Folder of bundle files (*.fpb).
    #[arg(long)]
    catalog: PathBuf,
    /// Trust store (JSON). Its signed policy says how long expired bundles stay usable offline,
    /// counted from the last sync.
    #[arg(long)]
    trust: PathBuf,
}

impl CatalogArgs {
    async fn load(&self, fp: &fieldpatch_core::Fieldpatch) -> anyhow::Result<Catalog> {
        Ok(fp.load_catalog(&self.catalog, &self.trust).await?)
    }
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The work order's devices: a JSON list of device records.
    #[arg(
        long,
        required_unless_present_any = ["work_order", "discover"],
        conflicts_with_all = ["work_order", "discover"]
    )]
    devices: Option<PathBuf>,
    /// A work order synced from the inventory (its devices come from the local store); with
    /// --discover, what the discovered devices are matched against.
    #[arg(long, required_unless_present_any = ["devices", "discover"])]
    work_order: Option<String>,
    /// Find the devices on site instead of reading addresses (`fieldpatch discover`'s options
    /// apply); only devices matched to the inventory are planned.
    #[arg(long, conflicts_with = "addresses")]
    discover: bool,
    #[command(flatten)]
    discovery: super::discover::DiscoverArgs,
    /// With --work-order: a JSON object mapping device id to its address, e.g.
    /// {"d1": {"transport": "udp", "addr": "10.0.0.7:1337"}}.
    #[arg(long)]
    addresses: Option<PathBuf>,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Save the plan here (for `fieldpatch session run`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long to wait for each device to answer when identifying it, in seconds.
    #[arg(long, default_value_t = 10)]
    identify_timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Run a saved plan: canary, soak, then waves. Exit status 0 when every planned device was
    /// patched, 3 when any failed, rolled back, stayed pending or could not be verified.
    Run {
        /// The plan file written by `fieldpatch plan --out`.
        plan: PathBuf,
        #[command(flatten)]
        catalog: CatalogArgs,
        #[command(flatten)]
        options: SessionArgs,
        /// The synced work order this visit is for: the visit is recorded at its site, and its
        /// devices the plan does not hold count as not found (each needs a reason at close-out).
        #[arg(long)]
        work_order: Option<String>,
        /// Flash only this device of the plan (repeat for several; once to flash a single
        /// device): the plan's other devices are skipped as not chosen, and each needs a reason
        /// at `session close`.
        #[arg(long = "only", value_name = "DEVICE")]
        only: Vec<String>,
    },
    /// Resume a paused, stopped or interrupted session (the latest unfinished one by default).
    Resume {
        /// Session id.
        id: Option<String>,
        #[command(flatten)]
        catalog: CatalogArgs,
        /// A new failure threshold, e.g. after a session stopped on its threshold and the cause
        /// of the failures is understood (without it, such a session flashes nothing more).
        #[arg(long)]
        threshold: Option<Threshold>,
    },
    /// Close out a session: give the reason each unpatched device was not patched (recorded in
    /// the visit log and synced to the inventory).
    Close {
        /// Session id (the latest one by default).
        id: Option<String>,
        /// DEVICE=REASON, once per unpatched device (e.g. "s3=powered off").
        #[arg(long = "reason")]
        reasons: Vec<String>,
    },
    /// Show a saved session's state.
    Status {
        /// Session id (the latest unfinished one by default).
        id: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Flash every device in waves without a canary first.
    #[arg(long)]
    no_canary: bool,
    /// Seconds the canary runs before it is checked again.
    #[arg(long, default_value_t = SessionOptions::field().soak.as_secs())]
    soak: u64,
    /// Devices per wave.
    #[arg(long, default_value_t = SessionOptions::field().wave_size)]
    wave: usize,
    /// Devices flashed at the same time.
    #[arg(long, default_value_t = SessionOptions::field().concurrency)]
    concurrency: usize,
    /// Stop after this many failures (3) or this share of the attempted devices (10%).
    #[arg(long, default_value_t = SessionOptions::field().failure_threshold)]
    threshold: Threshold,
    /// Extra attempts for a device whose flash failed.
    #[arg(long, default_value_t = SessionOptions::field().retries)]
    retries: u32,
    /// Say what would be done; touch no device.
    #[arg(long)]
    dry_run: bool,
    /// Seconds a device may take to come back after a reset.
    #[arg(long, default_value_t = SessionOptions::field().reconnect_timeout.as_secs())]
    reconnect_timeout: u64,
}

impl SessionArgs {
    fn options(&self) -> SessionOptions {
        SessionOptions {
            canary: !self.no_canary,
            soak: Duration::from_secs(self.soak),
            wave_size: self.wave,
            concurrency: self.concurrency,
            failure_threshold: self.threshold,
            retries: self.retries,
            dry_run: self.dry_run,
            reconnect_timeout: Duration::from_secs(self.reconnect_timeout),
        }
    }
}

pub fn plan(args: PlanArgs, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let devices = match (&args.devices, &args.work_order, &args.addresses) {
            _ if args.discover => discovered_devices(&fp, &args.discovery, args.work_order.clone(), json).await?,
            (Some(file), _, _) => read_devices(file)?,
            (None, Some(order), Some(addresses)) => {
                let text = read_bounded(addresses, MAX_LIST_FILE)
                    .with_context(|| format!("reading {}", addresses.display()))?;
                let addresses = serde_json::from_slice(&text).with_context(|| {
                    format!("{} is not a JSON object of device id -> address", addresses.display())
                })?;
                let (found, missing) = fp.work_order_devices(order, &addresses).await?;
                for id in missing {
                    eprintln!(
                        "{id}: not found on site (no address given); it stays unpatched: record why with `fieldpatch log note`"
                    );
                }
                found
            }
            _ => bail!(
                "say which devices: --devices FILE, --work-order ID with --addresses FILE, or --discover"
            ),
        };
        let catalog = args.catalog.load(&fp).await?;
        for r in &catalog.refused {
            eprintln!("refused bundle {}: {}", r.path.display(), r.reason);
        }
        let timeout = Duration::from_secs(args.identify_timeout);
        let mut identified = Vec::new();
        for (d, err) in fp.identify(devices, timeout).await {
            if let Some(e) = err {
                eprintln!("{}: not identified ({e}); using the inventory's record", d.id);
            }
            identified.push(d);
        }
        // A visit for a work order is at its site: bundles published to other sites only are
        // not planned (the session refuses them too).
        let site = match &args.work_order {
            Some(order) => Some(fp.work_order_visit(order).await?.0.site),
            None => None,
        };
        let plan = fp.plan_at_site(identified, &catalog, site.as_deref()).await;
        if let Some(out) = &args.out {
            std::fs::write(out, serde_json::to_vec_pretty(&plan)?)
                .with_context(|| format!("writing the plan to {}", out.display()))?;
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_plan(&plan);
            if let Some(out) = &args.out {
                println!("\nplan saved to {}", out.display());
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The devices discovery found and matched to the inventory (a work order's, or the whole
/// synced inventory's), as the planner takes them; the rest are reported and left out.
async fn discovered_devices(
    fp: &fieldpatch_core::Fieldpatch,
    args: &super::discover::DiscoverArgs,
    work_order: Option<String>,
    json: bool,
) -> anyhow::Result<Vec<fieldpatch_core::plan::DeviceRecord>> {
    let report = super::discover::discover(fp, args, work_order, None, json).await?;
    for d in report.devices.iter().filter(|d| d.matched.is_none()) {
        let at: Vec<String> = d.addresses.iter().map(|a| a.to_string()).collect();
        eprintln!("{}: unknown to the inventory; not planned", at.join(" + "));
    }
    for id in &report.missing {
        eprintln!(
            "{id}: not found on site; it stays unpatched: record why with `fieldpatch session close --reason` or `fieldpatch log note`"
        );
    }
    Ok(report.records(&fp.inventory_devices().await?))
}

fn print_plan(plan: &Plan) {
    println!("{:<16} {:<28} {:<10} PLAN", "DEVICE", "ADDRESS", "RUNS");
    for d in &plan.devices {
        let runs =
            d.device.identity.firmware_version.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        let what = match &d.disposition {
            Disposition::Patch { steps, short_reason, .. } => {
                let path: Vec<String> = steps
                    .iter()
                    .map(|s| format!("{} -> {} ({})", s.from, s.to, s.bundle_id))
                    .collect();
                let mut t = format!("patch: {}", path.join(", "));
                if let Some(r) = short_reason {
                    t.push_str(&format!(" [stops short: {r}]"));
                }
                t
            }
            Disposition::Scheduled { not_before, .. } => format!("scheduled from {not_before}"),
            Disposition::UpToDate { version } => format!("up to date ({version})"),
            Disposition::Unpatchable { why } => format!("cannot patch: {why}"),
        };
        let what = match &d.no_rollback {
            Some(note) => format!("{what} [{note}]"),
            None => what,
        };
        println!("{:<16} {:<28} {:<10} {}", d.device.id, d.device.address.to_string(), runs, what);
    }
}

/// Renders session events as one progress line per device.
fn observer(json: bool) -> (Observer, MultiProgress) {
    let multi = MultiProgress::new();
    if json {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let bars: Arc<Mutex<HashMap<String, ProgressBar>>> = Arc::default();
    let m = multi.clone();
    // The template is a constant that parses; the default bar stands in should it ever not.
    let style = ProgressStyle::with_template(
        "{prefix:<14} {bar:30} {bytes:>9}/{total_bytes:<9} {binary_bytes_per_sec:>11} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let obs: Observer = Arc::new(move |device, event| {
        let Some(device) = device else {
            if let SessionEvent::Note(n) = event {
                let _ = m.println(n);
            }
            return;
        };
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        let bar = bars.entry(device.to_string()).or_insert_with(|| {
            let b = m.add(ProgressBar::new(0));
            b.set_style(style.clone());
            b.set_prefix(device.to_string());
            b
        });
        match event {
            SessionEvent::Phase { name } => bar.set_message(name),
            SessionEvent::Transfer(TransferProgress { done, total, .. }) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            SessionEvent::Status(s) => bar.set_message(s.to_string()),
            SessionEvent::Note(n) => bar.set_message(n),
        }
    });
    (obs, multi)
}

pub fn run(cmd: SessionCommand, json: bool) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let fp = super::open().await?;
        let (state, catalog_args) = match cmd {
            SessionCommand::Status { id } => {
                let state = fp.unfinished_session(id.as_deref()).await?;
                return report(&state, json);
            }
            SessionCommand::Close { id, reasons } => {
                let state = fp.session(id.as_deref()).await?;
                let mut given = std::collections::BTreeMap::new();
                for r in reasons {
                    let (dev, why) = r.split_once('=').context("--reason must be DEVICE=REASON")?;
                    given.insert(dev.to_string(), why.to_string());
                }
                let recorded = fp.close_session(&state, &given).await?;
                if json {
                    println!("{}", serde_json::json!({"session": state.id, "recorded": recorded}));
                } else {
                    println!(
                        "session {} closed out: {} unpatched device(s) recorded",
                        state.id,
                        recorded.len()
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            SessionCommand::Run { plan, catalog, options, work_order, only } => {
                let plan: Plan = read_plan(&plan)?;
                let mut state = SessionState::new(plan, options.options());
                if !only.is_empty() {
                    state = state.only(&only).map_err(fieldpatch_core::Error::from)?;
                }
                if let Some(order) = work_order {
                    let (visit, expected) = fp.work_order_visit(&order).await?;
                    state = state.for_visit(visit, expected);
                    for id in &state.missing {
                        eprintln!(
                            "{id}: in work order {order} but not in the plan; recorded as not found (give a reason at `session close`)"
                        );
                    }
                }
                (state, catalog)
            }
            SessionCommand::Resume { id, catalog, threshold } => {
                let mut state = fp.unfinished_session(id.as_deref()).await?;
                if let Some(t) = threshold {
                    state.options.failure_threshold = t;
                }
                if state.phase == Phase::Finished {
                    bail!("session {} already finished", state.id);
                }
                (state, catalog)
            }
        };
        let catalog = Arc::new(catalog_args.load(&fp).await?);
        let pause = Arc::new(AtomicBool::new(false));
        let p = pause.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "pausing: devices in flight finish, no new ones start (Ctrl-C again to abort)"
                );
                p.store(true, Ordering::SeqCst);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let (obs, multi) = observer(json);
        if !json {
            let _ = multi.println(format!("session {}", state.id));
        }
        let (_, state) = fp.run_session(state, catalog, obs, pause).await?;
        multi.clear().ok();
        report(&state, json)
    })
}

fn read_plan(path: &Path) -> anyhow::Result<Plan> {
    let bytes = read_bounded(path, MAX_LIST_FILE)
        .with_context(|| format!("reading plan {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!("{} is not a plan written by `fieldpatch plan --out`", path.display())
    })
}

fn report(state: &SessionState, json: bool) -> anyhow::Result<ExitCode> {
    let s = state.summary();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "session": state.id,
                "phase": state.phase,
                "summary": s,
                "devices": state.devices,
            }))?
        );
    } else {
        println!("{:<16} RESULT", "DEVICE");
        for (id, st) in &state.devices {
            println!("{:<16} {}", id, st);
        }
        let phase = match &state.phase {
            Phase::Stopped { reason } => format!("stopped: {reason}"),
            other => format!("{other:?}").to_lowercase(),
        };
        println!(
            "\nsession {} {phase}: {} patched, {} rolled back, {} failed, {} skipped, {} pending, {} unverified",
            state.id, s.patched, s.rolled_back, s.failed, s.skipped, s.pending, s.unverified
        );
    }
    let ok = s.failed == 0
        && s.rolled_back == 0
        && s.unverified == 0
        && matches!(state.phase, Phase::Finished);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
