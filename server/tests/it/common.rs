//! Test helpers: a real server on a loopback port over a real SQLite file or a freshly created
//! PostgreSQL database (dropped again when the test ends). Signed event chains come from
//! `fieldpatch_testkit::chain`.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use fieldpatch_proto::wire::{Device, Site, WorkOrder};
use fieldpatch_server::api::{self, NewTechnician};
use fieldpatch_server::store::Counts;
use fieldpatch_server::{App, Bound, PgStore, SqliteStore, Store};
use std::sync::Arc;
use uuid::Uuid;

/// Base URL of the local PostgreSQL server (trust auth).
pub fn postgres_base() -> String {
    std::env::var("FIELDPATCH_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A uniquely named PostgreSQL database, dropped on drop (even when the test panics).
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> Self {
        use sqlx::Connection;
        let name = format!("fieldpatch_test_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (scripts/setup starts it)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let url = format!("{}/{name}", postgres_base());
        Self { name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let base = postgres_base();
        // A fresh runtime on a plain thread: drop may run inside (or outside) a tokio runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{base}/postgres")).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            })
        })
        .join();
    }
}

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Type-erased access to the running server's store, for assertions.
pub enum AnyStore {
    Sqlite(Arc<App<SqliteStore>>),
    Postgres(Arc<App<PgStore>>),
}

/// A running server and an admin token.
pub struct TestServer {
    pub base: String,
    pub admin_token: String,
    pub server_key: String,
    pub app: AnyStore,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_on<S: Store>(
    store: S,
) -> (Arc<App<S>>, String, String, tokio::task::JoinHandle<()>) {
    store.migrate().await.unwrap();
    let admin_token = api::issue_token(&store, None, "test").await.unwrap();
    let app = Arc::new(
        App::new(store, SigningKey::generate(&mut rand::rng())).with_credential_key(rand::random()),
    );
    let bound = Bound::bind("127.0.0.1:0".parse().unwrap(), None, false).await.unwrap();
    let base = format!("http://{}", bound.local_addr());
    let serving = app.clone();
    let task = tokio::spawn(async move {
        bound.serve(serving).await.unwrap();
    });
    (app, base, admin_token, task)
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let store = SqliteStore::open(&dir.path().join("inventory.db")).await.unwrap();
                let (app, base, admin_token, task) = start_on(store).await;
                let server_key = app.public_key();
                Self {
                    base,
                    admin_token,
                    server_key,
                    app: AnyStore::Sqlite(app),
                    task,
                    _dir: dir,
                    _pg: None,
                }
            }
            Backend::Postgres => {
                let pg = PgDatabase::create().await;
                let store = PgStore::connect(&pg.url).await.unwrap();
                let (app, base, admin_token, task) = start_on(store).await;
                let server_key = app.public_key();
                Self {
                    base,
                    admin_token,
                    server_key,
                    app: AnyStore::Postgres(app),
                    task,
                    _dir: dir,
                    _pg: Some(pg),
                }
            }
        }
    }

    pub async fn counts(&self) -> Counts {
        match &self.app {
            AnyStore::Sqlite(a) => a.store.counts().await.unwrap(),
            AnyStore::Postgres(a) => a.store.counts().await.unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The PostgreSQL database's name (`None` on SQLite).
    pub fn pg_name(&self) -> Option<&str> {
        self._pg.as_ref().map(|p| p.name.as_str())
    }

    /// Start shutting down (what SIGTERM does first).
    pub fn drain(&self) {
        match &self.app {
            AnyStore::Sqlite(a) => a.drain(),
            AnyStore::Postgres(a) => a.drain(),
        }
    }

    /// An admin request with a JSON body; panics unless 2xx. The answer (`null` when it has no
    /// body) is checked against the OpenAPI document's schema for that operation and status.
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let r = reqwest::Client::new()
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert!(status.is_success(), "{path}: {status}");
        let bytes = r.bytes().await.unwrap();
        let answer = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: the answer is not JSON: {e}"))
        };
        check_response(method.as_str(), path, status.as_u16(), &answer);
        answer
    }

    /// Register a technician with a fresh key; returns the key and a token.
    pub async fn technician(&self, id: &str) -> Tech {
        let key = SigningKey::generate(&mut rand::rng());
        let body = NewTechnician {
            id: id.into(),
            name: format!("Technician {id}"),
            public_key: hex::encode(key.verifying_key().as_bytes()),
        };
        self.admin_json(
            reqwest::Method::POST,
            "/v1/admin/technicians",
            serde_json::to_value(&body).unwrap(),
        )
        .await;
        let r = self
            .admin_json(
                reqwest::Method::POST,
                &format!("/v1/admin/technicians/{id}/tokens"),
                serde_json::json!({}),
            )
            .await;
        let token: api::IssuedToken = serde_json::from_value(r).unwrap();
        Tech { id: id.into(), key, token: token.token }
    }

    /// Sites s1 (devices d1..d3, work order w1 over all three) and s2 (device d9).
    pub async fn seed(&self) {
        let sites = vec![
            Site { id: "s1".into(), name: "Plant 1".into(), address: None },
            Site { id: "s2".into(), name: "Plant 2".into(), address: Some("Elsewhere".into()) },
        ];
        self.admin_json(
            reqwest::Method::POST,
            "/v1/admin/sites",
            serde_json::to_value(&sites).unwrap(),
        )
        .await;
        let devices: Vec<Device> = [("d1", "s1"), ("d2", "s1"), ("d3", "s1"), ("d9", "s2")]
            .into_iter()
            .map(|(id, site)| device(id, site))
            .collect();
        self.admin_json(
            reqwest::Method::POST,
            "/v1/admin/devices",
            serde_json::to_value(&devices).unwrap(),
        )
        .await;
        let w = vec![WorkOrder {
            id: "w1".into(),
            site_id: "s1".into(),
            title: "Spring patch round".into(),
            planned_for: Some("2026-11-20".into()),
            devices: vec!["d1".into(), "d2".into(), "d3".into()],
        }];
        self.admin_json(
            reqwest::Method::POST,
            "/v1/admin/work-orders",
            serde_json::to_value(&w).unwrap(),
        )
        .await;
    }

    pub async fn assign(&self, tech: &str, site: &str) {
        self.admin_json(
            reqwest::Method::PUT,
            &format!("/v1/admin/assignments/{tech}/{site}"),
            serde_json::json!(null),
        )
        .await;
    }
}

pub fn device(id: &str, site: &str) -> Device {
    Device {
        id: id.into(),
        site_id: site.into(),
        vendor: Some("Acme".into()),
        model: Some("gw-2".into()),
        hardware_revision: Some("B".into()),
        serial_number: Some(format!("SN-{id}")),
        approved_version: Some("1.4.0".into()),
        current_firmware: Some("1.3.0".into()),
        last_visit: None,
        failures: 0,
        last_failure: None,
        not_patched_reason: None,
    }
}

/// A registered technician.
#[derive(Debug, Clone)]
pub struct Tech {
    pub id: String,
    pub key: SigningKey,
    pub token: String,
}

/// Run one async test body against both backends.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await;
            }
        }
    };
}

/// The built server binary.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_fieldpatch-server");

/// A `fieldpatch-server` command on this data directory and database.
pub fn server_cmd(data: &std::path::Path, database: &str) -> std::process::Command {
    let mut c = std::process::Command::new(SERVER_BIN);
    c.arg("--data-dir").arg(data).arg("--database").arg(database);
    c.env_remove("RUST_LOG")
        .env_remove("FIELDPATCH_SERVER_CONFIG")
        .env_remove("FIELDPATCH_SERVER_LOG");
    c
}

/// Run an admin command; panics unless it succeeds; returns standard output.
pub fn server_admin(data: &std::path::Path, database: &str, args: &[&str]) -> String {
    let out = server_cmd(data, database).arg("admin").args(args).output().unwrap();
    assert!(out.status.success(), "admin {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The `token: ...` line of an admin command's output.
pub fn token_in(stdout: &str) -> String {
    stdout.lines().find_map(|l| l.strip_prefix("token: ")).expect("a token line").to_string()
}

/// A running `fieldpatch-server serve` process, its standard error going to a file. Killed on
/// drop unless it exited.
#[derive(Debug)]
pub struct ServerProcess {
    pub child: std::process::Child,
    pub base: String,
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    /// Start `serve` (on a free loopback port unless `args` name one) and wait until it listens.
    pub fn start(mut cmd: std::process::Command, args: &[&str], log: std::path::PathBuf) -> Self {
        use std::io::BufRead;
        let err = std::fs::File::create(&log).unwrap();
        let child = cmd
            .arg("serve")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        // Owned at once: a failed start below still kills and reaps the process (drop).
        let mut server = Self { child, base: String::new(), log };
        let mut out = std::io::BufReader::new(server.child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("server exited before listening: {}", server.logs());
            }
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                server.base = url.to_string();
                return server;
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Send SIGTERM (as systemd and container runtimes stop a service).
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The server's OpenAPI document.
pub fn document() -> &'static serde_json::Value {
    static DOC: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        serde_json::from_str(include_str!("../../src/openapi.json")).expect("openapi.json is JSON")
    });
    &DOC
}

/// The document's path template matching the concrete `path`, and its path item.
fn operation(path: &str) -> (&'static str, &'static serde_json::Value) {
    let path = path.split('?').next().unwrap_or(path);
    document()["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .find(|(t, _)| {
            let (a, b): (Vec<&str>, Vec<&str>) =
                (t.split('/').collect(), path.split('/').collect());
            a.len() == b.len()
                && a.iter().zip(&b).all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
        })
        .map(|(t, item)| (t.as_str(), item))
        .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"))
}

/// What keeps `value` from validating against `schema` (a schema of the document; OpenAPI 3.1
/// schemas are JSON Schema 2020-12, `#/components/...` references resolve in the document).
pub fn schema_problems(schema: &serde_json::Value, value: &serde_json::Value) -> Vec<String> {
    let mut root = schema.clone();
    root["components"] = document()["components"].clone();
    root["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema does not compile: {e}"));
    validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path)).collect()
}

/// The document's component schema `name`.
pub fn component(name: &str) -> serde_json::Value {
    serde_json::json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// What keeps `body` from being a request body the document allows for `method path`.
pub fn request_problems(method: &str, path: &str, body: &serde_json::Value) -> Vec<String> {
    let (template, item) = operation(path);
    let method = method.to_ascii_lowercase();
    let schema = &item[&method]["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {template} documents no JSON request body");
    schema_problems(schema, body)
}

/// Check a request body against the OpenAPI document (see [`check_response`]).
pub fn check_request(method: &str, path: &str, body: &serde_json::Value) {
    let problems = request_problems(method, path, body);
    assert!(
        problems.is_empty(),
        "{method} {path}: a request body the server takes is one the OpenAPI document does not allow:\n{}",
        problems.join("\n")
    );
}

/// Check a JSON answer of the server against its OpenAPI document: the operation must document
/// `status` for `method path` (a concrete path, matched against the document's templates), and
/// `body` must validate against that response's JSON Schema (OpenAPI 3.1 schemas are JSON Schema
/// 2020-12; `#/components/...` references resolve in the document). Panics naming every
/// violation.
pub fn check_response(method: &str, path: &str, status: u16, body: &serde_json::Value) {
    let (template, item) = operation(path);
    let method = method.to_ascii_lowercase();
    let response = &item[&method]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {template} answered {status}, which the OpenAPI document does not describe"
    );
    let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
        assert!(
            body.is_null(),
            "{method} {template} answered {status} with a JSON body the OpenAPI document does not describe: {body}"
        );
        return;
    };
    let problems = schema_problems(&serde_json::Value::Object(schema.clone()), body);
    assert!(
        problems.is_empty(),
        "{method} {template} answered {status} with a body the OpenAPI document does not allow:\n{}",
        problems.join("\n")
    );
}
