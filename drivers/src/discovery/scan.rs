//! The scan: checks a request, runs the serial, network and mDNS parts side by side, and turns
//! their results into one ordered stream of events.
//!
//! Design decisions:
//! - Each part keeps its candidates in a `JoinSet` keyed by task id, so that when the deadline
//!   strikes it knows exactly which candidates are unfinished, aborts them and reports each as
//!   [`SkipReason::Deadline`]. Aborting drops a probe's future, which closes its link and
//!   restores its port's settings (drop guards), so nothing is left behind.
//! - Network probes are paced by a shared slot clock taken after a concurrency permit: starts
//!   are never closer than `1 / probes_per_second`, even after a stall frees many permits.
//! - Events go through one bounded channel; a consumer that stops reading slows the scan down,
//!   it does not grow memory. Dropping the [`Scan`] aborts the whole task tree.

use super::mdns::{self, Browser, MdnsScope};
use super::net::{self, Host, NetworkScope};
use super::probe::{Endpoint, Probe, ProbeContext, ProbeOutcome, ProbeReport};
use super::serial::{self, PortInfo, SerialScope};
use super::{
    Candidate, DiscoveryError, Event, Found, Plan, Probed, Report, Request, SkipReason, Skipped,
    Summary, Via,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Duration, Instant};

/// A running discovery: read its events with [`Scan::next`] until `None`. Dropping it stops the
/// scan.
#[derive(Debug)]
pub struct Scan {
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Scan {
    /// The next event; `None` after [`Event::Finished`].
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Wait for the end of the scan and gather everything it reported.
    pub async fn collect(mut self) -> Report {
        let mut report =
            Report { plan: None, found: Vec::new(), skipped: Vec::new(), summary: None };
        while let Some(event) = self.next().await {
            match event {
                Event::Planned(plan) => report.plan = Some(plan),
                Event::Found(found) => report.found.push(*found),
                Event::Skipped(skipped) => report.skipped.push(skipped),
                Event::Finished(summary) => report.summary = Some(summary),
            }
        }
        report
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct Counters {
    found: AtomicUsize,
    skipped: AtomicUsize,
    deadline: AtomicBool,
}

/// Where the parts send their results.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
}

impl Sink {
    pub(crate) async fn found(&self, found: Found) {
        self.counters.found.fetch_add(1, Ordering::Relaxed);
        if matches!(found.probed, Probed::Failed(SkipReason::Deadline)) {
            self.deadline_reached();
        }
        let _ = self.tx.send(Event::Found(Box::new(found))).await;
    }

    async fn skipped(&self, candidate: Candidate, reason: SkipReason) {
        self.counters.skipped.fetch_add(1, Ordering::Relaxed);
        if reason == SkipReason::Deadline {
            self.deadline_reached();
        }
        let _ = self.tx.send(Event::Skipped(Skipped { candidate, reason })).await;
    }

    pub(crate) fn deadline_reached(&self) {
        self.counters.deadline.store(true, Ordering::Relaxed);
    }
}

pub(crate) async fn start(
    request: Request,
    probes: Vec<Arc<dyn Probe>>,
) -> Result<Scan, DiscoveryError> {
    if request.deadline.is_zero() {
        return Err(DiscoveryError::BadOption("the discovery deadline must be above zero".into()));
    }
    if probes.is_empty() {
        return Err(DiscoveryError::BadOption("discovery needs at least one probe".into()));
    }
    if let Some(scope) = &request.serial {
        serial::validate(scope)?;
    }
    let hosts = match &request.network {
        Some(scope) => net::expand(scope)?,
        None => Vec::new(),
    };
    let serial_plan = match &request.serial {
        Some(scope) => {
            let scope = scope.clone();
            tokio::task::spawn_blocking(move || serial::plan(&scope))
                .await
                .map_err(|e| DiscoveryError::ListPorts(e.to_string()))??
        }
        None => serial::SerialPlan::default(),
    };
    // Last: it starts the daemon (in this thread) once everything else is known to be fine.
    let browser = match &request.mdns {
        Some(scope) => Some(mdns::start(scope, &probes)?),
        None => None,
    };

    let started = Instant::now();
    let deadline = started + request.deadline;
    let plan = Plan {
        serial_ports: serial_plan.probe.clone(),
        excluded_ports: serial_plan.excluded.clone(),
        hosts: hosts.len(),
        mdns_services: browser.as_ref().map(|b| b.services.clone()).unwrap_or_default(),
        mdns_interfaces: request.mdns.as_ref().map(|m| m.interfaces.clone()).unwrap_or_default(),
        deadline: request.deadline,
    };
    let (tx, events) = mpsc::channel(256);
    let sink = Sink { tx, counters: Arc::new(Counters::default()) };
    let probes: Arc<[Arc<dyn Probe>]> = probes.into();
    let task = tokio::spawn(async move {
        let _ = sink.tx.send(Event::Planned(plan)).await;
        for port in serial_plan.excluded {
            sink.skipped(Candidate::SerialPort(port), SkipReason::Excluded).await;
        }
        let serial = async {
            if let Some(scope) = request.serial {
                run_serial(serial_plan.probe, scope, probes.clone(), deadline, &sink).await;
            }
        };
        let network = async {
            if let Some(scope) = request.network {
                run_network(hosts, scope, probes.clone(), deadline, &sink).await;
            }
        };
        let mdns = async {
            if let (Some(browser), Some(scope)) = (browser, request.mdns) {
                run_mdns(browser, scope, deadline, sink.clone()).await;
            }
        };
        tokio::join!(serial, network, mdns);
        let c = &sink.counters;
        let summary = Summary {
            found: c.found.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            deadline_reached: c.deadline.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        };
        let _ = sink.tx.send(Event::Finished(summary)).await;
    });
    Ok(Scan { events, task })
}

type Answer = Result<(Endpoint, Box<ProbeReport>), SkipReason>;

/// What becomes of one candidate.
enum Outcome {
    Found(Box<Found>),
    Skipped(Skipped),
}

/// Collect the results of `set` until it is empty or the deadline strikes; what is unfinished
/// then is aborted and reported as [`SkipReason::Deadline`].
async fn drain<C>(
    mut set: JoinSet<Answer>,
    mut pending: HashMap<tokio::task::Id, C>,
    deadline: Instant,
    sink: &Sink,
    report: impl Fn(C, Answer) -> Outcome,
) {
    loop {
        match tokio::time::timeout_at(deadline, set.join_next_with_id()).await {
            Ok(None) => break,
            Ok(Some(joined)) => {
                let (id, answer) = match joined {
                    Ok((id, answer)) => (id, answer),
                    Err(e) => (
                        e.id(),
                        Err(SkipReason::Unavailable(format!(
                            "the probe stopped unexpectedly: {e}"
                        ))),
                    ),
                };
                if let Some(candidate) = pending.remove(&id) {
                    emit(sink, report(candidate, answer)).await;
                }
            }
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    for (_, candidate) in pending {
        emit(sink, report(candidate, Err(SkipReason::Deadline))).await;
    }
}

async fn emit(sink: &Sink, outcome: Outcome) {
    match outcome {
        Outcome::Found(found) => sink.found(*found).await,
        Outcome::Skipped(skipped) => sink.skipped(skipped.candidate, skipped.reason).await,
    }
}

async fn run_serial(
    ports: Vec<PortInfo>,
    scope: SerialScope,
    probes: Arc<[Arc<dyn Probe>]>,
    deadline: Instant,
    sink: &Sink,
) {
    let permits = Arc::new(Semaphore::new(scope.parallel));
    let scope = Arc::new(scope);
    let mut set = JoinSet::new();
    let mut pending = HashMap::new();
    for port in ports {
        let (scope, probes, permits, p) =
            (scope.clone(), probes.clone(), permits.clone(), port.clone());
        let handle = set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            serial::probe_port(&p, &scope, &probes, deadline).await
        });
        pending.insert(handle.id(), port);
    }
    drain(set, pending, deadline, sink, |port, answer| match answer {
        Ok((endpoint, report)) => Outcome::Found(Box::new(Found {
            endpoint,
            via: Via::SerialPort(port),
            probed: Probed::Answered(report),
        })),
        Err(reason) => Outcome::Skipped(Skipped { candidate: Candidate::SerialPort(port), reason }),
    })
    .await;
}

async fn run_network(
    hosts: Vec<Host>,
    scope: NetworkScope,
    probes: Arc<[Arc<dyn Probe>]>,
    deadline: Instant,
    sink: &Sink,
) {
    let permits = Arc::new(Semaphore::new(scope.parallel));
    let interval = Duration::from_secs_f64(1.0 / f64::from(scope.probes_per_second));
    let next_slot = Arc::new(Mutex::new(Instant::now()));
    let ctx = ProbeContext {
        answer_timeout: scope.answer_timeout,
        first_retries: scope.retries,
        request_timeout: scope.request_timeout,
        deadline,
    };
    let mut set = JoinSet::new();
    let mut pending = HashMap::new();
    for host in hosts {
        let (probes, permits, next_slot) = (probes.clone(), permits.clone(), next_slot.clone());
        let handle = set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let slot = {
                let mut next = next_slot.lock().await;
                let slot = (*next).max(Instant::now());
                *next = slot + interval;
                slot
            };
            tokio::time::sleep_until(slot).await;
            probe_host(&host, &probes, &ctx).await
        });
        pending.insert(handle.id(), host);
    }
    drain(set, pending, deadline, sink, |host, answer| match answer {
        Ok((endpoint, report)) => Outcome::Found(Box::new(Found {
            endpoint,
            via: Via::Address(host.origin),
            probed: Probed::Answered(report),
        })),
        Err(reason) => Outcome::Skipped(Skipped {
            candidate: Candidate::Host { ip: host.ip, port: host.port },
            reason,
        }),
    })
    .await;
}

/// Try each network probe on one host; the first answer wins.
async fn probe_host(host: &Host, probes: &[Arc<dyn Probe>], ctx: &ProbeContext) -> Answer {
    let mut seen: Option<String> = None;
    let mut unavailable: Option<SkipReason> = None;
    for probe in probes {
        let Some(endpoint) = probe.network_endpoint(host.ip, host.port) else { continue };
        match probe.probe(&endpoint, ctx).await {
            Ok(ProbeOutcome::Answered(report)) => return Ok((endpoint, report)),
            Ok(ProbeOutcome::Silent) => {}
            Ok(ProbeOutcome::Unrecognized(what)) => {
                seen.get_or_insert(format!("{} on {endpoint}: {what}", probe.protocol()));
            }
            Err(e) => {
                unavailable.get_or_insert(e.into());
            }
        }
    }
    Err(match (seen, unavailable) {
        (Some(what), _) => SkipReason::Unrecognized(what),
        (None, Some(reason)) => reason,
        (None, None) => SkipReason::Silent,
    })
}

async fn run_mdns(browser: Browser, scope: MdnsScope, deadline: Instant, sink: Sink) {
    mdns::run(browser, scope, deadline, sink).await;
}
