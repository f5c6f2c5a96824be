//! The inventory team's audit export end to end: a technician's visit pushed to the real
//! `fieldpatch-server` binary, exported with `fieldpatch-server admin export --site`, checked
//! offline by the real `fieldpatch audit verify` against the server key; a changed byte and
//! another pinned server key are refused.

use crate::sync_cli::{admin, serve};
use chrono::{DateTime, Duration, Utc};
use fieldpatch_core::sync::wire::{PushAck, PushRequest};
use fieldpatch_core::visitlog::EventKind;
use fieldpatch_e2e::kit::fieldpatch;
use fieldpatch_testkit::chain::{Chain, random_key};
use std::path::Path;
use std::process::Output;

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn error_code(out: &Output) -> String {
    let err: serde_json::Value = serde_json::from_slice(&out.stderr)
        .or_else(|_| serde_json::from_slice(&out.stdout))
        .unwrap_or_else(|_| panic!("{}", text(out)));
    err["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_site_exported_by_the_server_binary_verifies_with_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let sites = tmp.path().join("sites.csv");
    std::fs::write(&sites, "id,name,address\nsite-a,Plant A,\nsite-b,Plant B,\n").unwrap();
    admin(&server_data, &["import-sites", sites.to_str().unwrap()], None);
    let key = random_key();
    let public = hex::encode(key.verifying_key().as_bytes());
    let out = admin(
        &server_data,
        &["create-technician", "--id", "alice", "--name", "Alice", "--public-key", &public],
        None,
    );
    let token = out.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    admin(&server_data, &["assign", "--technician", "alice", "--site", "site-a"], None);
    let server_key = admin(&server_data, &["server-key"], None).trim().to_string();

    // Two visits at site-a in one log, with a note between them.
    let start: DateTime<Utc> = "2026-11-20T08:00:00Z".parse().unwrap();
    let (v1, v2) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut c = Chain::new(&key).at(start, Duration::minutes(1));
    let mut log =
        vec![c.event(None, EventKind::LogStarted { previous: None, why: "nothing_known".into() })];
    for (visit, reason) in [(v1, "owner asked to wait"), (v2, "already current")] {
        c = c.visit(Some(visit));
        log.extend(c.events([
            (None, EventKind::VisitOpened { site: "site-a".into(), work_order: None }),
            (Some("d1"), EventKind::DeviceNotPatched { reason: reason.into() }),
            (None, EventKind::VisitClosed { patched: 0, not_patched: 1 }),
        ]));
        c = c.visit(None);
        log.push(c.event(None, EventKind::Note { text: "between visits".into() }));
    }
    {
        let (_server, url) = serve(&server_data);
        let ack: PushAck = reqwest::Client::new()
            .post(format!("{url}/v1/push"))
            .bearer_auth(&token)
            .json(&PushRequest { events: log.clone() })
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ack.stored.len(), log.len(), "{ack:?}");
    }

    let out_dir = tmp.path().join("exports");
    let printed = admin(
        &server_data,
        &["export", "--site", "site-a", "--from", "2026-11-20", "--out", out_dir.to_str().unwrap()],
        None,
    );
    assert!(printed.contains("2 visit(s) of site site-a exported"), "{printed}");
    let mut files: Vec<_> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");

    let auditor = tmp.path().join("auditor");
    let verify = |file: &Path, key: &str| {
        fieldpatch(
            tmp.path(),
            &auditor,
            &["--json", "audit", "verify", file.to_str().unwrap(), "--server-key", key],
        )
    };
    let mut seen = Vec::new();
    for f in &files {
        let out = verify(f, &server_key);
        assert!(out.status.success(), "{}", text(&out));
        let ok: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(ok["technician_key"], public.as_str(), "{ok}");
        assert_eq!(ok["manifest_server_key"], server_key.as_str(), "{ok}");
        assert_eq!(ok["server_key"], server_key.as_str(), "{ok}");
        assert_eq!((ok["events"].as_u64(), ok["devices"].as_u64()), (Some(3), Some(1)), "{ok}");
        seen.push(ok["visit_id"].as_str().unwrap().to_string());
    }
    seen.sort();
    let mut want = vec![v1.to_string(), v2.to_string()];
    want.sort();
    assert_eq!(seen, want);
    let plain = fieldpatch(tmp.path(), &auditor, &["audit", "verify", files[0].to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&plain.stdout)
            .contains(&format!("manifest signed by server key {server_key}")),
        "{}",
        text(&plain)
    );

    // A changed byte of a signed event; another server key pinned.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let at = bytes.windows(7).position(|w| w == b"already" || w == b"owner a").unwrap();
    bytes[at] ^= 0x20;
    let bad = tmp.path().join("bad.tar");
    std::fs::write(&bad, &bytes).unwrap();
    let out = verify(&bad, &server_key);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(error_code(&out), "audit_chain");
    let other = hex::encode(random_key().verifying_key().as_bytes());
    let out = verify(&files[0], &other);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(error_code(&out), "audit_manifest_signature");

    // Nothing after the last visit's day; an unknown site is an error.
    let later = tmp.path().join("later");
    let printed = admin(
        &server_data,
        &["export", "--site", "site-a", "--from", "2026-11-21", "--out", later.to_str().unwrap()],
        None,
    );
    assert!(printed.contains("0 visit(s)"), "{printed}");
}
