//! The `/v1` API against a real server on loopback, on SQLite and on PostgreSQL.

use crate::both_backends;
use crate::common::{self, Backend, TestServer};
use fieldpatch_proto::event::{Event, EventKind};
use fieldpatch_proto::wire::{Device, PlannedNotPatched, PullResponse, PushAck, PushRequest};
use fieldpatch_server::Store;
use fieldpatch_testkit::chain::{chain, chain_in, note};
use reqwest::StatusCode;

async fn push(server: &TestServer, token: &str, events: &[Event]) -> PushAck {
    let request = serde_json::to_value(PushRequest { events: events.to_vec() }).unwrap();
    common::check_request("POST", "/v1/push", &request);
    let r = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    common::check_response("POST", "/v1/push", 200, &body);
    serde_json::from_value(body).unwrap()
}

async fn get<T: serde::de::DeserializeOwned>(server: &TestServer, token: &str, path: &str) -> T {
    let r = reqwest::Client::new().get(server.url(path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let body: serde_json::Value = r.json().await.unwrap();
    common::check_response("GET", path, 200, &body);
    serde_json::from_value(body).unwrap()
}

async fn status(
    server: &TestServer,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
) -> StatusCode {
    let mut req =
        reqwest::Client::new().request(method, server.url(path)).json(&serde_json::json!([]));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

both_backends!(push_is_verified_idempotent_and_folds_into_the_inventory);
async fn push_is_verified_idempotent_and_folds_into_the_inventory(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let tech = server.technician("alice").await;
    server.assign("alice", "s1").await;

    let events = chain(
        &tech.key,
        vec![
            (None, EventKind::VisitOpened { site: "s1".into(), work_order: Some("w1".into()) }),
            (
                Some("d1"),
                EventKind::Confirmed {
                    version: Some("1.4.0".into()),
                    image_sha256: "aa".repeat(32),
                },
            ),
            (
                Some("d2"),
                EventKind::Failed { stage: "upload".into(), reason: "link dropped at 40%".into() },
            ),
            (Some("SN-d3"), EventKind::DeviceNotPatched { reason: "cabinet locked".into() }),
            (None, EventKind::VisitClosed { patched: 1, not_patched: 2 }),
        ],
    );
    let ack = push(&server, &tech.token, &events).await;
    assert_eq!(ack.stored, events.iter().map(|e| e.body.id).collect::<Vec<_>>());
    assert!(ack.retryable.is_empty() && ack.rejected.is_empty(), "{ack:?}");
    assert_eq!(ack.checkpoints.len(), 1);
    let cp = &ack.checkpoints[0];
    assert_eq!(cp.checkpoint.last_seq, 5);
    assert_eq!(cp.checkpoint.last_hash, events[4].hash());
    cp.verify(&server.server_key).unwrap();
    assert_eq!(server.counts().await.events, 5);

    // A replay adds nothing and answers the same.
    let again = push(&server, &tech.token, &events).await;
    assert_eq!(again, ack);
    let partial = push(&server, &tech.token, &events[1..3]).await;
    assert_eq!(partial.stored.len(), 2);
    assert_eq!(partial.checkpoints, ack.checkpoints);
    assert_eq!(server.counts().await.events, 5);

    // The inventory learnt from the log.
    let pull: PullResponse = get(&server, &tech.token, "/v1/pull").await;
    let d = |id: &str| pull.devices.iter().find(|d| d.id == id).unwrap().clone();
    assert_eq!(d("d1").current_firmware.as_deref(), Some("1.4.0"));
    assert!(d("d1").last_visit.is_some());
    assert_eq!(d("d2").failures, 1);
    assert_eq!(d("d2").last_failure.as_deref(), Some("link dropped at 40%"));
    assert_eq!(d("d3").not_patched_reason.as_deref(), Some("cabinet locked"));

    let behind: Vec<Device> =
        get(&server, &server.admin_token, "/v1/reports/not-at-approved-version").await;
    let mut ids: Vec<_> = behind.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["d2", "d3", "d9"]);
    let missed: Vec<PlannedNotPatched> =
        get(&server, &server.admin_token, "/v1/reports/planned-not-patched").await;
    let ids: Vec<_> =
        missed.iter().map(|p| (p.work_order_id.as_str(), p.device.id.as_str())).collect();
    assert_eq!(ids, [("w1", "d2"), ("w1", "d3")]);
    // A technician sees their sites only: d9 (site s2) is not theirs.
    let behind: Vec<Device> =
        get(&server, &tech.token, "/v1/reports/not-at-approved-version").await;
    assert_eq!(behind.len(), 2);

    // Paged: two at a time in id order, each page naming the next until the last.
    let mut paged = Vec::new();
    let mut path = "/v1/reports/not-at-approved-version?limit=2".to_string();
    loop {
        let r = reqwest::Client::new()
            .get(server.url(&path))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let next = r.headers().get("x-next-after").map(|v| v.to_str().unwrap().to_string());
        let link = r.headers().get("link").map(|v| v.to_str().unwrap().to_string());
        let body: serde_json::Value = r.json().await.unwrap();
        common::check_response("GET", &path, 200, &body);
        let page: Vec<Device> = serde_json::from_value(body).unwrap();
        assert!(page.len() <= 2, "{page:?}");
        paged.extend(page.into_iter().map(|d| d.id));
        match next {
            Some(after) => {
                assert!(link.unwrap().contains(&format!("after={after}>; rel=\"next\"")));
                path = format!("/v1/reports/not-at-approved-version?limit=2&after={after}");
            }
            None => break,
        }
    }
    assert_eq!(paged, ["d2", "d3", "d9"], "every device once, in id order");
    // `after` alone: one page of the largest size.
    let rest: Vec<Device> =
        get(&server, &server.admin_token, "/v1/reports/not-at-approved-version?after=d2").await;
    assert_eq!(rest.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d3", "d9"]);
    for bad in ["?limit=0", "?limit=10001"] {
        let path = format!("/v1/reports/not-at-approved-version{bad}");
        let code = status(&server, Some(&server.admin_token), reqwest::Method::GET, &path).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
    }

    let history: Vec<Event> = get(&server, &tech.token, "/v1/devices/d1/history").await;
    assert_eq!(history, vec![events[1].clone()]);
    let history: Vec<Event> = get(&server, &server.admin_token, "/v1/devices/d3/history").await;
    assert_eq!(history, vec![events[3].clone()]);

    // Later events continue the log.
    let more = chain_in(&tech.key, events[0].body.log_id, 6, events[4].hash(), vec![note("after")]);
    let ack = push(&server, &tech.token, &more).await;
    assert_eq!(ack.stored.len(), 1);
    assert_eq!(ack.checkpoints[0].checkpoint.last_seq, 6);
    assert_eq!(server.counts().await.events, 6);
}

both_backends!(events_about_devices_at_other_sites_are_kept_but_not_applied);
async fn events_about_devices_at_other_sites_are_kept_but_not_applied(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let tech = server.technician("alice").await;
    server.assign("alice", "s1").await;
    // d9 is at site s2, which alice is not assigned to; d1 is at her site s1.
    let events = chain(
        &tech.key,
        vec![
            (
                Some("d9"),
                EventKind::Confirmed {
                    version: Some("9.9.9".into()),
                    image_sha256: "bb".repeat(32),
                },
            ),
            (
                Some("d1"),
                EventKind::Confirmed {
                    version: Some("1.4.0".into()),
                    image_sha256: "aa".repeat(32),
                },
            ),
        ],
    );
    let ack = push(&server, &tech.token, &events).await;
    assert_eq!(ack.stored.len(), 2, "the log stays whole: {ack:?}");
    assert!(ack.rejected.is_empty(), "{ack:?}");
    assert_eq!(ack.not_applied.len(), 1, "{ack:?}");
    assert_eq!(ack.not_applied[0].id, events[0].body.id);
    assert_eq!(ack.not_applied[0].code, "device_not_assigned");
    assert!(ack.not_applied[0].reason.contains("not at a site assigned"), "{ack:?}");
    // A replay answers the same.
    assert_eq!(push(&server, &tech.token, &events).await, ack);

    let behind: Vec<Device> =
        get(&server, &server.admin_token, "/v1/reports/not-at-approved-version").await;
    assert!(behind.iter().any(|d| d.id == "d9"), "d9 dropped out of the report: {behind:?}");
    let d9: Vec<Event> = get(&server, &server.admin_token, "/v1/devices/d9/history").await;
    assert_eq!(d9.len(), 1, "the event is kept for the record");
    let pull: PullResponse = get(&server, &tech.token, "/v1/pull").await;
    let d1 = pull.devices.iter().find(|d| d.id == "d1").unwrap();
    assert_eq!(d1.current_firmware.as_deref(), Some("1.4.0"));
}

both_backends!(gaps_are_retryable_tampered_and_foreign_events_are_rejected);
async fn gaps_are_retryable_tampered_and_foreign_events_are_rejected(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    let bob = server.technician("bob").await;
    let events = chain(&alice.key, (0..6).map(|i| note(&format!("n{i}"))));

    // Events 3..4 before 1..2: a gap, retryable, nothing stored.
    let ack = push(&server, &alice.token, &events[2..4]).await;
    assert!(ack.stored.is_empty() && ack.rejected.is_empty());
    assert_eq!(
        ack.retryable.iter().map(|p| p.code.as_str()).collect::<Vec<_>>(),
        ["gap", "after_gap"]
    );
    assert!(ack.retryable[0].reason.contains("1..2"), "{}", ack.retryable[0].reason);
    assert!(ack.checkpoints.is_empty());
    assert_eq!(server.counts().await.events, 0);

    // Edited after signing.
    let mut tampered = events[..2].to_vec();
    tampered[1].body.kind = EventKind::Note { text: "rewritten".into() };
    let ack = push(&server, &alice.token, &tampered).await;
    assert_eq!(ack.stored, vec![events[0].body.id]);
    assert_eq!(ack.rejected.len(), 1);
    assert_eq!(ack.rejected[0].code, "bad_signature");
    assert_eq!(ack.rejected[0].seq, 2);

    // Alice cannot push events signed by Bob's key, even with a correct chain.
    let foreign = chain_in(&bob.key, events[0].body.log_id, 2, events[0].hash(), vec![note("bob")]);
    let ack = push(&server, &alice.token, &foreign).await;
    assert_eq!(ack.rejected[0].code, "foreign_signer");

    // Re-signed with a wrong prev_hash: a broken chain; what follows is rejected too.
    let broken =
        chain_in(&alice.key, events[0].body.log_id, 2, "11".repeat(32), vec![note("x"), note("y")]);
    let ack = push(&server, &alice.token, &broken).await;
    assert_eq!(
        ack.rejected.iter().map(|p| p.code.as_str()).collect::<Vec<_>>(),
        ["broken_chain", "after_rejected"]
    );

    // Bob cannot extend Alice's log, even signing with his own key.
    let ack = push(&server, &bob.token, &foreign).await;
    assert_eq!(ack.rejected[0].code, "foreign_log");
    assert!(ack.checkpoints.is_empty());

    // A different event at a seq the server holds is a conflict (forked log).
    let fork = chain(&alice.key, vec![note("other")]);
    let mut fork0 = fork[0].clone();
    fork0.body.log_id = events[0].body.log_id;
    let fork0 = fork0.body.sign(&alice.key);
    let ack = push(&server, &alice.token, &[fork0]).await;
    assert_eq!(ack.rejected[0].code, "conflict");

    // An event id already used in another log is refused, and so is what follows it.
    let other = chain(&alice.key, vec![note("o1"), note("o2")]);
    let mut reuse = other[0].body.clone();
    reuse.id = events[0].body.id;
    let reused = reuse.sign(&alice.key);
    let follow = chain_in(&alice.key, other[0].body.log_id, 2, reused.hash(), vec![note("o2")]);
    let ack = push(&server, &alice.token, &[reused, follow[0].clone()]).await;
    assert_eq!(
        ack.rejected.iter().map(|p| p.code.as_str()).collect::<Vec<_>>(),
        ["duplicate_id", "after_rejected"]
    );
    assert!(ack.stored.is_empty() && ack.checkpoints.is_empty());

    assert_eq!(server.counts().await.events, 1);
    // The genuine events all go in afterwards.
    let ack = push(&server, &alice.token, &events).await;
    assert_eq!(ack.stored.len(), 6);
    assert!(ack.rejected.is_empty() && ack.retryable.is_empty());
    assert_eq!(server.counts().await.events, 6);

    // Malformed body: a clear 400.
    let r = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(&alice.token)
        .body("{\"events\": [{\"nope\": 1}]}")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "bad_request");
}

both_backends!(bodies_and_parameters_that_do_not_parse_get_the_api_error_body);
/// A body that is not JSON, not sent as JSON or not of the operation's shape, and a query
/// parameter that does not parse, are 400s with the API's JSON error body (found by
/// schemathesis: they were plain-text 415/422/400 answers the document did not describe).
async fn bodies_and_parameters_that_do_not_parse_get_the_api_error_body(backend: Backend) {
    let server = TestServer::start(backend).await;
    server.seed().await;
    let client = reqwest::Client::new();
    let admin = |r: reqwest::RequestBuilder| r.bearer_auth(&server.admin_token);
    let answers = [
        (
            "POST",
            "/v1/admin/sites",
            admin(client.post(server.url("/v1/admin/sites")).body("\u{0}"))
                .header("content-type", "application/json"),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/admin/sites",
            admin(client.post(server.url("/v1/admin/sites")).body("[]")),
            "invalid_body",
        ),
        (
            "POST",
            "/v1/admin/sites",
            admin(client.post(server.url("/v1/admin/sites")).json(&serde_json::json!([{"id": 7}]))),
            "invalid_body",
        ),
        (
            "GET",
            "/v1/reports/not-at-approved-version",
            admin(client.get(server.url("/v1/reports/not-at-approved-version?limit=-3"))),
            "invalid_query",
        ),
    ];
    // Without a token, whatever the body: 401.
    let r = client
        .post(server.url("/v1/admin/sites"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for (method, path, request, code) in answers {
        let r = request.send().await.unwrap();
        let status = r.status();
        let ct = r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(ct.starts_with("application/json"), "{method} {path}: {ct}");
        assert_eq!(body["code"], code, "{method} {path}: {body}");
        crate::common::check_response(method, path, status.as_u16(), &body);
    }
    // A path the API does not have (here a known one with its id segment left out): a 404 with
    // the API's JSON error body too.
    for path in ["/v1/admin/sites/audit-export", "/v1/no-such-thing"] {
        let r = admin(client.get(server.url(path))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let ct = r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{path}: {ct}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "not_found", "{path}: {body}");
        assert!(body["message"].as_str().unwrap().contains(path), "{path}: {body}");
    }
}

both_backends!(authorization_is_enforced);
async fn authorization_is_enforced(backend: Backend) {
    use reqwest::Method;
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    server.assign("alice", "s1").await;

    assert_eq!(status(&server, None, Method::GET, "/v1/pull").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&server, Some("fpt_forged"), Method::GET, "/v1/pull").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status(&server, None, Method::GET, "/v1/health").await, StatusCode::OK);
    // Admin operations need an admin token.
    for (m, p) in [
        (Method::POST, "/v1/admin/sites"),
        (Method::POST, "/v1/admin/devices"),
        (Method::POST, "/v1/admin/work-orders"),
        (Method::POST, "/v1/admin/technicians/alice/tokens"),
        (Method::PUT, "/v1/admin/assignments/alice/s2"),
        (Method::DELETE, "/v1/admin/assignments/alice/s1"),
        (Method::PUT, "/v1/admin/trust-store"),
        (Method::PUT, "/v1/admin/catalog-listing"),
    ] {
        assert_eq!(
            status(&server, Some(&alice.token), m.clone(), p).await,
            StatusCode::FORBIDDEN,
            "{p}"
        );
        assert_eq!(status(&server, None, m, p).await, StatusCode::UNAUTHORIZED, "{p}");
    }
    // Pull and push are for technicians.
    assert_eq!(
        status(&server, Some(&server.admin_token), Method::GET, "/v1/pull").await,
        StatusCode::FORBIDDEN
    );

    // Only assigned sites are visible.
    let pull: PullResponse = get(&server, &alice.token, "/v1/pull").await;
    assert_eq!(pull.sites.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s1"]);
    assert_eq!(pull.devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["d1", "d2", "d3"]);
    assert_eq!(pull.work_orders.len(), 1);
    assert_eq!(pull.server_key, server.server_key);
    assert_eq!(
        status(&server, Some(&alice.token), Method::GET, "/v1/devices/d9/history").await,
        StatusCode::NOT_FOUND,
        "a device at another site answers exactly like one that does not exist"
    );
    assert_eq!(
        status(&server, Some(&alice.token), Method::GET, "/v1/devices/zz/history").await,
        StatusCode::NOT_FOUND
    );

    // Revoking the assignment hides the site at the next pull.
    server
        .admin_json(Method::DELETE, "/v1/admin/assignments/alice/s1", serde_json::json!(null))
        .await;
    let pull: PullResponse = get(&server, &alice.token, "/v1/pull").await;
    assert!(pull.sites.is_empty() && pull.devices.is_empty() && pull.work_orders.is_empty());

    // Keys must be real ed25519 keys.
    let r = reqwest::Client::new()
        .post(server.url("/v1/admin/technicians"))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({"id": "mallory", "name": "M", "public_key": "abcd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // A technician that exists already: a conflict, not a bad request.
    let again = serde_json::json!({
        "id": "alice",
        "name": "Alice again",
        "public_key": hex::encode(alice.key.verifying_key().as_bytes()),
    });
    let r = reqwest::Client::new()
        .post(server.url("/v1/admin/technicians"))
        .bearer_auth(&server.admin_token)
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: serde_json::Value = r.json().await.unwrap();
    common::check_response("POST", "/v1/admin/technicians", 409, &body);
    assert_eq!(body["code"], "already_exists", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_names_every_route() {
    let server = TestServer::start(Backend::Sqlite).await;
    let doc: serde_json::Value =
        reqwest::get(server.url("/v1/openapi.json")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // The router is built from `api::routes`: the document names exactly its operations.
    let mut routed: Vec<(String, String)> =
        fieldpatch_server::api::routes::<fieldpatch_server::SqliteStore>()
            .into_iter()
            .map(|(method, path, _)| (path.to_string(), method.as_str().to_ascii_lowercase()))
            .collect();
    routed.sort();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(
                ["get", "put", "post", "delete", "patch"].contains(&method.as_str()),
                "{path}: {method} is not an HTTP method"
            );
            assert!(op["responses"].is_object(), "{method} {path} documents no responses");
            documented.push((path.clone(), method.clone()));
        }
    }
    documented.sort();
    assert_eq!(routed, documented, "routes (left) and the OpenAPI document (right) disagree");
    // And the running server answers each documented operation (no 405, no unrouted 404), and
    // refuses a method the document does not name.
    let client = reqwest::Client::new();
    for (path, method) in &documented {
        let url = server.url(&path.replace(['{', '}'], ""));
        let r = client
            .request(method.to_ascii_uppercase().parse().unwrap(), &url)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}");
        if status == 404 {
            assert!(body.contains("\"code\""), "{method} {path} is not routed");
        }
        // Every answer is one the document describes, with a body its schema allows.
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) {
            common::check_response(
                method,
                &url[url.find("/v1").unwrap()..],
                status.as_u16(),
                &json,
            );
        }
    }
    let r = client.delete(server.url("/v1/push")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = r.split('"').next().unwrap();
        assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
    }
}

both_backends!(device_credentials_are_encrypted_at_rest_and_sealed_to_the_assigned_technician);
async fn device_credentials_are_encrypted_at_rest_and_sealed_to_the_assigned_technician(
    backend: Backend,
) {
    use reqwest::Method;
    let server = TestServer::start(backend).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    let bob = server.technician("bob").await;
    server.assign("alice", "s1").await;
    server.assign("bob", "s2").await;
    let secret = "s3cret-pa55-for-d1";
    server
        .admin_json(
            Method::PUT,
            "/v1/admin/devices/d1/credentials/password",
            serde_json::json!({"secret": secret}),
        )
        .await;
    server
        .admin_json(
            Method::PUT,
            "/v1/admin/devices/d9/credentials/password",
            serde_json::json!({"secret": "other"}),
        )
        .await;
    // Only admins set credentials; unknown devices are refused.
    let r = reqwest::Client::new()
        .put(server.url("/v1/admin/devices/d1/credentials/password"))
        .bearer_auth(&alice.token)
        .json(&serde_json::json!({"secret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = reqwest::Client::new()
        .put(server.url("/v1/admin/devices/nope/credentials/password"))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({"secret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = reqwest::Client::new()
        .put(server.url("/v1/admin/devices/d1/credentials/ssh-key"))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({"secret": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // At rest: the database holds no plaintext.
    let rows = match &server.app {
        common::AnyStore::Sqlite(a) => a.store.credentials_for("alice").await.unwrap(),
        common::AnyStore::Postgres(a) => a.store.credentials_for("alice").await.unwrap(),
    };
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].ciphertext.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Alice gets d1's credential sealed to her key; Bob cannot open it; Bob gets only d9's.
    let pull: PullResponse = get(&server, &alice.token, "/v1/pull").await;
    assert_eq!(pull.credentials.len(), 1);
    let sealed = &pull.credentials[0];
    assert_eq!((sealed.device_id.as_str(), sealed.kind.as_str()), ("d1", "password"));
    assert!(!serde_json::to_string(&pull).unwrap().contains(secret));
    assert_eq!(sealed.open(&alice.key, "alice").unwrap().as_slice(), secret.as_bytes());
    assert!(sealed.open(&bob.key, "bob").is_err());
    let pull: PullResponse = get(&server, &bob.token, "/v1/pull").await;
    assert_eq!(pull.credentials.iter().map(|c| c.device_id.as_str()).collect::<Vec<_>>(), ["d9"]);
    assert_eq!(pull.credentials[0].open(&bob.key, "bob").unwrap().as_slice(), b"other");

    // Revoking the assignment stops delivery.
    server
        .admin_json(Method::DELETE, "/v1/admin/assignments/alice/s1", serde_json::json!(null))
        .await;
    let pull: PullResponse = get(&server, &alice.token, "/v1/pull").await;
    assert!(pull.credentials.is_empty());
}

/// Check `value` against the subset of JSON Schema the document uses: `$ref`, object
/// `properties`/`required`/`additionalProperties`, array `items`, and `type`.
fn conforms(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
) {
    let schema = match schema.get("$ref").and_then(|r| r.as_str()) {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    let types: Vec<&str> = match &schema["type"] {
        serde_json::Value::String(t) => vec![t.as_str()],
        serde_json::Value::Array(ts) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ => vec![],
    };
    let actual = match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => "integer",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    };
    if !types.is_empty() {
        assert!(types.contains(&actual), "{at}: documented as {types:?}, got {actual}");
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for req in schema["required"].as_array().into_iter().flatten() {
            assert!(obj.contains_key(req.as_str().unwrap()), "{at}: required {req} missing");
        }
        for (k, v) in obj {
            match props.get(k) {
                Some(s) => conforms(doc, s, v, &format!("{at}.{k}")),
                None => assert!(
                    schema["additionalProperties"] == true,
                    "{at}: property {k:?} is not documented"
                ),
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, v) in arr.iter().enumerate() {
            conforms(doc, items, v, &format!("{at}[{i}]"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_match_the_openapi_schemas() {
    use reqwest::Method;
    let server = TestServer::start(Backend::Sqlite).await;
    server.seed().await;
    let alice = server.technician("alice").await;
    server.assign("alice", "s1").await;
    server
        .admin_json(
            Method::PUT,
            "/v1/admin/devices/d1/credentials/password",
            serde_json::json!({"secret": "x"}),
        )
        .await;
    let docs = fieldpatch_testkit::trust::TrustDocs::new();
    let trust = serde_json::to_value(docs.store(1, true, None, &[])).unwrap();
    server.admin_json(Method::PUT, "/v1/admin/trust-store", trust).await;
    let expires = chrono::Utc::now() + chrono::Duration::days(7);
    let listing = serde_json::to_value(docs.listing(1, 1, expires, vec![])).unwrap();
    server.admin_json(Method::PUT, "/v1/admin/catalog-listing", listing).await;
    let doc: serde_json::Value =
        reqwest::get(server.url("/v1/openapi.json")).await.unwrap().json().await.unwrap();
    let schema = |path: &str, method: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let base = server.base.clone();
    let raw = |token: String, path: &'static str| {
        let url = format!("{base}{path}");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };

    let events = chain(
        &alice.key,
        vec![
            (
                Some("d1"),
                EventKind::Confirmed {
                    version: Some("1.4.0".into()),
                    image_sha256: "aa".repeat(32),
                },
            ),
            (Some("d2"), EventKind::DeviceNotPatched { reason: "locked".into() }),
        ],
    );
    let mut batch = events.clone();
    batch.push(
        chain_in(&alice.key, events[0].body.log_id, 5, "00".repeat(32), vec![note("late")])
            .remove(0),
    );
    let ack: serde_json::Value = reqwest::Client::new()
        .post(server.url("/v1/push"))
        .bearer_auth(&alice.token)
        .json(&PushRequest { events: batch })
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ack["retryable"].as_array().unwrap().len(), 1);
    conforms(&doc, &schema("/v1/push", "post", "200"), &ack, "PushAck");
    for e in &events {
        conforms(
            &doc,
            &doc["components"]["schemas"]["Event"],
            &serde_json::to_value(e).unwrap(),
            "Event",
        );
    }

    let pull = raw(alice.token.clone(), "/v1/pull").await;
    assert_eq!(pull["credentials"].as_array().unwrap().len(), 1);
    conforms(&doc, &schema("/v1/pull", "get", "200"), &pull, "PullResponse");
    let admin = server.admin_token.clone();
    for path in [
        "/v1/reports/not-at-approved-version",
        "/v1/reports/planned-not-patched",
        "/v1/devices/d1/history",
    ] {
        let v = raw(admin.clone(), path).await;
        assert!(!v.as_array().unwrap().is_empty(), "{path}");
        conforms(&doc, &schema(path.replace("d1", "{id}").as_str(), "get", "200"), &v, path);
    }
    let health = raw(admin.clone(), "/v1/health").await;
    conforms(&doc, &schema("/v1/health", "get", "200"), &health, "health");
    let key = raw(admin.clone(), "/v1/server-key").await;
    conforms(&doc, &schema("/v1/server-key", "get", "200"), &key, "server-key");
    let err = raw("fpt_nope".into(), "/v1/pull").await;
    conforms(&doc, &schema("/v1/pull", "get", "401"), &err, "Error");
}

both_backends!(concurrent_pushes_store_each_event_once);
async fn concurrent_pushes_store_each_event_once(backend: Backend) {
    let server = std::sync::Arc::new(TestServer::start(backend).await);
    server.seed().await;
    let alice = std::sync::Arc::new(server.technician("alice").await);
    let bob = std::sync::Arc::new(server.technician("bob").await);
    // Four logs; each batch is pushed by two tasks at once, in order, per log.
    let mut tasks = Vec::new();
    let mut total = 0;
    for (t, n) in [(&alice, 120), (&alice, 90), (&bob, 100), (&bob, 80)] {
        let events = chain(&t.key, (0..n).map(|i| note(&format!("c{i}"))));
        total += events.len();
        for _twin in 0..2 {
            let (server, t, events) = (server.clone(), (*t).clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                for batch in events.chunks(25) {
                    let ack = push(&server, &t.token, batch).await;
                    assert!(ack.rejected.is_empty() && ack.retryable.is_empty(), "{ack:?}");
                    assert_eq!(ack.stored.len(), batch.len());
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        server.counts().await,
        fieldpatch_server::store::Counts { events: total as u64, checkpoints: 4 }
    );
}

/// The request schemas state what a schema can: the shape of signed documents, key and hash
/// formats, the event kinds; what they cannot (signatures, thresholds, records that must exist)
/// the server answers with a documented 4xx. Valid documents the tools make pass them.
#[test]
fn request_schemas_state_the_rules_a_schema_can() {
    use fieldpatch_testkit::trust::{TrustDocs, listed, listed_for};
    let docs = TrustDocs::new();
    let store = serde_json::to_value(docs.store(1, true, None, &[])).unwrap();
    common::check_request("PUT", "/v1/admin/trust-store", &store);
    let soon = chrono::Utc::now() + chrono::Duration::days(7);
    let listing = docs.listing(
        1,
        1,
        soon,
        vec![listed("everyone", b"a"), listed_for("north", b"b", &["s1", "s2"])],
    );
    let listing = serde_json::to_value(&listing).unwrap();
    common::check_request("PUT", "/v1/admin/catalog-listing", &listing);
    let refused = |path: &str, body: serde_json::Value| {
        let problems = common::request_problems("PUT", path, &body);
        assert!(!problems.is_empty(), "{path} allows {body}");
    };
    for (path, doc) in [("/v1/admin/trust-store", &store), ("/v1/admin/catalog-listing", &listing)]
    {
        refused(path, serde_json::json!({}));
        let mut extra = doc.clone();
        extra["extra"] = true.into();
        refused(path, extra);
        let mut short = doc.clone();
        short["signatures"][0]["signature"] = "abcd".into();
        refused(path, short);
    }
    let mut twice = listing.clone();
    twice["listing"]["bundles"][1]["sites"] = serde_json::json!(["s1", "s1"]);
    refused("/v1/admin/catalog-listing", twice);
    let mut role = store.clone();
    role["store"]["keys"][0]["roles"] = serde_json::json!(["owner"]);
    refused("/v1/admin/trust-store", role);

    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let tech =
        |public_key: String| serde_json::json!({"id": "t", "name": "T", "public_key": public_key});
    let public = hex::encode(key.verifying_key().as_bytes());
    assert!(common::request_problems("POST", "/v1/admin/technicians", &tech(public)).is_empty());
    assert!(
        !common::request_problems("POST", "/v1/admin/technicians", &tech("xyz".into())).is_empty()
    );

    // Event kinds: the document lists exactly the kinds the parser knows.
    let event = common::component("Event");
    let kinds = &common::document()["components"]["schemas"]["Event"]["properties"]["kind"]["enum"];
    assert_eq!(kinds, &serde_json::json!(fieldpatch_proto::event::KIND_TAGS));
    let mut e = serde_json::to_value(&chain(&key, [note("n")])[0]).unwrap();
    assert!(common::schema_problems(&event, &e).is_empty());
    e["kind"] = "no_such_kind".into();
    assert!(!common::schema_problems(&event, &e).is_empty());
    // Each kind's fields: an event of every kind, as the laptop makes it, passes; the schema of
    // its kind names exactly the fields it carries and requires those that are not optional;
    // without one of those, or with a field of the wrong type, it does not pass.
    let per_kind =
        common::document()["components"]["schemas"]["Event"]["oneOf"].as_array().unwrap();
    let events = chain(&key, every_kind().into_iter().map(|k| (Some("dev-1"), k)));
    assert_eq!(
        events.iter().map(|e| e.body.kind.tag()).collect::<Vec<_>>(),
        fieldpatch_proto::event::KIND_TAGS,
        "one event of every kind, in the parser's order"
    );
    for (e, schema) in events.iter().zip(per_kind) {
        let tag = e.body.kind.tag();
        assert_eq!(schema["title"], tag);
        let value = serde_json::to_value(e).unwrap();
        let problems = common::schema_problems(&event, &value);
        assert!(problems.is_empty(), "{tag}: {problems:?}");
        let fields: std::collections::BTreeSet<String> = serde_json::to_value(&e.body.kind)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let named: std::collections::BTreeSet<String> =
            schema["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(fields, named, "{tag}: the schema names other fields than the event carries");
        for required in schema["required"].as_array().unwrap() {
            let required = required.as_str().unwrap();
            if required == "kind" {
                continue;
            }
            let mut without = value.clone();
            without.as_object_mut().unwrap().remove(required);
            assert!(
                !common::schema_problems(&event, &without).is_empty(),
                "{tag} without {required} passes"
            );
            assert!(
                serde_json::from_value::<Event>(without).is_err(),
                "{tag}: {required} is required by the schema but not by the parser"
            );
            let mut wrong = value.clone();
            wrong[required] = serde_json::json!([]);
            assert!(
                !common::schema_problems(&event, &wrong).is_empty(),
                "{tag}: {required} as a list"
            );
        }
        // What the schema leaves optional, the parser takes missing.
        for (name, _) in schema["properties"].as_object().unwrap() {
            if schema["required"].as_array().unwrap().iter().any(|r| r == name) {
                continue;
            }
            let mut without = value.clone();
            without.as_object_mut().unwrap().remove(name);
            assert!(common::schema_problems(&event, &without).is_empty(), "{tag} without {name}");
            assert!(
                serde_json::from_value::<Event>(without).is_ok(),
                "{tag}: the schema leaves {name} optional, the parser does not"
            );
        }
    }

    // The audit export's bounds: a date or an RFC 3339 time.
    let param = |name: &str| {
        common::document()["paths"]["/v1/admin/sites/{id}/audit-export"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["schema"]
            .clone()
    };
    for ok in ["2026-12-01", "2026-12-01T10:00:00Z"] {
        assert!(common::schema_problems(&param("from"), &ok.into()).is_empty(), "{ok}");
    }
    for bad in ["", "yesterday", "2026-12-01T10:00"] {
        assert!(!common::schema_problems(&param("to"), &bad.into()).is_empty(), "{bad:?}");
    }
}

/// One event kind of every kind the parser knows, in its order, every optional field given.
fn every_kind() -> Vec<EventKind> {
    use fieldpatch_proto::event::LogHeadRef;
    use fieldpatch_proto::model::{DeviceIdentity, DeviceMode};
    let hash = "ab".repeat(32);
    let text = |t: &str| t.to_string();
    vec![
        EventKind::LogStarted {
            previous: Some(LogHeadRef {
                log_id: uuid::Uuid::from_u128(5),
                seq: 9,
                hash: hash.clone(),
            }),
            why: text("continues the laptop's earlier log"),
        },
        EventKind::VisitOpened { site: text("north"), work_order: Some(text("wo-1")) },
        EventKind::VisitClosed { patched: 3, not_patched: 1 },
        EventKind::DeviceDiscovered {
            transport: text("udp"),
            address: text("10.0.0.2:1337"),
            via: Some(text("mdns")),
            matched_by: Some(text("serial number")),
        },
        EventKind::DeviceMissing { searched: text("serial, usb, lan") },
        EventKind::DeviceIdentified {
            identity: DeviceIdentity {
                vendor: Some(text("Lab")),
                model: Some(text("sensor")),
                hardware_revision: Some(text("1.0")),
                serial_number: Some(text("s-1")),
                firmware_version: Some("1.0.0".parse().unwrap()),
                image_hash: Some(hash.clone()),
                mode: Some(DeviceMode::Application),
            },
        },
        EventKind::DeviceNotPatched { reason: text("not found") },
        EventKind::BundleVerified {
            bundle_id: text("b"),
            bundle_version: text("2.0.0"),
            rule: text("threshold"),
        },
        EventKind::BundleRefused { bundle_id: text("b"), reason: text("expired") },
        EventKind::UnverifiedImageAllowed { image_sha256: hash.clone(), reason: text("asked") },
        EventKind::FlashStarted {
            bundle_id: Some(text("b")),
            from_version: Some(text("1.0.0")),
            to_version: Some(text("2.0.0")),
            image_sha256: hash.clone(),
            bytes: 8192,
        },
        EventKind::ProgressCheckpoint { bytes_done: 4096, bytes_total: 8192 },
        EventKind::ImageUploaded {
            image_sha256: hash.clone(),
            device_reported_hash: Some(hash.clone()),
        },
        EventKind::TestBootRequested { image_sha256: hash.clone() },
        EventKind::HealthCheck { passed: true, detail: text("answers") },
        EventKind::Confirmed { version: Some(text("2.0.0")), image_sha256: hash.clone() },
        EventKind::RolledBack { reason: text("health check") },
        EventKind::Failed { stage: text("upload"), reason: text("link lost") },
        EventKind::Note { text: text("n") },
        EventKind::DeviceCommand { command: text("reset"), image_sha256: Some(hash) },
        EventKind::DeviceCommandResult { command: text("reset"), ok: true, detail: text("done") },
    ]
}
