//! A technician's logs chain together across lost data directories, end to end: the real
//! `fieldpatch` binary (own data directory, the real Secret Service) syncs with the real
//! `fieldpatch-server` binary, and the inventory's `admin report log-continuity` says whether each
//! log continues the one before, was restarted or was cut.
//!
//! A wiped data directory starts a new log whose `log_started` names the head the server last
//! acknowledged (kept in the keyring): `continues`. Without that keyring record: `restarted`. A
//! data directory restored from an older copy appends at seqs the server holds: the server refuses
//! those events, the report says `cut`, and sync stops with `log_diverged` instead of retrying.

use crate::sync_cli::{Laptop, admin, enrol, new_laptop, serve};
use fieldpatch_core::visitlog::{Event, continuity};
use serde_json::Value;
use std::path::Path;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The laptop's events, all logs, in order.
fn events(laptop: &Laptop) -> Vec<Value> {
    json(&laptop.ok(&["--json", "log", "show"])).as_array().unwrap().clone()
}

fn sync(laptop: &Laptop, url: &str) -> Value {
    json(&laptop.ok(&["--json", "sync", "--server", url]))
}

/// The inventory's log-continuity report: class by log id, and the whole report.
fn continuity_report(server_data: &Path) -> (Vec<(String, String)>, Value) {
    let report = json(&admin(server_data, &["report", "log-continuity"], None));
    let classes = report
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["log_id"].as_str().unwrap().to_string(), l["class"].as_str().unwrap().into()))
        .collect();
    (classes, report)
}

/// Empty the laptop's data directory, as a reinstalled or replaced laptop would have it; the OS
/// keyring (technician key, sync token, pushed-head record) stays.
fn wipe(laptop: &Laptop) {
    std::fs::remove_dir_all(&laptop.data).unwrap();
    std::fs::create_dir_all(&laptop.data).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn forget_keyring(laptop: &Laptop) {
    let record = continuity::record_name(&laptop.data).to_string();
    for name in ["sync-token", "technician-key", record.as_str()] {
        let _ = laptop.run(&["credentials", "delete", name], "");
    }
}

#[test]
fn a_wiped_data_directory_continues_the_chain_and_without_the_keyring_record_restarts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "alice");
    let (_server, url) = serve(&server_data);
    let out = laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    laptop.ok(&["log", "note", "first trip"]);
    laptop.ok(&["log", "note", "first trip, later"]);
    let first = events(&laptop);
    assert_eq!(first[0]["kind"], "log_started");
    assert_eq!(first[0]["previous"], Value::Null);
    assert_eq!(first[0]["why"], "nothing_known");
    assert_eq!(sync(&laptop, &url)["pushed"], 3);
    let first_log = first[0]["log_id"].as_str().unwrap().to_string();

    // The data directory is lost; the keyring is not. The next event starts a new log that names
    // the head the server acknowledged.
    wipe(&laptop);
    laptop.ok(&["log", "note", "second trip"]);
    let second = events(&laptop);
    let second_log = second[0]["log_id"].as_str().unwrap().to_string();
    assert_ne!(second_log, first_log);
    assert_eq!(second[0]["kind"], "log_started");
    assert_eq!(second[0]["why"], "keyring");
    let named = &second[0]["previous"];
    assert_eq!(named["log_id"], first_log.as_str());
    assert_eq!(named["seq"], 3);
    let pushed_head: Event = serde_json::from_value(first[2].clone()).unwrap();
    assert_eq!(named["hash"], pushed_head.hash().as_str());
    assert_eq!(sync(&laptop, &url)["pushed"], 2);

    let (classes, report) = continuity_report(&server_data);
    assert_eq!(
        classes,
        [(first_log.clone(), "first".to_string()), (second_log.clone(), "continues".to_string())],
        "{report:#}"
    );
    assert_eq!(report[1]["previous_on_server"]["head"]["seq"], 3, "{report:#}");

    // Lost again, and this time the keyring record with it: the new log names nothing although
    // alice has logs on the server.
    wipe(&laptop);
    let record = continuity::record_name(&laptop.data).to_string();
    assert!(record.starts_with("log-head/"), "{record}");
    laptop.ok(&["credentials", "delete", &record]);
    laptop.ok(&["log", "note", "third trip"]);
    let third = events(&laptop);
    let third_log = third[0]["log_id"].as_str().unwrap().to_string();
    assert_eq!((&third[0]["previous"], &third[0]["why"]), (&Value::Null, &"nothing_known".into()));
    assert_eq!(sync(&laptop, &url)["pushed"], 2);
    let (classes, report) = continuity_report(&server_data);
    assert_eq!(classes.len(), 3, "{report:#}");
    assert_eq!(classes[2], (third_log, "restarted".to_string()), "{report:#}");
    assert!(report[2]["reason"].as_str().unwrap().contains("2 log(s) of alice"), "{report:#}");
    forget_keyring(&laptop);
}

#[test]
fn a_data_directory_restored_from_an_older_copy_is_reported_cut_and_sync_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let server_data = tmp.path().join("server");
    let laptop = new_laptop(tmp.path());
    let token = enrol(&laptop, &server_data, "bob");
    let (_server, url) = serve(&server_data);
    let out = laptop.run(&["sync", "login", "--server", &url], &format!("{token}\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    laptop.ok(&["log", "note", "one"]);
    laptop.ok(&["log", "note", "two"]);
    assert_eq!(sync(&laptop, &url)["pushed"], 3);
    let backup = tmp.path().join("backup");
    copy_dir(&laptop.data, &backup);
    laptop.ok(&["log", "note", "three"]);
    laptop.ok(&["log", "note", "four"]);
    assert_eq!(sync(&laptop, &url)["pushed"], 2);
    let log_id = events(&laptop)[0]["log_id"].as_str().unwrap().to_string();

    // The laptop's data directory comes back from the older copy: its log ends at seq 3 and
    // believes seq 3 was the last pushed; the server holds seq 1 to 5.
    std::fs::remove_dir_all(&laptop.data).unwrap();
    copy_dir(&backup, &laptop.data);
    laptop.ok(&["log", "note", "after the restore"]);
    assert_eq!(events(&laptop).len(), 4, "the same log id, appended at seq 4 again");

    for _ in 0..2 {
        // Not a retry loop: the same clear error every time.
        let out = laptop.run(&["--json", "sync"], "");
        assert!(!out.status.success());
        let err = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(err["error"]["code"], "log_diverged", "{err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(&log_id), "{message}");
        assert!(message.contains("seq 1 to 5") && message.contains("from seq 4 on"), "{message}");
        assert!(message.contains("restored from an older copy"), "{message}");
        assert!(message.contains("contact the inventory team"), "{message}");
    }

    let (classes, report) = continuity_report(&server_data);
    assert_eq!(classes, [(log_id.clone(), "cut".to_string())], "{report:#}");
    assert_eq!(report[0]["diverged"]["seq"], 4, "{report:#}");
    assert_eq!(report[0]["head"]["seq"], 5, "the server kept what it held: {report:#}");
    forget_keyring(&laptop);
}
