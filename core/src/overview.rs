//! Reads for a shell's home screen and visit log, over the [`Fieldpatch`] facade: what is left
//! to sync and when the last sync was, the visits (open and past) and the synced work orders,
//! how long the trust store, the catalog listing and the catalog's bundles stay usable (the same
//! expiry and offline-grace rules verification applies), one visit's events with its log's
//! verification, one sync with the remembered server and the token from the OS keyring, and
//! whether an inventory server answers.
//!
//! Nothing here writes, except what verification itself records (a clock found behind the latest
//! trusted time is noted in the visit log by [`Fieldpatch::verify_policy`]) and the sync.

use crate::Fieldpatch;
use crate::bundle::verify::{AcceptRule, trust_rule};
use crate::bundle::{TrustStore, listing};
use crate::catalog::Catalog;
use crate::fieldpatch::Error;
use crate::sync::{SyncConfig, SyncError, SyncReport};
use crate::visitlog::{LogVerification, VisitRecord};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

/// How many past visits the home screen lists.
pub const RECENT_VISITS: usize = 20;

/// What a home screen shows. See [`Fieldpatch::overview`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct Overview {
    /// Events in the local visit logs the inventory has not countersigned yet.
    #[ts(type = "number")]
    pub pending_events: u64,
    /// The server time of the last successful sync (RFC 3339), if any.
    pub last_sync: Option<String>,
    /// Visits, most recent first (at most [`RECENT_VISITS`]); open ones have no `closed_at`.
    pub visits: Vec<VisitSummary>,
    /// The work orders pulled from the inventory at the last sync.
    pub work_orders: Vec<WorkOrderSummary>,
    /// How long the trust store, the catalog listing and the catalog's bundles stay usable.
    pub validity: Vec<Validity>,
}

/// A visit as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct VisitSummary {
    pub visit_id: Uuid,
    pub log_id: Uuid,
    pub site: String,
    pub work_order: Option<String>,
    pub opened_at: String,
    /// `None` while the visit is open.
    pub closed_at: Option<String>,
}

impl From<VisitRecord> for VisitSummary {
    fn from(v: VisitRecord) -> Self {
        VisitSummary {
            visit_id: v.visit_id,
            log_id: v.log_id,
            site: v.site,
            work_order: v.work_order,
            opened_at: v.opened_at,
            closed_at: v.closed_at,
        }
    }
}

/// A work order from the inventory: which devices of a site to visit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct WorkOrderSummary {
    pub id: String,
    pub site_id: String,
    pub title: String,
    pub status: String,
    pub device_ids: Vec<String>,
}

/// Where something that expires stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
#[serde(rename_all = "snake_case")]
pub enum ValidityState {
    /// Within its validity period.
    Valid,
    /// Expired, still usable under the signed offline grace period.
    Grace,
    /// Not usable: expired beyond any grace, unreadable, or the clock cannot be trusted.
    Expired,
    /// It does not expire.
    NoExpiry,
    /// There is none yet (a sync brings it).
    Missing,
}

/// How long one thing (the trust store, the catalog listing, the catalog's bundles) stays usable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct Validity {
    /// `trust_store`, `catalog_listing` or `catalog_bundles`.
    pub what: String,
    pub state: ValidityState,
    /// The last moment it may be used (RFC 3339): the expiry, or the end of the grace period.
    pub usable_until: Option<String>,
    /// Seconds from the checked "now" to `usable_until` (negative once past).
    #[ts(type = "number | null")]
    pub remaining_secs: Option<i64>,
    /// What the technician reads (the rule, or why it is not usable and what to do).
    pub detail: String,
}

/// One visit's events and the verification of the log that holds them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct VisitTimeline {
    pub visit: VisitSummary,
    pub events: Vec<TimelineEvent>,
    /// The whole log's verification (signatures, sequence, hash links, stored columns).
    pub verification: LogVerification,
    /// Events of the log the inventory has countersigned (every seq up to this).
    #[ts(type = "number")]
    pub pushed_seq: u64,
}

/// One event of a timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, ts_rs::TS)]
pub struct TimelineEvent {
    #[ts(type = "number")]
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    /// The event's kind (`visit_opened`, `flash_started`, `rolled_back`, ...).
    pub kind: String,
    pub device: Option<String>,
    /// The kind's fields as compact JSON (what was signed, minus the envelope).
    pub detail: String,
    /// SHA-256 of the event (hex): what the next event links to.
    pub hash: String,
}

impl Fieldpatch {
    /// What a home screen shows: pending events, the last sync, the visits and work orders, and
    /// the validity of the trust store at `trust_path`, of the catalog listing beside the bundles
    /// in `catalog_dir`, and of `catalog`'s bundles (the first one to stop being usable).
    pub async fn overview(
        &self,
        trust_path: &Path,
        catalog_dir: &Path,
        catalog: Option<&Catalog>,
    ) -> Result<Overview, Error> {
        let store = self.store();
        let mut pending_events = 0u64;
        for log in store.visit_logs().await? {
            pending_events += log.head_seq.saturating_sub(log.sync.last_pushed_seq);
        }
        let last_sync = crate::clock::last_online(store).await?.map(|t| t.to_rfc3339());
        let visits =
            store.visits(false).await?.into_iter().take(RECENT_VISITS).map(Into::into).collect();
        let work_orders = store
            .work_orders()
            .await?
            .into_iter()
            .map(|w| WorkOrderSummary {
                id: w.id,
                site_id: w.site_id,
                title: w.title,
                status: w.status,
                device_ids: w.device_ids,
            })
            .collect();
        let validity = self.validity(trust_path, catalog_dir, catalog).await;
        Ok(Overview { pending_events, last_sync, visits, work_orders, validity })
    }

    async fn validity(
        &self,
        trust_path: &Path,
        catalog_dir: &Path,
        catalog: Option<&Catalog>,
    ) -> Vec<Validity> {
        let missing = |what: &str, detail: &str| Validity {
            what: what.into(),
            state: ValidityState::Missing,
            usable_until: None,
            remaining_secs: None,
            detail: detail.into(),
        };
        let expired = |what: &str, detail: String| Validity {
            what: what.into(),
            state: ValidityState::Expired,
            usable_until: None,
            remaining_secs: None,
            detail,
        };
        if !trust_path.exists() {
            return vec![missing(
                "trust_store",
                "no trust store yet: sync with the inventory to get one",
            )];
        }
        let trust = match TrustStore::load(trust_path) {
            Ok(t) => t,
            Err(e) => return vec![expired("trust_store", e.to_string())],
        };
        let policy = match self.verify_policy(&trust).await {
            Ok(p) => p,
            Err(e) => return vec![expired("trust_store", e.to_string())],
        };
        let now = policy.now;
        let ruled = |what: &str, rule: AcceptRule| Validity {
            what: what.into(),
            state: match rule {
                AcceptRule::Valid { .. } => ValidityState::Valid,
                AcceptRule::OfflineGrace { .. } => ValidityState::Grace,
            },
            usable_until: Some(rule.usable_until().to_rfc3339()),
            remaining_secs: Some((rule.usable_until() - now).num_seconds()),
            detail: rule.describe(),
        };
        let mut out = vec![match trust_rule(&trust, &policy) {
            Ok(Some(rule)) => ruled("trust_store", rule),
            Ok(None) => Validity {
                what: "trust_store".into(),
                state: ValidityState::NoExpiry,
                usable_until: None,
                remaining_secs: None,
                detail: format!("version {} does not expire", trust.version()),
            },
            Err(e) => expired("trust_store", e.to_string()),
        }];
        let listing_path = listing::listing_path(catalog_dir);
        if listing_path.exists() {
            let rule = listing::load(&listing_path)
                .and_then(|l| listing::listing_rule(&l, &trust, &policy));
            out.push(match rule {
                Ok(rule) => ruled("catalog_listing", rule),
                Err(e) => expired("catalog_listing", e.to_string()),
            });
        } else if trust.requires_listing() {
            out.push(missing(
                "catalog_listing",
                "the trust store requires a signed catalog listing and there is none: sync the catalog",
            ));
        }
        if let Some(first) = catalog.and_then(|c| c.bundles.iter().min_by_key(|b| b.usable_until)) {
            let until = first.usable_until;
            let m = first.bundle.manifest();
            out.push(Validity {
                what: "catalog_bundles".into(),
                state: if until >= now { ValidityState::Valid } else { ValidityState::Expired },
                usable_until: Some(until.to_rfc3339()),
                remaining_secs: Some((until - now).num_seconds()),
                detail: format!(
                    "the first bundle to stop being usable is {} version {}, at {}",
                    m.bundle_id,
                    m.bundle_version,
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            });
        }
        out
    }

    /// The events of visit `visit_id` (or of the newest visit), with its log's verification.
    pub async fn visit_timeline(&self, visit_id: Option<Uuid>) -> Result<VisitTimeline, Error> {
        let store = self.store();
        let visits = store.visits(false).await?;
        let visit = match visit_id {
            Some(id) => visits.into_iter().find(|v| v.visit_id == id),
            None => visits.into_iter().next(),
        }
        .ok_or_else(|| {
            Error::Invalid(match visit_id {
                Some(id) => format!("no visit {id} in the local store: pick one from the list"),
                None => "no visit yet: a session opens one".into(),
            })
        })?;
        let events = store
            .visit_events(visit.visit_id)
            .await?
            .into_iter()
            .filter(|e| e.body.log_id == visit.log_id)
            .map(|e| {
                let mut detail = serde_json::to_value(&e.body.kind).unwrap_or_default();
                if let Some(map) = detail.as_object_mut() {
                    map.remove("kind");
                }
                TimelineEvent {
                    seq: e.body.seq,
                    time: e.body.time.to_rfc3339(),
                    kind: e.body.kind.tag().into(),
                    device: e.body.device.clone(),
                    detail: detail.to_string(),
                    hash: e.hash(),
                }
            })
            .collect();
        let verification = store.verify_log(visit.log_id).await?;
        let pushed_seq = store.log_sync_state(visit.log_id).await?.last_pushed_seq;
        Ok(VisitTimeline { visit: visit.into(), events, verification, pushed_seq })
    }

    /// Sync once with the remembered inventory server, the token from the OS keyring and the
    /// pinned server key (what `fieldpatch sync` does).
    pub async fn sync_once(&self) -> Result<SyncReport, Error> {
        let (cfg, local) = self.sync_config().await?;
        Ok(crate::sync::sync(&cfg, &local, &|_| {}).await?)
    }

    /// Automatic sync with the remembered inventory server (the token from the OS keyring, the
    /// pinned server key): once turned on, it syncs whenever the server answers again.
    pub async fn auto_sync(&self) -> Result<crate::sync::AutoSync, Error> {
        let (cfg, local) = self.sync_config().await?;
        Ok(crate::sync::AutoSync::new(cfg, local))
    }

    async fn sync_config(&self) -> Result<(SyncConfig, crate::sync::StoreSync), Error> {
        let local = self.sync_local().await?;
        let local_err = |e| Error::Sync(SyncError::Local(Box::new(e)));
        let server = local.server().await.map_err(local_err)?.ok_or_else(|| {
            Error::Invalid("no inventory server yet: log in on the settings first".into())
        })?;
        let token = self.credentials().await?.sync_token().await?.ok_or_else(|| {
            Error::Invalid(
                "no sync token in the OS keyring: log in with the token from the inventory team"
                    .into(),
            )
        })?;
        let mut cfg = SyncConfig::new(server, token.expose().to_string());
        cfg.server_key = local.pinned_server_key().await.map_err(local_err)?;
        cfg.root_certificate_pem =
            local.server_ca().await.map_err(local_err)?.filter(|pem| !pem.is_empty());
        Ok((cfg, local))
    }
}

/// Whether the inventory server at `server` answers its health check within `timeout`; its
/// certificate is checked against the system's roots and `ca` (PEM), the private CA sync uses.
pub async fn reachable(server: &str, timeout: Duration, ca: Option<&[u8]>) -> bool {
    let mut builder = reqwest::Client::builder().timeout(timeout).tls_backend_rustls();
    if let Some(pem) = ca.filter(|p| !p.is_empty()) {
        let Ok(cert) = reqwest::Certificate::from_pem(pem) else { return false };
        builder = builder.tls_certs_merge([cert]);
    }
    let Ok(client) = builder.build() else {
        return false;
    };
    let url = format!("{}/v1/health", server.trim_end_matches('/'));
    client.get(url).send().await.is_ok_and(|r| r.status().is_success())
}
