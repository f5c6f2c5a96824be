//! Accepting pushed visit-log events.
//!
//! Per log, events are taken in seq order. An event at or below the server's head must be the very
//! event the server holds (same id and hash): then it is acknowledged again, which makes a replayed
//! batch a no-op with the same acknowledgement. Above the head, the next event must continue the
//! chain: right seq, `prev_hash` naming the head, signed by the pushing technician's registered key.
//! A missing earlier event (a gap) is *retryable*; anything that can never verify is *rejected*,
//! and so is everything after it in that log. Pushes of the same log take turns (a lock per log
//! in the process, and on PostgreSQL a lock per log in the database, which every server instance
//! sharing it takes), so two pushes of a log, to one instance or two, cannot both extend it.
//!
//! An event the technician signed at a seq the server holds with other content (`conflict`), or
//! one that does not link to the server's head (`broken_chain` right above it), means the laptop's
//! copy of the log went back to an older state and went on from there. It is rejected like any
//! conflict, never stored over what the server holds, and recorded as the log's divergence for
//! the log-continuity report ([`crate::continuity`]).

use crate::store::{LogHead, Store, StoreError, Technician};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{ChainError, Event, GENESIS_HASH};
use fieldpatch_proto::wire::{Checkpoint, EventProblem, PushAck};
use std::collections::BTreeMap;
use uuid::Uuid;

fn problem(e: &Event, code: &str, reason: String) -> EventProblem {
    EventProblem {
        id: e.body.id,
        log_id: e.body.log_id,
        seq: e.body.seq,
        code: code.into(),
        reason,
    }
}

/// What can be computed for an event without the log's state: its signature check and its hash.
/// Done before taking the push lock, spread over the CPU cores.
#[derive(Debug)]
pub struct Prepared {
    /// `None` when not checked up front: the event is at or below the server's head for its log,
    /// so it is compared with the stored event by hash instead (a replay).
    pub signature: Option<Result<(), ChainError>>,
    pub hash: String,
}

/// Check signatures and compute hashes of `events`, in parallel. Events at or below `held`'s
/// seq for their log (the server's heads, read before; heads never move back) skip the signature
/// check. Blocking: call it from `spawn_blocking`.
pub fn prepare(events: Vec<Event>, held: &BTreeMap<Uuid, u64>) -> Vec<(Event, Prepared)> {
    let one = |e: Event| {
        let replay = held.get(&e.body.log_id).is_some_and(|h| e.body.seq <= *h);
        let signature = if replay { None } else { Some(e.verify_signature()) };
        let p = Prepared { signature, hash: e.hash() };
        (e, p)
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    if threads < 2 || events.len() < 64 {
        return events.into_iter().map(one).collect();
    }
    let chunk = events.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Event>> = Vec::new();
    let mut rest = events;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

enum Verdict {
    Stored,
    Retry(EventProblem),
    Reject(EventProblem),
}

/// Reject `accepted[cut]` (its id is taken by another stored event) and everything after it.
fn reject_from(
    accepted: &mut Vec<(Event, String)>,
    cut: usize,
    verdicts: &mut [(usize, Uuid, Verdict)],
) {
    let first = accepted[cut].0.body.seq;
    for (e, _) in accepted.drain(cut..) {
        let p = if e.body.seq == first {
            problem(
                &e,
                "duplicate_id",
                format!("event id {} is already used by another event on the server", e.body.id),
            )
        } else {
            problem(&e, "after_rejected", format!("follows event seq {first}, which was rejected"))
        };
        for v in verdicts.iter_mut().filter(|(_, id, _)| *id == e.body.id) {
            v.2 = Verdict::Reject(p.clone());
        }
    }
}

/// Verify, store and fold a batch; return the acknowledgement.
pub async fn push<S: Store>(
    store: &S,
    key: &SigningKey,
    tech: &Technician,
    events: Vec<(Event, Prepared)>,
) -> Result<(PushAck, u64), StoreError> {
    // Which device each event names (for the authorization report), before the batch is split.
    let named: Vec<(Uuid, String)> =
        events.iter().filter_map(|(e, _)| e.body.device.clone().map(|d| (e.body.id, d))).collect();
    let seqs: std::collections::HashMap<Uuid, (Uuid, u64)> =
        events.iter().map(|(e, _)| (e.body.id, (e.body.log_id, e.body.seq))).collect();
    // Group by log, keeping the request order of logs; sort each log by seq.
    let mut logs: BTreeMap<Uuid, Vec<(usize, Event, Prepared)>> = BTreeMap::new();
    let mut order: Vec<Uuid> = Vec::new();
    for (i, (e, p)) in events.into_iter().enumerate() {
        if !logs.contains_key(&e.body.log_id) {
            order.push(e.body.log_id);
        }
        logs.entry(e.body.log_id).or_default().push((i, e, p));
    }
    let mut verdicts: Vec<(usize, Uuid, Verdict)> = Vec::new();
    let mut checkpoints = Vec::new();
    let mut added = 0;
    for log_id in order {
        let mut batch = logs.remove(&log_id).unwrap_or_default();
        batch.sort_by_key(|(_, e, _)| e.body.seq);
        let log = log_id.to_string();
        let head = store.log_head(&log).await?;
        if let Some(h) = &head
            && h.technician_id != tech.id
        {
            for (i, e, _) in &batch {
                let p = problem(
                    e,
                    "foreign_log",
                    format!("log {log_id} belongs to another technician"),
                );
                verdicts.push((*i, e.body.id, Verdict::Reject(p)));
            }
            continue;
        }
        let (head_seq, mut prev_hash) = match &head {
            Some(h) => (h.last_seq, h.last_hash.clone()),
            None => (0, GENESIS_HASH.to_string()),
        };
        // Already-held events: compare with what is stored.
        let max_seq = batch.last().map(|(_, e, _)| e.body.seq).unwrap_or(0);
        let min_seq = batch.first().map(|(_, e, _)| e.body.seq).unwrap_or(0);
        let held = if min_seq <= head_seq {
            store.stored_events(&log, min_seq, head_seq.min(max_seq)).await?
        } else {
            Vec::new()
        };
        let mut next = head_seq + 1;
        let mut accepted: Vec<(Event, String)> = Vec::new();
        // The first event the technician signed that contradicts what the server holds.
        let mut diverged: Option<(u64, Uuid, String)> = None;
        let mut diverge = |e: &Event, hash: &str, signed: bool| {
            let signed = signed
                || (e.body.signer.eq_ignore_ascii_case(&tech.public_key)
                    && e.verify_signature().is_ok());
            if signed && diverged.as_ref().is_none_or(|(s, _, _)| e.body.seq < *s) {
                diverged = Some((e.body.seq, e.body.id, hash.to_string()));
            }
        };
        let mut blocked: Option<(bool, u64)> = None; // (rejected?, seq that blocked)
        for (i, e, prepared) in batch {
            let id = e.body.id;
            let seq = e.body.seq;
            let verdict = if seq == 0 {
                Verdict::Reject(problem(&e, "invalid", "sequence numbers start at 1".into()))
            } else if seq <= head_seq {
                match held.iter().find(|h| h.seq == seq) {
                    Some(h) if h.id == id.to_string() && h.hash == prepared.hash => Verdict::Stored,
                    Some(_) => {
                        diverge(&e, &prepared.hash, false);
                        Verdict::Reject(problem(
                            &e,
                            "conflict",
                            format!(
                                "the server already holds a different event at seq {seq} of this log (the log was forked or edited)"
                            ),
                        ))
                    }
                    None => Verdict::Reject(problem(
                        &e,
                        "conflict",
                        format!("seq {seq} is below the server's head but not stored"),
                    )),
                }
            } else if accepted.last().map(|(a, _)| a.body.seq == seq).unwrap_or(false) {
                // The same seq twice in one batch: only the identical event is fine.
                if accepted.last().map(|(a, _)| a == &e).unwrap_or(false) {
                    Verdict::Stored
                } else {
                    Verdict::Reject(problem(
                        &e,
                        "conflict",
                        format!("two different events with seq {seq} in one batch"),
                    ))
                }
            } else if let Some((rejected, at)) = blocked {
                if rejected {
                    Verdict::Reject(problem(
                        &e,
                        "after_rejected",
                        format!("follows event seq {at}, which was rejected"),
                    ))
                } else {
                    Verdict::Retry(problem(
                        &e,
                        "after_gap",
                        format!("follows missing events before seq {at}; push those first"),
                    ))
                }
            } else if seq > next {
                blocked = Some((false, seq));
                Verdict::Retry(problem(
                    &e,
                    "gap",
                    format!(
                        "events {next}..{} of this log have not reached the server; push them first",
                        seq - 1
                    ),
                ))
            } else if !e.body.signer.eq_ignore_ascii_case(&tech.public_key) {
                blocked = Some((true, seq));
                Verdict::Reject(problem(
                    &e,
                    "foreign_signer",
                    format!(
                        "signed by key {}, not by the pushing technician's registered key",
                        e.body.signer
                    ),
                ))
            } else if let Err(err) = prepared.signature.unwrap_or_else(|| e.verify_signature()) {
                blocked = Some((true, seq));
                let reason = match err {
                    ChainError::BadSignature { .. } => {
                        "signature does not match the content (edited after signing)".to_string()
                    }
                    other => other.to_string(),
                };
                Verdict::Reject(problem(&e, "bad_signature", reason))
            } else if e.body.prev_hash != prev_hash {
                blocked = Some((true, seq));
                if head_seq > 0 && seq == head_seq + 1 {
                    // Signed by the technician (checked above), and not after the server's head.
                    diverge(&e, &prepared.hash, true);
                }
                Verdict::Reject(problem(
                    &e,
                    "broken_chain",
                    "prev_hash does not name the previous event the server holds (an event was removed, inserted or edited)".into(),
                ))
            } else {
                let hash = prepared.hash.clone();
                prev_hash = hash.clone();
                next = seq + 1;
                accepted.push((e, hash));
                Verdict::Stored
            };
            verdicts.push((i, id, verdict));
        }
        if let Some((seq, id, hash)) = &diverged {
            store.record_divergence(&tech.id, &log, *seq, &id.to_string(), hash).await?;
        }
        // Commit. A conflict means an event id is already used in another log (rejected, with
        // everything after it in this log), or another server instance wrote this log meanwhile
        // (retryable: the error goes back to the client).
        let mut checked_ids = false;
        let new_head = loop {
            let Some((last, hash)) = accepted.last() else {
                break head.as_ref().map(|h| {
                    Checkpoint { log_id, last_seq: h.last_seq, last_hash: h.last_hash.clone() }
                        .sign(key)
                });
            };
            let cp =
                Checkpoint { log_id, last_seq: last.body.seq, last_hash: hash.clone() }.sign(key);
            let new = LogHead {
                technician_id: tech.id.clone(),
                last_seq: cp.checkpoint.last_seq,
                last_hash: cp.checkpoint.last_hash.clone(),
                signature: cp.signature.clone(),
            };
            match store.commit_events(&tech.id, &log, &accepted, &new).await {
                Ok(n) => {
                    added += n;
                    break Some(cp);
                }
                Err(StoreError::Conflict(m)) if !checked_ids => {
                    checked_ids = true;
                    // The log moved while this push was checked (another instance, or a
                    // transaction of a server killed mid-push that committed late): the ids may
                    // be these very events, so the push is retried, never judged here.
                    let now = store.log_head(&log).await?;
                    let moved = now.as_ref().map(|h| (h.last_seq, &h.last_hash))
                        != head.as_ref().map(|h| (h.last_seq, &h.last_hash));
                    if moved {
                        return Err(StoreError::Conflict(m));
                    }
                    let ids: Vec<String> =
                        accepted.iter().map(|(e, _)| e.body.id.to_string()).collect();
                    let taken = store.existing_event_ids(&ids).await?;
                    let Some(cut) =
                        accepted.iter().position(|(e, _)| taken.contains(&e.body.id.to_string()))
                    else {
                        return Err(StoreError::Conflict(m));
                    };
                    reject_from(&mut accepted, cut, &mut verdicts);
                }
                Err(e) => return Err(e),
            }
        };
        checkpoints.extend(new_head);
    }
    verdicts.sort_by_key(|(i, _, _)| *i);
    let mut ack = PushAck { checkpoints, ..PushAck::default() };
    for (_, id, v) in verdicts {
        match v {
            Verdict::Stored => ack.stored.push(id),
            Verdict::Retry(p) => ack.retryable.push(p),
            Verdict::Reject(p) => ack.rejected.push(p),
        }
    }
    // The inventory believes only what a technician may say: events about devices at sites not
    // assigned to them are kept (the log stays whole) but not applied, and the answer says so.
    let mut checked: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (id, device) in &named {
        if !ack.stored.contains(id) {
            continue;
        }
        if !checked.contains_key(device) {
            let why = match store.device(device).await? {
                Some(d) if !store.is_assigned(&tech.id, &d.site_id).await? => Some(format!(
                    "device {device} is not at a site assigned to {}; the event is kept but not applied to the inventory",
                    tech.id
                )),
                _ => None,
            };
            checked.insert(device.clone(), why);
        }
        if let Some(Some(why)) = checked.get(device) {
            let (log_id, seq) = seqs[id];
            ack.not_applied.push(EventProblem {
                id: *id,
                log_id,
                seq,
                code: "device_not_assigned".into(),
                reason: why.clone(),
            });
        }
    }
    Ok((ack, added))
}
