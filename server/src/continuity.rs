//! The log-continuity report: does each technician's visit log carry on from the one before, or
//! was a laptop's log cut or restarted?
//!
//! Every log a laptop starts begins with a signed `log_started` event naming the head of the
//! technician's earlier log it continues, as far as the laptop knew (the laptop keeps the last
//! head the server acknowledged in its OS keyring, which survives a wiped data directory). The
//! server records that claim when it stores the log's first event, and a laptop's events that
//! contradict a log it holds ([`crate::push`]). The report compares the claims with what the
//! server holds and puts every log in one class:
//!
//! * `first`: the technician's first log on the server, naming no earlier one.
//! * `continues`: names exactly the server's head of an earlier log of the technician.
//! * `restarted`: names no earlier log although the technician already had logs on the server
//!   (the data directory and the keyring record were lost, or a laptop from before chaining).
//! * `cut`: names a head below the server's head of that log (the laptop went back to an older
//!   state), or a log or head the server never received (events were lost before they were
//!   pushed); or the laptop sent events at seqs of this log that the server holds with other
//!   content (a data directory restored from an older copy).
//!
//! The class is computed when the report is made, from what the server holds then: a log that
//! names a head the server has not received yet is `cut` until those events arrive.

use crate::store::{Divergence, LogContinuityRow, Store, StoreError};
use chrono::{DateTime, Utc};
use fieldpatch_proto::event::LogHeadRef;
use serde::Serialize;
use std::collections::BTreeMap;

/// How a log relates to the technician's earlier logs. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogClass {
    First,
    Continues,
    Restarted,
    Cut,
}

/// A log's head as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// What the server holds of the log a `log_started` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviousOnServer {
    /// Whose log it is.
    pub technician_id: String,
    /// The server's head of that log.
    pub head: Head,
    /// The hash of the event the server holds at the named seq, if it holds one.
    pub hash_at_seq: Option<String>,
}

/// One log in the report, with its class and the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogContinuity {
    pub log_id: String,
    pub technician_id: String,
    pub class: LogClass,
    /// Why, naming the evidence.
    pub reason: String,
    /// When the log's first event reached the server.
    pub started_at: DateTime<Utc>,
    /// Whether the log's first event is `log_started` (laptops from before chaining send none).
    pub chained: bool,
    /// The earlier head the log's `log_started` names.
    pub previous: Option<LogHeadRef>,
    /// Where the laptop had `previous` from, as `log_started` says.
    pub why: Option<String>,
    /// What the server holds of the log `previous` names (`None`: no such log on the server).
    pub previous_on_server: Option<PreviousOnServer>,
    /// The server's head of this log.
    pub head: Head,
    /// The first event a laptop sent that contradicts this log as the server holds it.
    pub diverged: Option<Divergence>,
}

/// Classify one log. `earlier` counts the technician's logs that reached the server before it;
/// `previous` is what the server holds of the log its `log_started` names.
pub fn classify(
    row: &LogContinuityRow,
    earlier: usize,
    previous: Option<&PreviousOnServer>,
) -> (LogClass, String) {
    if let Some(d) = &row.diverged {
        return (
            LogClass::Cut,
            format!(
                "the laptop sent event {} at seq {} of this log, where the server holds another \
                 event (it holds seq 1 to {}): the laptop's copy of the log went back to an older \
                 state and went on from there",
                d.event_id, d.seq, row.head_seq
            ),
        );
    }
    let Some(named) = &row.previous else {
        let before_chaining =
            if row.chained { "" } else { " (its first event is not log_started)" };
        return if earlier == 0 {
            (
                LogClass::First,
                format!("the first log of {} on the server{before_chaining}", row.technician_id),
            )
        } else {
            (
                LogClass::Restarted,
                format!(
                    "names no earlier log{before_chaining}, but {earlier} log(s) of {} reached the \
                     server before it: the laptop lost its log and the record of its last push",
                    row.technician_id
                ),
            )
        };
    };
    let what = format!("names seq {} of log {}", named.seq, named.log_id);
    let Some(held) = previous
        .filter(|p| p.technician_id == row.technician_id && named.log_id.to_string() != row.log_id)
    else {
        return (
            LogClass::Cut,
            format!(
                "{what}, a log the server never received from {}: its events were lost before \
                 they were pushed",
                row.technician_id
            ),
        );
    };
    if named.seq > held.head.seq {
        return (
            LogClass::Cut,
            format!(
                "{what}, but the server holds that log only up to seq {}: events were lost \
                 before they were pushed",
                held.head.seq
            ),
        );
    }
    if named.seq < held.head.seq {
        return (
            LogClass::Cut,
            format!(
                "{what}, below the server's head of that log (seq {}): the laptop went back to \
                 an older state of it",
                held.head.seq
            ),
        );
    }
    if named.hash != held.head.hash {
        return (
            LogClass::Cut,
            format!(
                "{what}, the server's head of that log, but with another hash: the laptop's \
                 copy of that log was not the one the server holds"
            ),
        );
    }
    (LogClass::Continues, format!("{what}, the server's head of that log"))
}

/// Every log on the server with its class and evidence, by technician, oldest first.
pub async fn report<S: Store>(store: &S) -> Result<Vec<LogContinuity>, StoreError> {
    let mut rows = store.log_continuity().await?;
    rows.sort_by(|a, b| {
        (&a.technician_id, a.started_at, &a.log_id).cmp(&(
            &b.technician_id,
            b.started_at,
            &b.log_id,
        ))
    });
    let by_id: BTreeMap<&str, &LogContinuityRow> =
        rows.iter().map(|r| (r.log_id.as_str(), r)).collect();
    let mut out = Vec::with_capacity(rows.len());
    let mut earlier = 0;
    for (i, row) in rows.iter().enumerate() {
        if i == 0 || rows[i - 1].technician_id != row.technician_id {
            earlier = 0;
        }
        let previous_on_server = match &row.previous {
            None => None,
            Some(named) => match by_id.get(named.log_id.to_string().as_str()) {
                None => None,
                Some(held) => {
                    let hash_at_seq = if named.seq == held.head_seq {
                        Some(held.head_hash.clone())
                    } else if named.seq < held.head_seq && named.seq > 0 {
                        let at = store.stored_events(&held.log_id, named.seq, named.seq).await?;
                        at.into_iter().next().map(|e| e.hash)
                    } else {
                        None
                    };
                    Some(PreviousOnServer {
                        technician_id: held.technician_id.clone(),
                        head: Head { seq: held.head_seq, hash: held.head_hash.clone() },
                        hash_at_seq,
                    })
                }
            },
        };
        let (class, reason) = classify(row, earlier, previous_on_server.as_ref());
        out.push(LogContinuity {
            log_id: row.log_id.clone(),
            technician_id: row.technician_id.clone(),
            class,
            reason,
            started_at: row.started_at,
            chained: row.chained,
            previous: row.previous.clone(),
            why: row.why.clone(),
            previous_on_server,
            head: Head { seq: row.head_seq, hash: row.head_hash.clone() },
            diverged: row.diverged.clone(),
        });
        earlier += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(log: Uuid, previous: Option<LogHeadRef>) -> LogContinuityRow {
        LogContinuityRow {
            log_id: log.to_string(),
            technician_id: "alice".into(),
            started_at: Utc::now(),
            chained: true,
            previous,
            why: Some("keyring".into()),
            head_seq: 9,
            head_hash: "99".repeat(32),
            diverged: None,
        }
    }

    fn held(seq: u64, hash: &str) -> PreviousOnServer {
        PreviousOnServer {
            technician_id: "alice".into(),
            head: Head { seq, hash: hash.into() },
            hash_at_seq: None,
        }
    }

    fn named(log: Uuid, seq: u64, hash: &str) -> Option<LogHeadRef> {
        Some(LogHeadRef { log_id: log, seq, hash: hash.into() })
    }

    #[test]
    fn a_log_naming_nothing_is_first_or_restarted() {
        let r = row(Uuid::now_v7(), None);
        assert_eq!(classify(&r, 0, None).0, LogClass::First);
        let (class, reason) = classify(&r, 2, None);
        assert_eq!(class, LogClass::Restarted);
        assert!(reason.contains("2 log(s) of alice"), "{reason}");
        let legacy = LogContinuityRow { chained: false, why: None, ..r };
        let (class, reason) = classify(&legacy, 1, None);
        assert_eq!(class, LogClass::Restarted);
        assert!(reason.contains("not log_started"), "{reason}");
    }

    #[test]
    fn a_log_naming_the_servers_head_continues_and_anything_else_is_cut() {
        let old = Uuid::now_v7();
        let h = "ab".repeat(32);
        let r = row(Uuid::now_v7(), named(old, 5, &h));
        assert_eq!(classify(&r, 1, Some(&held(5, &h))).0, LogClass::Continues);

        // The laptop went back: it names a head below what the server holds.
        let (class, reason) = classify(&r, 1, Some(&held(7, "cd")));
        assert_eq!(class, LogClass::Cut);
        assert!(reason.contains("below the server's head of that log (seq 7)"), "{reason}");
        // Events were lost before they were pushed: the named head is above the server's.
        let (class, reason) = classify(&r, 1, Some(&held(3, "cd")));
        assert_eq!(class, LogClass::Cut);
        assert!(reason.contains("only up to seq 3"), "{reason}");
        // The same seq with another hash: not the log the server holds.
        let (class, reason) = classify(&r, 1, Some(&held(5, "cd")));
        assert_eq!(class, LogClass::Cut);
        assert!(reason.contains("another hash"), "{reason}");
        // A log the server never received, or another technician's.
        let (class, reason) = classify(&r, 1, None);
        assert_eq!(class, LogClass::Cut);
        assert!(reason.contains("never received"), "{reason}");
        let bob = PreviousOnServer { technician_id: "bob".into(), ..held(5, &h) };
        assert_eq!(classify(&r, 1, Some(&bob)).0, LogClass::Cut);
        // A log naming itself.
        let me = Uuid::now_v7();
        let selfish = row(me, named(me, 5, &h));
        assert_eq!(classify(&selfish, 1, Some(&held(5, &h))).0, LogClass::Cut);
    }

    #[test]
    fn a_log_a_laptop_contradicted_is_cut_whatever_it_named() {
        let old = Uuid::now_v7();
        let h = "ab".repeat(32);
        let mut r = row(Uuid::now_v7(), named(old, 5, &h));
        r.diverged = Some(Divergence {
            seq: 4,
            event_id: Uuid::now_v7().to_string(),
            hash: "ef".repeat(32),
            detected_at: Utc::now(),
        });
        let (class, reason) = classify(&r, 1, Some(&held(5, &h)));
        assert_eq!(class, LogClass::Cut);
        assert!(reason.contains("at seq 4 of this log"), "{reason}");
        assert!(reason.contains("seq 1 to 9"), "{reason}");
        r.previous = None;
        assert_eq!(classify(&r, 0, None).0, LogClass::Cut);
    }
}
