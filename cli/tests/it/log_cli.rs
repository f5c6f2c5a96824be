//! `fieldpatch log note|show|verify` on a real store file, with the technician key in the kernel
//! keyring (forced, so these run with or without a session bus). Tampering is done directly on the
//! SQLite file, as someone with access to the laptop's disk would.

use sqlx::{Connection, SqliteConnection};
use std::path::Path;
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
    service: String,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            service: format!("fieldpatch-test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
            .args(args)
            .env("FIELDPATCH_DATA_DIR", self.dir.path())
            .env("FIELDPATCH_KEYRING", "keyutils")
            .env("FIELDPATCH_KEYRING_SERVICE", &self.service)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("fieldpatch.db")
    }

    async fn sql(&self, statements: &[&'static str]) {
        let mut c =
            SqliteConnection::connect(&format!("sqlite://{}", self.db().display())).await.unwrap();
        for s in statements {
            sqlx::query(*s).execute(&mut c).await.unwrap();
        }
        c.close().await.unwrap();
    }

    /// Verify must fail, exit non-zero and name the first bad event in stderr.
    fn verify_fails_naming(&self, expected: &[&str]) {
        let out = self.run(&["log", "verify"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "tampering went unnoticed: {err}");
        for e in expected {
            assert!(err.contains(e), "stderr should contain {e:?}: {err}");
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.run(&["credentials", "delete", "technician-key"]);
    }
}

/// `n` notes: "note number i" at seq i + 1, after the log's `log_started` (seq 1).
fn with_notes(n: usize) -> Env {
    let env = Env::new();
    for i in 1..=n {
        let out = env.ok(&["log", "note", &format!("note number {i}")]);
        assert!(out.contains(&format!("seq {}", i + 1)), "{out}");
    }
    env
}

#[test]
fn notes_are_signed_shown_and_verified() {
    let env = with_notes(3);
    let text = env.ok(&["log", "show"]);
    assert!(text.contains("note number 2"), "{text}");
    let events: serde_json::Value =
        serde_json::from_str(&env.ok(&["log", "show", "--json"])).unwrap();
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["kind"], "log_started");
    assert_eq!(events[0]["previous"], serde_json::Value::Null, "no earlier log known");
    assert_eq!(events[3]["seq"], 4);
    assert_eq!(events[3]["kind"], "note");
    assert_eq!(events[3]["text"], "note number 3");
    assert_eq!(events[1]["signer"], events[0]["signer"]);
    let out = env.ok(&["log", "verify"]);
    assert!(out.contains("4 events verify"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["log", "verify", "--json"])).unwrap();
    assert_eq!(v[0]["ok"], true);
    assert_eq!(v[0]["verified"], 4);
    assert!(Path::new(&env.db()).exists());
}

#[test]
fn an_empty_store_verifies_and_says_so() {
    let env = Env::new();
    assert!(env.ok(&["log", "verify"]).contains("nothing to verify"));
    assert!(env.ok(&["log", "show"]).contains("empty"));
}

#[tokio::test]
async fn an_edited_event_fails_verification_naming_it() {
    let env = with_notes(4);
    env.sql(&[
        "UPDATE events SET body = replace(body, 'note number 2', 'note number 9') WHERE seq = 3",
    ])
    .await;
    env.verify_fails_naming(&["seq 3", "edited"]);
    let out = env.run(&["log", "verify", "--json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(v[0]["bad_seq"], 3);
    assert_eq!(v[0]["verified"], 2);
}

#[tokio::test]
async fn a_removed_event_fails_verification_naming_it() {
    let env = with_notes(4);
    env.sql(&["DELETE FROM events WHERE seq = 3"]).await;
    env.verify_fails_naming(&["seq 4", "expected sequence number 3", "removed"]);
}

#[tokio::test]
async fn reordered_events_fail_verification_naming_them() {
    let env = with_notes(4);
    env.sql(&[
        "UPDATE events SET seq = 100 WHERE seq = 2",
        "UPDATE events SET seq = 2 WHERE seq = 3",
        "UPDATE events SET seq = 3 WHERE seq = 100",
    ])
    .await;
    env.verify_fails_naming(&["seq 3", "expected sequence number 2", "reordered"]);
}

#[tokio::test]
async fn an_inserted_event_fails_verification_naming_it() {
    let env = with_notes(4);
    // Make room at seq 3 and insert a copy of event 2 there under a new row id.
    env.sql(&[
        "UPDATE events SET seq = seq + 100 WHERE seq >= 3",
        "UPDATE events SET seq = seq - 99 WHERE seq > 100",
        "INSERT INTO events (id, log_id, seq, hash, prev_hash, kind, visit_id, device, time, body, signature)
         SELECT 'copy', log_id, 3, hash, prev_hash, kind, visit_id, device, time, body, signature
         FROM events WHERE seq = 2",
    ])
    .await;
    env.verify_fails_naming(&["seq 2", "expected sequence number 3", "inserted"]);
}

#[test]
fn a_note_needs_a_usable_keyring_and_says_what_to_do() {
    let env = Env::new();
    let out = Command::new(env!("CARGO_BIN_EXE_fieldpatch"))
        .args(["log", "note", "x"])
        .env("FIELDPATCH_DATA_DIR", env.dir.path())
        .env("FIELDPATCH_KEYRING", "secret-service")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Secret Service is not available"), "{err}");
    assert!(err.contains("gnome-keyring"), "{err}");
    assert!(err.contains("FIELDPATCH_KEYRING=keyutils"), "{err}");
}

#[tokio::test]
async fn show_can_list_one_visit() {
    use fieldpatch_core::credentials::{BackendChoice, Credentials};
    use fieldpatch_core::store::Store;
    use fieldpatch_core::visitlog::VisitLog;
    let env = with_notes(1);
    // The app opens visits through the core API with the same technician key.
    let store = Store::open_in(env.dir.path()).await.unwrap();
    let creds =
        Credentials::open_with(&store, BackendChoice::Keyutils, &env.service).await.unwrap();
    let log = VisitLog::open(&store, creds.technician_key().await.unwrap()).await.unwrap();
    let (visit, _) = log.open_visit("site-5", None).await.unwrap();
    log.close_visit(visit, 0, 3).await.unwrap();
    store.close().await;
    let out = env.ok(&["log", "show", "--visit", &visit.to_string()]);
    assert!(out.contains("visit_opened") && out.contains("visit_closed"), "{out}");
    assert!(!out.contains("note number 1"), "{out}");
    let all: serde_json::Value = serde_json::from_str(&env.ok(&["log", "show", "--json"])).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 4, "one log: log_started, the note and the visit");
    assert!(env.ok(&["log", "verify"]).contains("4 events verify"));
}
