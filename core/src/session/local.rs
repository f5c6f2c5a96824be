//! Sessions backed by the local store: events go to the signed visit log, state to the store.

use super::{SessionError, SessionState, SessionStore};
use crate::flash::{EventSink, SinkError};
use crate::store::Store;
use crate::visitlog::{EventKind, NewEvent, VisitLog};
use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

/// Kind under which batch sessions are saved in the store's `session_state` table.
pub const SESSION_KIND: &str = "batch_session";

/// Appends session events to the technician's signed visit log, within a visit.
#[derive(Debug, Clone)]
pub struct LogSink {
    pub log: Arc<VisitLog>,
    pub visit: Option<Uuid>,
}

#[async_trait]
impl EventSink for LogSink {
    async fn record(&self, device: &str, kind: EventKind) -> Result<(), SinkError> {
        let mut new = NewEvent::new(kind).device(device);
        if let Some(v) = self.visit {
            new = new.visit(v);
        }
        self.log.append(new).await.map(|_| ()).map_err(|e| SinkError(e.to_string()))
    }
}

/// Saves session state in the local store after every change.
#[derive(Debug, Clone)]
pub struct StoreSessions(pub Store);

#[async_trait]
impl SessionStore for StoreSessions {
    async fn save(&self, state: &SessionState) -> Result<(), SessionError> {
        let json = serde_json::to_value(state).map_err(|e| SessionError::Store(e.to_string()))?;
        self.0
            .put_session_state(&state.id.to_string(), SESSION_KIND, &json)
            .await
            .map_err(|e| SessionError::Store(e.to_string()))
    }
}

impl StoreSessions {
    /// A saved session by id.
    pub async fn load(&self, id: &str) -> Result<Option<SessionState>, SessionError> {
        let Some(saved) =
            self.0.session_state(id).await.map_err(|e| SessionError::Store(e.to_string()))?
        else {
            return Ok(None);
        };
        serde_json::from_value(saved.state)
            .map(Some)
            .map_err(|e| SessionError::Store(format!("saved session {id} is unreadable: {e}")))
    }

    /// Saved sessions, most recently updated first (unreadable ones are passed over).
    async fn saved(&self) -> Result<Vec<SessionState>, SessionError> {
        let all = self
            .0
            .session_states(Some(SESSION_KIND))
            .await
            .map_err(|e| SessionError::Store(e.to_string()))?;
        Ok(all.into_iter().filter_map(|saved| serde_json::from_value(saved.state).ok()).collect())
    }

    /// The most recently saved session, if any.
    pub async fn latest(&self) -> Result<Option<SessionState>, SessionError> {
        Ok(self.saved().await?.into_iter().next())
    }

    /// The most recently saved session that has not finished, if any.
    pub async fn latest_unfinished(&self) -> Result<Option<SessionState>, SessionError> {
        Ok(self.saved().await?.into_iter().find(|s| !matches!(s.phase, super::Phase::Finished)))
    }
}
