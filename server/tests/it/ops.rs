//! Operating the server: readiness that includes the database, graceful shutdown (SIGTERM lets a
//! push in flight finish; new requests get a retryable 503), request logs without tokens, and
//! the configuration file.

use crate::common::{
    Backend, PgDatabase, SERVER_BIN, ServerProcess, TestServer, server_admin, server_cmd, token_in,
};
use fieldpatch_proto::wire::{PushAck, PushRequest};
use fieldpatch_testkit::chain::{Chain, note};
use std::time::{Duration, Instant};

async fn get(url: &str) -> (reqwest::StatusCode, Option<String>, serde_json::Value) {
    let r = reqwest::get(url).await.unwrap();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (r.status(), retry, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_database_goes_away() {
    let server = TestServer::start(Backend::Postgres).await;
    let (status, _, body) = get(&server.url("/v1/ready")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "ok");
    // The database disappears under the running server.
    {
        use sqlx::Connection;
        let mut c =
            sqlx::PgConnection::connect(&format!("{}/postgres", crate::common::postgres_base()))
                .await
                .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            server.pg_name().unwrap()
        )))
        .execute(&mut c)
        .await
        .unwrap();
    }
    let (status, retry, body) = get(&server.url("/v1/ready")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "database_unavailable");
    assert!(retry.is_some());
    // Liveness does not depend on the database.
    assert_eq!(get(&server.url("/v1/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_answers_new_requests_with_a_retryable_503() {
    let server = TestServer::start(Backend::Sqlite).await;
    server.seed().await;
    let tech = server.technician("alice").await;
    assert_eq!(get(&server.url("/v1/ready")).await.0, 200);
    server.drain();
    let (status, retry, body) = get(&server.url("/v1/ready")).await;
    assert_eq!((status.as_u16(), body["code"].as_str()), (503, Some("shutting_down")));
    assert!(retry.is_some());
    let events = Chain::new(&tech.key).events([note("late")]);
    let r = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(&tech.token)
        .json(&PushRequest { events })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "shutting_down");
    assert_eq!(server.counts().await.events, 0, "nothing is stored while draining");
    assert_eq!(get(&server.url("/v1/health")).await.0, 200);
}

/// SIGTERM while a push waits for its log's lock in the database: the process stops accepting
/// connections but finishes the push (200, every event stored) before it exits with success.
/// The request log names method, route, status, latency and technician, and never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_push_in_flight_and_the_log_holds_no_token() {
    let db = PgDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = fieldpatch_testkit::chain::random_key();
    let out = server_admin(
        &data,
        &db.url,
        &[
            "create-technician",
            "--id",
            "alice",
            "--name",
            "Alice",
            "--public-key",
            &hex::encode(key.verifying_key().as_bytes()),
        ],
    );
    let token = token_in(&out);
    let mut server = ServerProcess::start(
        server_cmd(&data, &db.url),
        &["--listen", "127.0.0.1:0", "--shutdown-grace-secs", "60"],
        dir.path().join("server.log"),
    );
    let client = reqwest::Client::new();
    let mut chain = Chain::new(&key);
    let first = chain.events((0..10).map(|i| note(&format!("a{i}"))));
    let second = chain.events((0..10).map(|i| note(&format!("b{i}"))));
    let push = |events: Vec<fieldpatch_proto::event::Event>| {
        client.post(server.url("/v1/push")).bearer_auth(&token).json(&PushRequest { events }).send()
    };
    assert_eq!(push(first).await.unwrap().status(), 200);
    let wrong = "fpt_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let r = client.get(server.url("/v1/pull")).bearer_auth(wrong).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // Hold the log's push lock from outside, so the next push is in flight for as long as needed.
    use sqlx::Connection;
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let lock = fieldpatch_server::store::log_lock_key(&chain.id().to_string());
    sqlx::query("SELECT pg_advisory_lock($1)").bind(lock).execute(&mut holder).await.unwrap();
    let in_flight = tokio::spawn(push(second.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&mut holder)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the push never reached the database lock");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.terminate();
    // The listener closes: new connections are refused.
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::Client::new().get(server.url("/v1/health")).send().await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.child.try_wait().unwrap().is_none(), "exited with a push in flight");
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(lock).execute(&mut holder).await.unwrap();

    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let ack: PushAck = r.json().await.unwrap();
    assert_eq!(ack.stored, second.iter().map(|e| e.body.id).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit after the push finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let (events,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM events").fetch_one(&mut holder).await.unwrap();
    assert_eq!(events, 20);

    let logs = server.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    // One line per response.
    let pushes: Vec<&str> =
        logs.lines().filter(|l| l.contains("route=/v1/push") && l.contains(" response ")).collect();
    assert!(
        pushes
            .iter()
            .filter(|l| l.contains("status=200") && l.contains("technician=alice"))
            .count()
            >= 2,
        "{logs}"
    );
    assert!(
        pushes.iter().all(|l| l.contains("method=POST") && l.contains("latency_ms=")),
        "{logs}"
    );
    assert!(
        logs.lines().any(|l| l.contains("route=/v1/pull") && l.contains("status=401")),
        "{logs}"
    );
    for secret in [token.as_str(), wrong, "fpt_"] {
        assert!(!logs.contains(secret), "a token reached the log:\n{logs}");
    }
    assert!(!logs.to_ascii_lowercase().contains("bearer"), "{logs}");
    assert!(!logs.to_ascii_lowercase().contains("authorization"), "{logs}");
}

#[test]
fn the_configuration_file_sets_what_the_flags_set_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:1\"\nshutdown_grace_secs = 5\nlog = \"debug\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    // The file says port 1, the flag a free port: the flag must win (the bound port is printed).
    let mut cmd = std::process::Command::new(SERVER_BIN);
    cmd.env_remove("RUST_LOG")
        .env_remove("FIELDPATCH_SERVER_LOG")
        .env_remove("FIELDPATCH_SERVER_DATA")
        .env_remove("FIELDPATCH_DATABASE");
    cmd.arg("--config").arg(&config);
    let server =
        ServerProcess::start(cmd, &["--listen", "127.0.0.1:0"], dir.path().join("server.log"));
    assert!(!server.base.ends_with(":1"));
    // The file's data directory holds the database and keys; its log level is in effect.
    assert!(data.join("inventory.db").exists() && data.join("server-key").exists());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        assert_eq!(reqwest::get(server.url("/v1/ready")).await.unwrap().status(), 200);
    });
    drop(server);
    let logs = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(logs.contains("DEBUG"), "log = \"debug\" from the file is not in effect:\n{logs}");

    // A typo is refused, naming the key.
    std::fs::write(&config, "lisen = \"127.0.0.1:8470\"\n").unwrap();
    let out = std::process::Command::new(SERVER_BIN)
        .arg("--config")
        .arg(&config)
        .args(["serve"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `lisen`"), "{err}");
}
