//! Signed, hash-chained visit-log events built directly (no store, no appender): what a laptop
//! would push, for server and sync tests, and forged events for tamper tests.
//!
//! [`Chain`] keeps the next event's log id, seq, previous hash and time; each
//! [`Chain::event`] signs one event and moves on. [`chain`] and [`chain_in`] build a whole
//! list at once.

use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use fieldpatch_proto::event::{Event, EventKind, GENESIS_HASH, TimeSource, UnsignedEvent};
use uuid::Uuid;

/// A chain under construction: one signing key, one log.
#[derive(Debug, Clone)]
pub struct Chain {
    key: SigningKey,
    log_id: Uuid,
    seq: u64,
    prev_hash: String,
    time: Option<DateTime<Utc>>,
    step: Duration,
    time_source: TimeSource,
    visit_id: Option<Uuid>,
}

impl Chain {
    /// A new log (fresh v7 id) signed by `key`: seq 1, the genesis hash, times from the clock.
    pub fn new(key: &SigningKey) -> Chain {
        Chain {
            key: key.clone(),
            log_id: Uuid::now_v7(),
            seq: 1,
            prev_hash: GENESIS_HASH.to_string(),
            time: None,
            step: Duration::zero(),
            time_source: TimeSource::SystemClock,
            visit_id: None,
        }
    }

    /// Continue after `last`: its log, the next seq, its hash as the previous hash.
    pub fn after(key: &SigningKey, last: &Event) -> Chain {
        Chain::new(key).log_id(last.body.log_id).seq(last.body.seq + 1).prev_hash(last.hash())
    }

    /// The log the events belong to.
    pub fn log_id(mut self, log_id: Uuid) -> Chain {
        self.log_id = log_id;
        self
    }

    /// The seq of the next event.
    pub fn seq(mut self, seq: u64) -> Chain {
        self.seq = seq;
        self
    }

    /// The previous hash the next event links to (a wrong one makes a broken chain).
    pub fn prev_hash(mut self, prev_hash: impl Into<String>) -> Chain {
        self.prev_hash = prev_hash.into();
        self
    }

    /// Fixed times: the next event at `time`, each later one `step` after the one before.
    /// Without this every event takes the clock's time when it is signed.
    pub fn at(mut self, time: DateTime<Utc>, step: Duration) -> Chain {
        self.time = Some(time);
        self.step = step;
        self
    }

    /// Where the events' times come from (default: the system clock).
    pub fn time_source(mut self, time_source: TimeSource) -> Chain {
        self.time_source = time_source;
        self
    }

    /// The visit the events belong to (default: none).
    pub fn visit(mut self, visit_id: Option<Uuid>) -> Chain {
        self.visit_id = visit_id;
        self
    }

    /// The log id of this chain.
    pub fn id(&self) -> Uuid {
        self.log_id
    }

    /// Sign the next event (`kind`, about `device`) and move on to the one after it.
    pub fn event(&mut self, device: Option<&str>, kind: EventKind) -> Event {
        let time = match &mut self.time {
            Some(t) => {
                let now = *t;
                *t = now + self.step;
                now
            }
            None => Utc::now(),
        };
        let e = UnsignedEvent {
            id: Uuid::now_v7(),
            log_id: self.log_id,
            seq: self.seq,
            time,
            time_source: self.time_source,
            signer: hex::encode(self.key.verifying_key().as_bytes()),
            visit_id: self.visit_id,
            device: device.map(str::to_string),
            prev_hash: self.prev_hash.clone(),
            kind,
        }
        .sign(&self.key);
        self.seq += 1;
        self.prev_hash = e.hash();
        e
    }

    /// Sign one event per item, in order.
    pub fn events<'a>(
        &mut self,
        items: impl IntoIterator<Item = (Option<&'a str>, EventKind)>,
    ) -> Vec<Event> {
        items.into_iter().map(|(device, kind)| self.event(device, kind)).collect()
    }
}

/// A new signed log: `items[i]` is event i+1, `(device, kind)`.
pub fn chain<'a>(
    key: &SigningKey,
    items: impl IntoIterator<Item = (Option<&'a str>, EventKind)>,
) -> Vec<Event> {
    Chain::new(key).events(items)
}

/// Signed events for log `log_id` from seq `first_seq`, the first linked to `prev`.
pub fn chain_in<'a>(
    key: &SigningKey,
    log_id: Uuid,
    first_seq: u64,
    prev: impl Into<String>,
    items: impl IntoIterator<Item = (Option<&'a str>, EventKind)>,
) -> Vec<Event> {
    Chain::new(key).log_id(log_id).seq(first_seq).prev_hash(prev).events(items)
}

/// A note about no device, as a chain item.
pub fn note(text: &str) -> (Option<&'static str>, EventKind) {
    (None, EventKind::Note { text: text.into() })
}

/// A fresh random signing key.
pub fn random_key() -> SigningKey {
    SigningKey::generate(&mut rand::rng())
}

/// A signing key derived from a public label: the same label gives the same key on every run.
/// Only for keys whose secrecy does not matter (the built-in demo's catalog, test fixtures).
pub fn labelled_key(label: &str) -> SigningKey {
    use sha2::Digest as _;
    let seed: [u8; 32] = sha2::Sha256::digest(format!("fieldpatch labelled key: {label}")).into();
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldpatch_proto::event::verify_chain;

    #[test]
    fn a_built_chain_verifies_and_continues() {
        let key = random_key();
        let first = chain(&key, (0..3).map(|i| note(&format!("n{i}"))));
        let more = Chain::after(&key, &first[2]).events([note("later")]);
        let all: Vec<Event> = first.iter().chain(&more).cloned().collect();
        assert_eq!(all.iter().map(|e| e.body.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(all[0].body.prev_hash, GENESIS_HASH);
        verify_chain(&all, None).unwrap();
    }

    #[test]
    fn fixed_times_step() {
        let t0 = DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().to_utc();
        let mut c = Chain::new(&random_key()).at(t0, Duration::seconds(5));
        let e = c.events([note("a"), note("b")]);
        assert_eq!((e[0].body.time, e[1].body.time), (t0, t0 + Duration::seconds(5)));
    }
}
