-- Local store of a technician's laptop. Secrets are never stored here: the credential_names
-- table holds names only; values live in the OS keyring.

CREATE TABLE sites (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    address     TEXT,
    updated_at  TEXT NOT NULL
);

CREATE TABLE devices (
    id                 TEXT PRIMARY KEY NOT NULL,   -- inventory device id
    site_id            TEXT REFERENCES sites(id) ON DELETE SET NULL,
    vendor             TEXT,
    model              TEXT,
    hardware_revision  TEXT,
    serial_number      TEXT,
    firmware_version   TEXT,
    updated_at         TEXT NOT NULL
);
CREATE INDEX devices_site ON devices(site_id);
CREATE INDEX devices_serial ON devices(serial_number);

-- What a device reported about itself when identified on site (one row per observation).
CREATE TABLE device_identities (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id          TEXT REFERENCES devices(id) ON DELETE CASCADE,
    transport          TEXT NOT NULL,
    address            TEXT NOT NULL,
    identity_json      TEXT NOT NULL,
    observed_at        TEXT NOT NULL
);
CREATE INDEX device_identities_device ON device_identities(device_id);

-- The patch catalog: bundles and the verdict of their verification.
CREATE TABLE bundles (
    bundle_id      TEXT NOT NULL,
    version        TEXT NOT NULL,
    manifest_json  TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    verdict        TEXT NOT NULL CHECK (verdict IN ('verified', 'refused', 'unverified')),
    verdict_detail TEXT NOT NULL DEFAULT '',
    verified_at    TEXT NOT NULL,
    PRIMARY KEY (bundle_id, version)
);

CREATE TABLE work_orders (
    id          TEXT PRIMARY KEY NOT NULL,
    site_id     TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'open',
    detail_json TEXT NOT NULL DEFAULT '{}',
    updated_at  TEXT NOT NULL
);

CREATE TABLE work_order_devices (
    work_order_id  TEXT NOT NULL REFERENCES work_orders(id) ON DELETE CASCADE,
    device_id      TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    PRIMARY KEY (work_order_id, device_id)
);

-- One visit log per technician key on this laptop.
CREATE TABLE logs (
    id          TEXT PRIMARY KEY NOT NULL,
    signer      TEXT NOT NULL UNIQUE,            -- hex ed25519 public key
    created_at  TEXT NOT NULL
);

CREATE TABLE visits (
    id             TEXT PRIMARY KEY NOT NULL,
    log_id         TEXT NOT NULL REFERENCES logs(id),
    site           TEXT NOT NULL,
    work_order_id  TEXT,
    opened_at      TEXT NOT NULL,
    closed_at      TEXT
);

-- Append-only visit-log events. `body` holds the canonical JSON exactly as signed; the other
-- columns are an index over it and are cross-checked by verification.
CREATE TABLE events (
    id         TEXT PRIMARY KEY NOT NULL,
    log_id     TEXT NOT NULL REFERENCES logs(id),
    seq        INTEGER NOT NULL CHECK (seq >= 1),
    hash       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    visit_id   TEXT,
    device     TEXT,
    time       TEXT NOT NULL,
    body       TEXT NOT NULL,
    signature  TEXT NOT NULL,
    UNIQUE (log_id, seq)
);
CREATE INDEX events_visit ON events(visit_id);

-- Sync progress per log: what the server has accepted, and its opaque checkpoint.
CREATE TABLE sync_state (
    log_id             TEXT PRIMARY KEY NOT NULL REFERENCES logs(id),
    last_pushed_seq    INTEGER NOT NULL DEFAULT 0,
    server_checkpoint  TEXT,
    updated_at         TEXT NOT NULL
);

-- Resumable state of long-running jobs (batch sessions), as JSON.
CREATE TABLE session_state (
    session_id  TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    state_json  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Names of credentials kept in the OS keyring (keyrings cannot always enumerate). Never values.
CREATE TABLE credential_names (
    name        TEXT PRIMARY KEY NOT NULL,
    backend     TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- Small installation facts.
CREATE TABLE meta (
    key    TEXT PRIMARY KEY NOT NULL,
    value  TEXT NOT NULL
);
