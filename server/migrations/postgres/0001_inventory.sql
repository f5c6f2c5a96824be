-- Fieldpatch inventory schema (PostgreSQL dialect; keep in step with ../sqlite/0001_inventory.sql).
CREATE TABLE technicians (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_key TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE tokens (
    token_hash TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('technician', 'admin')),
    technician_id TEXT REFERENCES technicians(id) ON DELETE CASCADE,
    label TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    CHECK ((role = 'technician') = (technician_id IS NOT NULL))
);

CREATE TABLE sites (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT
);

CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES sites(id),
    vendor TEXT,
    model TEXT,
    hardware_revision TEXT,
    serial_number TEXT,
    approved_version TEXT,
    current_firmware TEXT,
    last_visit TIMESTAMPTZ,
    failures BIGINT NOT NULL DEFAULT 0,
    last_failure TEXT,
    not_patched_reason TEXT
);
CREATE INDEX devices_site ON devices(site_id);
CREATE INDEX devices_serial ON devices(serial_number);

CREATE TABLE assignments (
    technician_id TEXT NOT NULL REFERENCES technicians(id) ON DELETE CASCADE,
    site_id TEXT NOT NULL REFERENCES sites(id) ON DELETE CASCADE,
    PRIMARY KEY (technician_id, site_id)
);

CREATE TABLE work_orders (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL REFERENCES sites(id),
    title TEXT NOT NULL,
    planned_for TEXT
);

CREATE TABLE work_order_devices (
    work_order_id TEXT NOT NULL REFERENCES work_orders(id) ON DELETE CASCADE,
    device_id TEXT NOT NULL REFERENCES devices(id),
    PRIMARY KEY (work_order_id, device_id)
);

CREATE TABLE catalog_bundles (
    sha256 TEXT PRIMARY KEY,
    bundle_id TEXT NOT NULL,
    version TEXT NOT NULL,
    manifest TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    size BIGINT NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    UNIQUE (bundle_id, version)
);

CREATE TABLE trust_store (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    document TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE events (
    id TEXT PRIMARY KEY,
    log_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    technician_id TEXT NOT NULL REFERENCES technicians(id),
    device TEXT,
    kind TEXT NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    UNIQUE (log_id, seq)
);
CREATE INDEX events_device ON events(device, time);

CREATE TABLE checkpoints (
    log_id TEXT PRIMARY KEY,
    technician_id TEXT NOT NULL REFERENCES technicians(id),
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
