// generated from the Rust types by `FIELDPATCH_BLESS=1 cargo test -p fieldpatch-app ipc_types`; do not edit
// (the types the desktop shell's commands take and return, and its event payloads)

/**
 * What the app and the CLI show about this installation.
 */
export type AppInfo = {
/**
 * Fieldpatch version (`CARGO_PKG_VERSION` of the core).
 */
version: string,
/**
 * Local data directory (store, visit logs, catalog cache).
 */
data_dir: string,
/**
 * Where the data directory came from: `FIELDPATCH_DATA_DIR` or the OS convention.
 */
data_dir_source: DataDirSource, };

/**
 * An error as the front end receives it.
 */
export type BridgeError = {
/**
 * Stable, machine-readable code (`data_dir`, `store`, `catalog`, `keyring`, `session`, ...).
 */
code: string,
/**
 * Human-readable message that says what to do.
 */
message: string, };

/**
 * What a device can do, as far as discovery could tell.
 */
export type Capability = "upload" | "test_boot" | "image_hash" | "readback" | "reset";

/**
 * A credential the store knows by name (never its value).
 */
export type CredentialListing = { name: string, backend: string, updated_at: string, };

/**
 * Real mode's credentials screen: the device and site credentials kept in the OS keyring, by
 * name and when they were set (never their values), and which keyring holds them.
 */
export type CredentialsView = { keyring: string, credentials: Array<CredentialListing>, };

/**
 * How much the customer depends on a device (from the inventory).
 */
export type Criticality = "low" | "normal" | "high" | "critical";

/**
 * Where the data directory path came from.
 */
export type DataDirSource = "environment" | "os_convention";

/**
 * How to reach a device.
 */
export type DeviceAddress = { "transport": "serial", port: string, baud: number, } | { "transport": "udp", addr: string, } | { "transport": "usb", vid: number, pid: number, serial: string | null, } | { "transport": "swupdate", url: string, user: string | null, } | { "transport": "esp", port: string, baud: number | null, reset: EspReset, chip: string | null, };

/**
 * What a device says about itself, as far as Fieldpatch needs to match it to the inventory and to
 * patch bundles. Fields a transport cannot learn are `None`.
 */
export type DeviceIdentity = { vendor: string | null, model: string | null, hardware_revision: string | null, serial_number: string | null, firmware_version: Version | null,
/**
 * SHA-256 of the running image as the device reports it (MCUboot image hash), hex.
 */
image_hash: string | null,
/**
 * What answered when the device was identified (`None`: not known, or not an SMP device).
 * Absent from the serialized form when `None`, so identities recorded before the field
 * existed keep their bytes.
 */
mode?: DeviceMode, };

/**
 * What answers on a device with MCUboot when it is identified.
 */
export type DeviceMode = "application" | "serial_recovery";

/**
 * The plan for one device.
 */
export type DevicePlan = { device: DeviceRecord, disposition: Disposition,
/**
 * Why flashing this device, as it was identified, can neither test-boot nor revert the new
 * image (a device in MCUboot's serial recovery), said before the technician starts; `None`:
 * nothing to say. Absent from plans made before it existed.
 */
no_rollback?: string, };

/**
 * A device as the planner sees it: inventory facts plus what was identified on site.
 */
export type DeviceRecord = {
/**
 * Inventory id (stable across visits).
 */
id: string, address: DeviceAddress, identity: DeviceIdentity, criticality: Criticality,
/**
 * Empty means "any time".
 */
windows: Array<MaintenanceWindow>,
/**
 * Name of the keyring credential needed to open this device, if any.
 */
credential: string | null,
/**
 * A URL of the device's own that must answer (HTTP 2xx) after an update before it counts
 * as healthy, for devices whose update interface cannot report what they run (SWUpdate
 * gateways). Absent: the update interface answering again is the health check.
 */
health_url?: string, };

/**
 * Where one device stands in a session. Its `Display` is the one wording of it that the CLI and
 * the app show.
 */
export type DeviceStatus = { "status": "pending" } | { "status": "in_progress", step: number, } | { "status": "patched", version: string, } | { "status": "rolled_back", reason: string, } | { "status": "failed", reason: string, } | { "status": "skipped", reason: string, } | { "status": "unverified", version: string, };

/**
 * One physical device found on site.
 */
export type DiscoveredDevice = {
/**
 * Every address it answered at (one per transport), in the order found.
 */
addresses: Array<DeviceAddress>,
/**
 * How each address was found, in the same order.
 */
via: Array<string>, identity: DeviceIdentity, bootloader: string | null, capabilities: Array<Capability>,
/**
 * USB identity strings, DfuSe memory maps, ... (`name: value` lines), for the technician.
 */
details: Array<string>,
/**
 * The inventory device it is; `None`: unknown to the inventory (never added to it).
 */
matched: InventoryMatch | null, };

/**
 * Everything one discovery found.
 */
export type DiscoveryReport = { devices: Array<DiscoveredDevice>,
/**
 * Inventory ids of the site's or work order's devices that were not found (empty when no
 * site or work order was given).
 */
missing: Array<string>, skipped: Array<SkippedCandidate>,
/**
 * What was matched against: `work order WO-1`, `site S` or `whole inventory`.
 */
matched_against: string,
/**
 * Some candidates were not finished by the deadline.
 */
deadline_reached: boolean, elapsed_ms: number, };

/**
 * The technician's discovery settings.
 */
export type DiscoverySettings = {
/**
 * Probe the USB serial ports the OS lists (USB-to-serial adapters, CDC ACM).
 */
usb_serial: boolean,
/**
 * Also probe the built-in UARTs the OS lists (each silent one costs a timeout).
 */
all_ports: boolean,
/**
 * Serial ports to probe besides those the OS lists (ptys, `/dev/serial/by-id/...`).
 */
ports: Array<string>,
/**
 * Serial ports never to open, whatever lists them.
 */
exclude: Array<string>,
/**
 * List USB DFU devices.
 */
usb_dfu: boolean,
/**
 * Addresses or ranges probed for SMP over UDP (`192.0.2.7`, `192.0.2.7:1337`,
 * `192.0.2.0/24`).
 */
networks: Array<string>,
/**
 * Network interfaces mDNS is browsed on (only those named).
 */
interfaces: Array<string>,
/**
 * Seconds a discovery may take.
 */
deadline_secs: number,
/**
 * Also look for ESP32-family boards' ROM loaders on the serial ports allowed above, with
 * this reset (which reboots each board into its loader and back): `None`, never.
 */
esp_reset?: EspReset, };

/**
 * What the plan says about one device.
 */
export type Disposition = { "disposition": "patch", steps: Array<Step>, latest: Version, short_reason: Unpatchable | null, } | { "disposition": "scheduled", steps: Array<Step>, not_before: string, } | { "disposition": "up_to_date", version: Version, } | { "disposition": "unpatchable", why: Unpatchable, };

/**
 * How an ESP address gets the chip into its ROM loader. The default is the classic auto-reset
 * circuit of USB-UART dev boards (RTS = EN, DTR = GPIO0), what real adapters have.
 */
export type EspReset = "classic" | "usb-jtag" | "none";

/**
 * One event the server did not take (or did not apply), and why.
 */
export type EventProblemView = { log_id: string, seq: number, code: string, reason: string, };

/**
 * The offline verifier's verdict on an archive: it verifies, or the first problem.
 */
export type ExportCheck = { "result": "pass", events: number, devices: number, fingerprint: string, countersigned: boolean, } | { "result": "fail", code: string, problem: string, };

/**
 * An audit export written from the window, and what the offline verifier says of the file.
 */
export type ExportView = { path: string, bytes: number, visit_id: string, events: number, devices: number,
/**
 * The hash of the visit's last event: the report's verification fingerprint.
 */
fingerprint: string,
/**
 * The inventory key that countersigned the visit (none when exported before sync).
 */
server_key: string | null,
/**
 * What `fieldpatch audit verify` says of the written file.
 */
check: ExportCheck, };

/**
 * The home screen: the core's overview, whether the inventory answers, and where exports go.
 */
export type HomeView = { overview: Overview,
/**
 * The inventory server (none in real mode before a login).
 */
server: string | null,
/**
 * Whether the inventory server answered its health check just now.
 */
online: boolean,
/**
 * The folder the window suggests for audit exports.
 */
export_dir: string,
/**
 * What the technician should know about this mode (the demo site says which of its
 * devices could not start, and why).
 */
notices: Array<string>, };

/**
 * An inclusive version range (as bundle manifests state it); `None` bounds are open.
 */
export type InstalledRange = {
/**
 * Lowest version included.
 */
min: Version | null,
/**
 * Highest version included.
 */
max: Version | null, };

/**
 * The inventory device a discovered device is.
 */
export type InventoryMatch = { device_id: string, key: MatchKey, };

/**
 * The result of verifying one stored log. Serializes as `LogVerificationShape` (the problem as
 * text, the seq of the first bad event as `bad_seq`), which its TypeScript type is made from.
 */
export type LogVerification = { log_id: string,
/**
 * Hex ed25519 public key that signs the log.
 */
signer: string,
/**
 * Events that verified before the first problem (all of them when `problem` is null).
 */
verified: number,
/**
 * Whether the whole log verifies.
 */
ok: boolean,
/**
 * What is wrong, naming the first bad event; null when the log verifies.
 */
problem: string | null,
/**
 * Seq of the first bad event, where one event is to blame.
 */
bad_seq: number | null, };

/**
 * A period in which a device may be taken down for patching.
 */
export type MaintenanceWindow = { start: string, end: string, };

/**
 * Which inventory key matched a device.
 */
export type MatchKey = "serial_number" | "only_of_its_model";

/**
 * Which mode the window runs in.
 */
export type Mode = "demo" | "real";

/**
 * What a home screen shows. See [`Fieldpatch::overview`].
 */
export type Overview = {
/**
 * Events in the local visit logs the inventory has not countersigned yet.
 */
pending_events: number,
/**
 * The server time of the last successful sync (RFC 3339), if any.
 */
last_sync: string | null,
/**
 * Visits, most recent first (at most [`RECENT_VISITS`]); open ones have no `closed_at`.
 */
visits: Array<VisitSummary>,
/**
 * The work orders pulled from the inventory at the last sync.
 */
work_orders: Array<WorkOrderSummary>,
/**
 * How long the trust store, the catalog listing and the catalog's bundles stay usable.
 */
validity: Array<Validity>, };

/**
 * A plan: devices in the order they should be flashed.
 */
export type Plan = { created: string, devices: Array<DevicePlan>, };

/**
 * The site as the window shows it.
 * A plan as the window receives it: the window shows it and runs it by `id`; the plan itself
 * stays in the app (the window never sends a plan back).
 */
export type PlanView = { id: string, plan: Plan, };

/**
 * One verified bundle, as the planner needs it. Built from a verified manifest.
 */
export type PlannableBundle = { bundle_id: string, vendor: string, model: string,
/**
 * Hardware revisions accepted (inclusive bounds, compared as versions when both parse,
 * otherwise as text); `None` means any.
 */
hw_min: string | null, hw_max: string | null,
/**
 * Installed versions this bundle applies to.
 */
applies_to: InstalledRange,
/**
 * The version it installs.
 */
installs: Version,
/**
 * Highest CVSS score among the issues it fixes (0 when none).
 */
cvss: number, cves: Array<string>,
/**
 * Last moment the bundle may be used (its expiry, plus the offline grace period when the
 * catalog was verified online within it).
 */
usable_until: string,
/**
 * Whether opening the device for this bundle needs a credential from the keyring.
 */
needs_credential: boolean, };

/**
 * A bundle that did not verify, and why.
 */
export type Refusal = { path: string, bundle_id: string | null, reason: string, };

/**
 * A session event as the window receives it: the device it is about (none for the session
 * itself) and what happened; a device status comes with the core's wording of it.
 */
export type SessionEventView = { "kind": "phase", device: string | null, name: string, } | { "kind": "note", device: string | null, text: string, } | { "kind": "transfer", device: string | null, done: number, total: number, } | { "kind": "status", device: string | null, status: DeviceStatus, text: string, };

/**
 * How a session run from the window ended (the `session-finished` event).
 */
export type SessionFinished = { "outcome": "done", summary: Summary, } | { "outcome": "failed", error: BridgeError, };

export type SiteView = { devices: Array<DeviceRecord>,
/**
 * Devices that did not answer: id and why.
 */
unreachable: Array<[string, string]>,
/**
 * The verified catalog.
 */
bundles: Array<PlannableBundle>,
/**
 * Bundles that did not verify, and why.
 */
refused: Array<Refusal>,
/**
 * Base URL of the inventory server (the embedded one in the demo); empty before a login.
 */
inventory: string,
/**
 * Whether automatic sync is on.
 */
auto_sync: boolean,
/**
 * Why sync is unavailable, when it is.
 */
sync_unavailable: string | null,
/**
 * The work order the visit is for (real mode; `None`: an ad-hoc visit).
 */
work_order: string | null,
/**
 * Devices of that work order the last discovery did not find: each needs a reason at the
 * close-out.
 */
missing: Array<string>,
/**
 * Why there is no verified catalog to plan with (real mode, before a sync pulled one).
 */
catalog_problem: string | null, };

/**
 * A candidate that was looked at and is not a device Fieldpatch can talk to.
 */
export type SkippedCandidate = {
/**
 * The port path or network address.
 */
candidate: string,
/**
 * A stable code (`excluded`, `port_busy`, `no_answer`, `not_recognized`, ...).
 */
code: string, reason: string, };

/**
 * One bundle applied to one device.
 */
export type Step = { bundle_id: string, from: Version, to: Version, cvss: number,
/**
 * True for an approved downgrade.
 */
rollback: boolean, };

/**
 * Session totals.
 */
export type Summary = { patched: number, rolled_back: number, failed: number, skipped: number, pending: number,
/**
 * Written but not verifiable on the device (never counted as patched).
 */
unverified: number, };

/**
 * A sync event as the window receives it (the kind and the core's wording); a finished sync
 * carries its report.
 */
export type SyncEventView = { kind: SyncKind, text: string,
/**
 * What the sync did, when `kind` is `synced`.
 */
report: SyncReportView | null, };

/**
 * What a sync event is about (the core's `WatchEvent::kind`).
 */
export type SyncKind = "offline" | "probing" | "reachable" | "synced" | "failed" | "stopped";

/**
 * What one sync did: events the server accepted, what is still pending, and the events it
 * rejected, will take later or kept without applying, each with its reason.
 */
export type SyncReportView = {
/**
 * Events the server newly countersigned (accepted) in this sync.
 */
accepted: number,
/**
 * Events not on the server yet.
 */
pending: number, rejected: Array<EventProblemView>, retryable: Array<EventProblemView>, not_applied: Array<EventProblemView>,
/**
 * What the pull brought: devices, work orders and catalog entries.
 */
devices: number, work_orders: number, catalog: number, };

/**
 * How this laptop syncs, as a settings screen shows it: the remembered inventory server,
 * whether a sync token is in the OS keyring (never the token), the pinned server key and the
 * trust store in force.
 */
export type SyncSettings = { server: string | null, token_stored: boolean,
/**
 * The keyring backend the token is kept in (`secret-service`, `keyutils`, `platform`).
 */
keyring: string,
/**
 * The server's checkpoint key pinned at the first sync (hex), if any.
 */
pinned_server_key: string | null,
/**
 * The pinned trust store, once a sync pulled one.
 */
trust: TrustSummary | null,
/**
 * Why the trust store on disk cannot be read, when it cannot.
 */
trust_problem: string | null,
/**
 * Whether the server's certificate is also checked against a private CA.
 */
private_ca: boolean, };

/**
 * One event of a timeline.
 */
export type TimelineEvent = { seq: number,
/**
 * RFC 3339.
 */
time: string,
/**
 * The event's kind (`visit_opened`, `flash_started`, `rolled_back`, ...).
 */
kind: string, device: string | null,
/**
 * The kind's fields as compact JSON (what was signed, minus the envelope).
 */
detail: string,
/**
 * SHA-256 of the event (hex): what the next event links to.
 */
hash: string, };

/**
 * The trust store in force, for the technician to check.
 */
export type TrustSummary = { version: number,
/**
 * RFC 3339; `None`: it does not expire.
 */
expires: string | null, root_key_ids: Array<string>, };

/**
 * Why a device cannot be patched now. Messages say what to do.
 */
export type Unpatchable = { "reason": "unknown_device", missing: string, } | { "reason": "no_bundle", vendor: string, model: string, } | { "reason": "no_upgrade_path", from: Version, latest: Version, } | { "reason": "bundle_expired", bundle_id: string, usable_until: string, } | { "reason": "downgrade_refused", from: Version, to: Version, } | { "reason": "missing_credential", name: string, } | { "reason": "no_maintenance_window" };

/**
 * What discovery reports while it runs.
 */
export type Update = { "event": "device", device: DiscoveredDevice, } | { "event": "skipped", skipped: SkippedCandidate, };

/**
 * How long one thing (the trust store, the catalog listing, the catalog's bundles) stays usable.
 */
export type Validity = {
/**
 * `trust_store`, `catalog_listing` or `catalog_bundles`.
 */
what: string, state: ValidityState,
/**
 * The last moment it may be used (RFC 3339): the expiry, or the end of the grace period.
 */
usable_until: string | null,
/**
 * Seconds from the checked "now" to `usable_until` (negative once past).
 */
remaining_secs: number | null,
/**
 * What the technician reads (the rule, or why it is not usable and what to do).
 */
detail: string, };

/**
 * Where something that expires stands now.
 */
export type ValidityState = "valid" | "grace" | "expired" | "no_expiry" | "missing";

/**
 * A firmware version as MCUboot and most vendors write it: `major.minor.revision+build`.
 *
 * Ordering compares major, minor, revision, then build, numerically.
 */
export type Version = { major: number, minor: number, revision: number, build: number, };

/**
 * A visit as lists show it.
 */
export type VisitSummary = { visit_id: string, log_id: string, site: string, work_order: string | null, opened_at: string,
/**
 * `None` while the visit is open.
 */
closed_at: string | null, };

/**
 * One visit's events and the verification of the log that holds them.
 */
export type VisitTimeline = { visit: VisitSummary, events: Array<TimelineEvent>,
/**
 * The whole log's verification (signatures, sequence, hash links, stored columns).
 */
verification: LogVerification,
/**
 * Events of the log the inventory has countersigned (every seq up to this).
 */
pushed_seq: number, };

/**
 * A work order from the inventory: which devices of a site to visit.
 */
export type WorkOrderSummary = { id: string, site_id: string, title: string, status: string, device_ids: Array<string>, };
