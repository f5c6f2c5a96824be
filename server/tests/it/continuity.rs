//! The log-continuity report over logs pushed through the API, on SQLite and on PostgreSQL: what
//! each log's `log_started` names is recorded with its first event, and a laptop that sends other
//! content at seqs the server holds is refused and marks the log as cut.

use crate::both_backends;
use crate::common::{AnyStore, Backend, TestServer};
use fieldpatch_proto::event::{Event, EventKind, LogHeadRef};
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_server::Store;
use fieldpatch_server::continuity::{self, LogClass, LogContinuity};
use fieldpatch_testkit::chain::{chain, chain_in, note};

async fn push(server: &TestServer, token: &str, events: &[Event]) -> PushAck {
    let r = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(token)
        .json(&PushRequest { events: events.to_vec() })
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

async fn report(server: &TestServer) -> Vec<LogContinuity> {
    match &server.app {
        AnyStore::Sqlite(a) => continuity::report(&a.store).await.unwrap(),
        AnyStore::Postgres(a) => continuity::report(&a.store).await.unwrap(),
    }
}

async fn held_hash(server: &TestServer, log: &Event, seq: u64) -> String {
    let log_id = log.body.log_id.to_string();
    let held = match &server.app {
        AnyStore::Sqlite(a) => a.store.stored_events(&log_id, seq, seq).await.unwrap(),
        AnyStore::Postgres(a) => a.store.stored_events(&log_id, seq, seq).await.unwrap(),
    };
    held[0].hash.clone()
}

fn started(previous: Option<LogHeadRef>) -> (Option<&'static str>, EventKind) {
    (None, EventKind::LogStarted { previous, why: "keyring".into() })
}

fn head(log: &[Event], seq: u64) -> Option<LogHeadRef> {
    let e = &log[seq as usize - 1];
    Some(LogHeadRef { log_id: e.body.log_id, seq, hash: e.hash() })
}

both_backends!(every_log_is_classified_with_its_evidence);
async fn every_log_is_classified_with_its_evidence(backend: Backend) {
    let server = TestServer::start(backend).await;
    let alice = server.technician("alice").await;
    let bob = server.technician("bob").await;

    // Each push is one log, in this order: the report orders a technician's logs by arrival.
    let a = chain(&alice.key, [started(None), note("a2"), note("a3")]);
    let b = chain(&alice.key, [started(head(&a, 3)), note("b2")]);
    let c = chain(&alice.key, [started(None), note("c2")]);
    let d = chain(&alice.key, [started(head(&a, 2))]);
    let mut beyond = head(&a, 3).unwrap();
    beyond.seq = 5;
    let e = chain(&alice.key, [started(Some(beyond))]);
    let legacy = chain(&alice.key, [note("from a laptop before chaining")]);
    let bobs = chain(&bob.key, [note("bob's first")]);
    for (token, log) in [
        (&alice.token, &a),
        (&alice.token, &b),
        (&alice.token, &c),
        (&alice.token, &d),
        (&alice.token, &e),
        (&alice.token, &legacy),
        (&bob.token, &bobs),
    ] {
        let ack = push(&server, token, log).await;
        assert_eq!(ack.stored.len(), log.len(), "{ack:?}");
    }

    // Alice's laptop went back to an older copy of log b and signed another event at seq 2.
    let forked = chain_in(&alice.key, b[0].body.log_id, 2, b[0].hash(), [note("b2, again")]);
    let ack = push(&server, &alice.token, &forked).await;
    assert_eq!(ack.rejected.iter().map(|p| p.code.as_str()).collect::<Vec<_>>(), ["conflict"]);
    assert_eq!(held_hash(&server, &b[0], 2).await, b[1].hash(), "never stored over what is held");
    // A replay of the genuine events is still the same acknowledgement, not a divergence.
    let ack = push(&server, &alice.token, &a).await;
    assert!(ack.rejected.is_empty(), "{ack:?}");

    let logs = report(&server).await;
    let class = |log: &[Event]| {
        let id = log[0].body.log_id.to_string();
        let entry = logs.iter().find(|l| l.log_id == id).unwrap_or_else(|| panic!("{id}"));
        (entry.class, entry.clone())
    };
    assert_eq!(class(&a).0, LogClass::First);
    let (k, entry) = class(&b);
    assert_eq!(k, LogClass::Cut, "{entry:?}");
    let diverged = entry.diverged.as_ref().unwrap();
    assert_eq!((diverged.seq, diverged.event_id.as_str()), (2, &*forked[0].body.id.to_string()));
    assert!(entry.reason.contains("at seq 2 of this log"), "{}", entry.reason);
    assert_eq!(entry.previous, head(&a, 3), "the claim stays in the evidence");
    assert_eq!(class(&c).0, LogClass::Restarted);
    let (k, entry) = class(&d);
    assert_eq!(k, LogClass::Cut);
    assert!(entry.reason.contains("below the server's head"), "{}", entry.reason);
    let on_server = entry.previous_on_server.unwrap();
    assert_eq!((on_server.head.seq, on_server.hash_at_seq), (3, Some(a[1].hash())));
    let (k, entry) = class(&e);
    assert_eq!(k, LogClass::Cut);
    assert!(entry.reason.contains("only up to seq 3"), "{}", entry.reason);
    let (k, entry) = class(&legacy);
    assert_eq!((k, entry.chained), (LogClass::Restarted, false));
    assert_eq!(class(&bobs).0, LogClass::First, "each technician's logs are their own");

    // A log continuing b's head would continue it: the claim is judged by what the server holds.
    let next = chain(&alice.key, [started(head(&b, 2))]);
    push(&server, &alice.token, &next).await;
    let logs = report(&server).await;
    let entry = logs.iter().find(|l| l.log_id == next[0].body.log_id.to_string()).unwrap();
    assert_eq!(entry.class, LogClass::Continues, "{entry:?}");
    assert_eq!(entry.why.as_deref(), Some("keyring"));

    // Ordered by technician, then by arrival; serialized with snake_case classes.
    let json = serde_json::to_value(&logs).unwrap();
    let order: Vec<(&str, &str)> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["technician_id"].as_str().unwrap(), l["class"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("alice", "first"),
            ("alice", "cut"),
            ("alice", "restarted"),
            ("alice", "cut"),
            ("alice", "cut"),
            ("alice", "restarted"),
            ("alice", "continues"),
            ("bob", "first"),
        ]
    );
}
