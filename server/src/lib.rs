//! # fieldpatch-server
//!
//! The central inventory and the sync API that field laptops push visit logs to and pull work
//! orders, the patch catalog and the trust store from. Versioned under `/v1`.

use axum::{Json, Router, routing::get};
use serde::Serialize;
use std::net::SocketAddr;

/// Server version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source} (is another server using the port? pick another with --listen)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server stopped with an I/O error: {0}")]
    Serve(std::io::Error),
}

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    api: &'static str,
}

async fn health() -> Json<Health> {
    Json(Health { status: "ok", version: VERSION, api: "v1" })
}

/// The HTTP API.
pub fn router() -> Router {
    Router::new().route("/v1/health", get(health))
}

/// A bound server, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
}

impl Bound {
    /// Bind the listener (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> Result<Self, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound TCP listener has a local address")
    }

    /// Serve until the process ends.
    pub async fn serve(self) -> Result<(), ServerError> {
        axum::serve(self.listener, router()).await.map_err(ServerError::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_answers_on_loopback() {
        let bound = Bound::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = bound.local_addr();
        tokio::spawn(bound.serve());
        let body: serde_json::Value = reqwest::get(format!("http://{addr}/v1/health"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], VERSION);
    }
}
