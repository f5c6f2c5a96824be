//! Typed access to the inventory, catalog, session-state and credential-name tables.

use super::{Store, StoreError};
use crate::model::DeviceIdentity;
use serde::{Deserialize, Serialize};
use sqlx::Row;

/// A site from the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRecord {
    pub id: String,
    pub name: String,
    pub address: Option<String>,
}

/// A device from the inventory (what the server believes is installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryDevice {
    pub id: String,
    pub site_id: Option<String>,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub hardware_revision: Option<String>,
    pub serial_number: Option<String>,
    pub firmware_version: Option<String>,
}

/// The outcome of verifying a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BundleVerdict {
    Verified,
    Refused,
    Unverified,
}

impl BundleVerdict {
    fn as_str(self) -> &'static str {
        match self {
            BundleVerdict::Verified => "verified",
            BundleVerdict::Refused => "refused",
            BundleVerdict::Unverified => "unverified",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "verified" => Ok(BundleVerdict::Verified),
            "refused" => Ok(BundleVerdict::Refused),
            "unverified" => Ok(BundleVerdict::Unverified),
            other => {
                Err(StoreError::Corrupt { what: "bundle verdict".into(), detail: other.into() })
            }
        }
    }
}

/// A catalog entry: a bundle's manifest and the verdict of its verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleRecord {
    pub bundle_id: String,
    pub version: String,
    pub manifest: serde_json::Value,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
    pub verdict: BundleVerdict,
    /// Why (the rule that passed or the reason for refusal).
    pub verdict_detail: String,
}

/// A work order: which devices of a site to visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrderRecord {
    pub id: String,
    pub site_id: String,
    pub title: String,
    pub status: String,
    pub device_ids: Vec<String>,
    pub detail: serde_json::Value,
}

/// Saved state of a long-running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedJob {
    pub session_id: String,
    pub kind: String,
    pub state: serde_json::Value,
    pub updated_at: String,
}

fn json_col(what: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt { what: what.into(), detail: e.to_string() })
}

impl Store {
    /// Insert or replace a site.
    pub async fn upsert_site(&self, site: &SiteRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sites (id, name, address, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, address = excluded.address,
             updated_at = excluded.updated_at",
        )
        .bind(&site.id)
        .bind(&site.name)
        .bind(&site.address)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// All sites, by id.
    pub async fn sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, address FROM sites ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|r| SiteRecord { id: r.get(0), name: r.get(1), address: r.get(2) })
            .collect())
    }

    /// Insert or replace a device.
    pub async fn upsert_device(&self, d: &InventoryDevice) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (id, site_id, vendor, model, hardware_revision, serial_number,
               firmware_version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET site_id = excluded.site_id, vendor = excluded.vendor,
               model = excluded.model, hardware_revision = excluded.hardware_revision,
               serial_number = excluded.serial_number, firmware_version = excluded.firmware_version,
               updated_at = excluded.updated_at",
        )
        .bind(&d.id)
        .bind(&d.site_id)
        .bind(&d.vendor)
        .bind(&d.model)
        .bind(&d.hardware_revision)
        .bind(&d.serial_number)
        .bind(&d.firmware_version)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Devices, optionally only those of one site, by id.
    pub async fn devices(&self, site_id: Option<&str>) -> Result<Vec<InventoryDevice>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, site_id, vendor, model, hardware_revision, serial_number, firmware_version
             FROM devices WHERE (?1 IS NULL OR site_id = ?1) ORDER BY id",
        )
        .bind(site_id)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| InventoryDevice {
                id: r.get(0),
                site_id: r.get(1),
                vendor: r.get(2),
                model: r.get(3),
                hardware_revision: r.get(4),
                serial_number: r.get(5),
                firmware_version: r.get(6),
            })
            .collect())
    }

    /// Record what a device reported about itself when identified.
    pub async fn record_identity(
        &self,
        device_id: Option<&str>,
        transport: &str,
        address: &str,
        identity: &DeviceIdentity,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(identity)
            .map_err(|e| StoreError::Invalid(format!("device identity: {e}")))?;
        sqlx::query(
            "INSERT INTO device_identities (device_id, transport, address, identity_json, observed_at)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(device_id)
        .bind(transport)
        .bind(address)
        .bind(json)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The latest identity a device reported, if any.
    pub async fn latest_identity(
        &self,
        device_id: &str,
    ) -> Result<Option<DeviceIdentity>, StoreError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT identity_json FROM device_identities WHERE device_id = ? ORDER BY id DESC LIMIT 1",
        )
        .bind(device_id)
        .fetch_optional(self.pool())
        .await?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt {
                what: "device identity".into(),
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Insert or replace a catalog entry.
    pub async fn put_bundle(&self, b: &BundleRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO bundles (bundle_id, version, manifest_json, sha256, verdict, verdict_detail,
               verified_at) VALUES (?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(bundle_id, version) DO UPDATE SET manifest_json = excluded.manifest_json,
               sha256 = excluded.sha256, verdict = excluded.verdict,
               verdict_detail = excluded.verdict_detail, verified_at = excluded.verified_at",
        )
        .bind(&b.bundle_id)
        .bind(&b.version)
        .bind(b.manifest.to_string())
        .bind(&b.sha256)
        .bind(b.verdict.as_str())
        .bind(&b.verdict_detail)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The whole catalog, by bundle id and version.
    pub async fn bundles(&self) -> Result<Vec<BundleRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT bundle_id, version, manifest_json, sha256, verdict, verdict_detail
             FROM bundles ORDER BY bundle_id, version",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BundleRecord {
                    bundle_id: r.get(0),
                    version: r.get(1),
                    manifest: json_col("bundle manifest", r.get::<&str, _>(2))?,
                    sha256: r.get(3),
                    verdict: BundleVerdict::parse(r.get::<&str, _>(4))?,
                    verdict_detail: r.get(5),
                })
            })
            .collect()
    }

    /// Insert or replace a work order and its device list (one transaction).
    pub async fn put_work_order(&self, w: &WorkOrderRecord) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO work_orders (id, site_id, title, status, detail_json, updated_at)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET site_id = excluded.site_id, title = excluded.title,
               status = excluded.status, detail_json = excluded.detail_json,
               updated_at = excluded.updated_at",
        )
        .bind(&w.id)
        .bind(&w.site_id)
        .bind(&w.title)
        .bind(&w.status)
        .bind(w.detail.to_string())
        .bind(self.now_text())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM work_order_devices WHERE work_order_id = ?")
            .bind(&w.id)
            .execute(&mut *tx)
            .await?;
        for d in &w.device_ids {
            sqlx::query("INSERT INTO work_order_devices (work_order_id, device_id) VALUES (?, ?)")
                .bind(&w.id)
                .bind(d)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// All work orders with their devices, by id.
    pub async fn work_orders(&self) -> Result<Vec<WorkOrderRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, site_id, title, status, detail_json FROM work_orders ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: String = r.get(0);
            let device_ids = sqlx::query_scalar(
                "SELECT device_id FROM work_order_devices WHERE work_order_id = ? ORDER BY device_id",
            )
            .bind(&id)
            .fetch_all(self.pool())
            .await?;
            out.push(WorkOrderRecord {
                id,
                site_id: r.get(1),
                title: r.get(2),
                status: r.get(3),
                device_ids,
                detail: json_col("work order detail", r.get::<&str, _>(4))?,
            });
        }
        Ok(out)
    }

    /// Save (insert or replace) the state of a long-running job.
    pub async fn put_session_state(
        &self,
        session_id: &str,
        kind: &str,
        state: &serde_json::Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO session_state (session_id, kind, state_json, updated_at) VALUES (?, ?, ?, ?)
             ON CONFLICT(session_id) DO UPDATE SET kind = excluded.kind,
               state_json = excluded.state_json, updated_at = excluded.updated_at",
        )
        .bind(session_id)
        .bind(kind)
        .bind(state.to_string())
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The saved state of a job, if any.
    pub async fn session_state(&self, session_id: &str) -> Result<Option<SavedJob>, StoreError> {
        let row = sqlx::query(
            "SELECT session_id, kind, state_json, updated_at FROM session_state WHERE session_id = ?",
        )
        .bind(session_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| session_from_row(&r)).transpose()
    }

    /// Saved jobs, optionally of one kind, most recently updated first.
    pub async fn session_states(&self, kind: Option<&str>) -> Result<Vec<SavedJob>, StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, kind, state_json, updated_at FROM session_state
             WHERE (?1 IS NULL OR kind = ?1) ORDER BY updated_at DESC, session_id",
        )
        .bind(kind)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Forget a job's saved state. Returns whether there was one.
    pub async fn delete_session_state(&self, session_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM session_state WHERE session_id = ?")
            .bind(session_id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Remember that a credential with this name exists in `backend` (never its value).
    pub(crate) async fn index_credential_name(
        &self,
        name: &str,
        backend: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credential_names (name, backend, updated_at) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET backend = excluded.backend, updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(backend)
        .bind(self.now_text())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub(crate) async fn unindex_credential_name(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM credential_names WHERE name = ?")
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// `(name, backend, updated_at)` of every indexed credential, by name.
    pub(crate) async fn credential_names(
        &self,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(sqlx::query_as("SELECT name, backend, updated_at FROM credential_names ORDER BY name")
            .fetch_all(self.pool())
            .await?)
    }
}

fn session_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SavedJob, StoreError> {
    Ok(SavedJob {
        session_id: r.get(0),
        kind: r.get(1),
        state: json_col("session state", r.get::<&str, _>(2))?,
        updated_at: r.get(3),
    })
}

impl Store {
    /// Replace the whole inventory copy (sites, devices, work orders and catalog entries) with
    /// these lists in one transaction, as a sync pull does. Rows not listed are removed, except
    /// that identity observations of a removed device are kept (detached from it): they are the
    /// technician's own records. Work-order devices not among `devices` are left out of the
    /// work order's device list.
    pub async fn replace_inventory(
        &self,
        sites: &[SiteRecord],
        devices: &[InventoryDevice],
        work_orders: &[WorkOrderRecord],
        bundles: &[BundleRecord],
    ) -> Result<(), StoreError> {
        let now = self.now_text();
        let mut tx = self.pool().begin().await?;
        sqlx::query("DELETE FROM work_order_devices").execute(&mut *tx).await?;
        sqlx::query("DELETE FROM work_orders").execute(&mut *tx).await?;
        let device_ids = serde_json::to_string(&devices.iter().map(|d| &d.id).collect::<Vec<_>>())
            .map_err(|e| StoreError::Invalid(format!("device ids: {e}")))?;
        let site_ids = serde_json::to_string(&sites.iter().map(|s| &s.id).collect::<Vec<_>>())
            .map_err(|e| StoreError::Invalid(format!("site ids: {e}")))?;
        sqlx::query(
            "UPDATE device_identities SET device_id = NULL
             WHERE device_id IS NOT NULL AND device_id NOT IN (SELECT value FROM json_each(?))",
        )
        .bind(&device_ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM devices WHERE id NOT IN (SELECT value FROM json_each(?))")
            .bind(&device_ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sites WHERE id NOT IN (SELECT value FROM json_each(?))")
            .bind(&site_ids)
            .execute(&mut *tx)
            .await?;
        for site in sites {
            sqlx::query(
                "INSERT INTO sites (id, name, address, updated_at) VALUES (?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET name = excluded.name, address = excluded.address,
                 updated_at = excluded.updated_at",
            )
            .bind(&site.id)
            .bind(&site.name)
            .bind(&site.address)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        let known_sites: std::collections::HashSet<&str> =
            sites.iter().map(|s| s.id.as_str()).collect();
        for d in devices {
            // A device of a site that is not listed keeps no dangling site reference.
            let site = d.site_id.as_deref().filter(|s| known_sites.contains(s));
            sqlx::query(
                "INSERT INTO devices (id, site_id, vendor, model, hardware_revision, serial_number,
                   firmware_version, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(id) DO UPDATE SET site_id = excluded.site_id, vendor = excluded.vendor,
                   model = excluded.model, hardware_revision = excluded.hardware_revision,
                   serial_number = excluded.serial_number,
                   firmware_version = excluded.firmware_version, updated_at = excluded.updated_at",
            )
            .bind(&d.id)
            .bind(site)
            .bind(&d.vendor)
            .bind(&d.model)
            .bind(&d.hardware_revision)
            .bind(&d.serial_number)
            .bind(&d.firmware_version)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        let known_devices: std::collections::HashSet<&str> =
            devices.iter().map(|d| d.id.as_str()).collect();
        for w in work_orders.iter().filter(|w| known_sites.contains(w.site_id.as_str())) {
            sqlx::query(
                "INSERT INTO work_orders (id, site_id, title, status, detail_json, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&w.id)
            .bind(&w.site_id)
            .bind(&w.title)
            .bind(&w.status)
            .bind(w.detail.to_string())
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            for d in w.device_ids.iter().filter(|d| known_devices.contains(d.as_str())) {
                sqlx::query(
                    "INSERT OR IGNORE INTO work_order_devices (work_order_id, device_id) VALUES (?, ?)",
                )
                .bind(&w.id)
                .bind(d)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query("DELETE FROM bundles").execute(&mut *tx).await?;
        for b in bundles {
            sqlx::query(
                "INSERT INTO bundles (bundle_id, version, manifest_json, sha256, verdict,
                   verdict_detail, verified_at) VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT(bundle_id, version) DO UPDATE SET manifest_json = excluded.manifest_json,
                   sha256 = excluded.sha256, verdict = excluded.verdict,
                   verdict_detail = excluded.verdict_detail, verified_at = excluded.verified_at",
            )
            .bind(&b.bundle_id)
            .bind(&b.version)
            .bind(b.manifest.to_string())
            .bind(&b.sha256)
            .bind(b.verdict.as_str())
            .bind(&b.verdict_detail)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
