//! PostgreSQL over TLS, as the database URL asks (`sslmode`). The local cluster scripts/setup
//! starts serves TLS with its own self-signed certificate (Debian's snakeoil), which no public root
//! vouches for: it is trusted only when named with `sslrootcert`.

use crate::common::PgDatabase;
use fieldpatch_server::{PgStore, Store, StoreError};

/// Whether this store's connection is encrypted, as the server sees it.
async fn encrypted(store: &PgStore) -> bool {
    let (ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(store.pool())
            .await
            .unwrap();
    ssl
}

/// The server's certificate file, asked of the server itself.
async fn server_certificate(db: &PgDatabase) -> std::path::PathBuf {
    let store = PgStore::connect(&db.url).await.unwrap();
    let (file,): (String,) =
        sqlx::query_as("SHOW ssl_cert_file").fetch_one(store.pool()).await.unwrap();
    let (data,): (String,) =
        sqlx::query_as("SHOW data_directory").fetch_one(store.pool()).await.unwrap();
    std::path::Path::new(&data).join(file)
}

#[tokio::test]
async fn without_an_sslmode_the_connection_stays_plain_as_before() {
    let db = PgDatabase::create().await;
    let store = PgStore::connect(&db.url).await.unwrap();
    assert!(!encrypted(&store).await, "no sslmode asked, but the connection is encrypted");
}

#[tokio::test]
async fn sslmode_require_encrypts_the_connection() {
    let db = PgDatabase::create().await;
    let store = PgStore::connect(&format!("{}?sslmode=require", db.url)).await.unwrap();
    store.migrate().await.unwrap();
    assert!(encrypted(&store).await, "sslmode=require but the connection is not encrypted");
}

#[tokio::test]
async fn the_server_certificate_is_verified_against_the_configured_root_only() {
    let db = PgDatabase::create().await;
    let cert = server_certificate(&db).await;
    // Not signed by a public root: refused.
    let refused = PgStore::connect(&format!("{}?sslmode=verify-ca", db.url)).await.unwrap_err();
    assert!(matches!(refused, StoreError::Db(_)), "{refused}");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // Named as the root: accepted, and encrypted.
    let url = format!("{}?sslmode=verify-ca&sslrootcert={}", db.url, cert.display());
    let store = PgStore::connect(&url).await.unwrap();
    assert!(encrypted(&store).await);
}
