// Pure view logic for sites, plans and sessions (unit-tested; no Tauri calls here).

export interface DeviceRecord {
  id: string;
  address: { transport: string; port?: string; baud?: number; addr?: string; vid?: number; pid?: number };
  identity: { vendor?: string; model?: string; firmware_version?: Version | null; image_hash?: string | null };
  criticality: string;
}

export interface Version {
  major: number;
  minor: number;
  revision: number;
  build: number;
}

export interface Step {
  bundle_id: string;
  from: Version;
  to: Version;
  cvss: number;
  rollback: boolean;
}

export type Disposition =
  | { disposition: "patch"; steps: Step[]; latest: Version; short_reason: unknown }
  | { disposition: "scheduled"; steps: Step[]; not_before: string }
  | { disposition: "up_to_date"; version: Version }
  | { disposition: "unpatchable"; why: { reason: string; [k: string]: unknown } };

export interface DevicePlan {
  device: DeviceRecord;
  disposition: Disposition;
}

export interface Plan {
  created: string;
  devices: DevicePlan[];
}

export type DeviceStatus =
  | { status: "pending" }
  | { status: "in_progress"; step: number }
  | { status: "patched"; version: string }
  | { status: "rolled_back"; reason: string }
  | { status: "failed"; reason: string }
  | { status: "skipped"; reason: string };

export interface SessionEventView {
  device: string | null;
  kind: "phase" | "note" | "transfer" | "status";
  text: string | null;
  done: number | null;
  total: number | null;
  status: DeviceStatus | null;
}

export interface DeviceRow {
  phase: string;
  done: number;
  total: number;
  status: DeviceStatus | null;
}

export function versionText(v: Version | null | undefined): string {
  if (!v) return "?";
  const base = `${v.major}.${v.minor}.${v.revision}`;
  return v.build ? `${base}+${v.build}` : base;
}

export function addressText(a: DeviceRecord["address"]): string {
  switch (a.transport) {
    case "serial":
      return `serial ${a.port} @ ${a.baud}`;
    case "udp":
      return `udp ${a.addr}`;
    case "usb":
      return `usb ${(a.vid ?? 0).toString(16).padStart(4, "0")}:${(a.pid ?? 0).toString(16).padStart(4, "0")}`;
    default:
      return a.transport;
  }
}

export function planText(d: Disposition): string {
  switch (d.disposition) {
    case "patch":
      return d.steps.map((s) => `${versionText(s.from)} → ${versionText(s.to)}`).join(", ");
    case "scheduled":
      return `scheduled from ${d.not_before}`;
    case "up_to_date":
      return `up to date (${versionText(d.version)})`;
    case "unpatchable":
      return `cannot patch: ${d.why.reason.replaceAll("_", " ")}`;
  }
}

export function statusText(s: DeviceStatus | null): string {
  if (!s) return "";
  switch (s.status) {
    case "pending":
      return "pending";
    case "in_progress":
      return `flashing (step ${s.step + 1})`;
    case "patched":
      return `patched: ${s.version}`;
    case "rolled_back":
      return `rolled back: ${s.reason}`;
    case "failed":
      return `failed: ${s.reason}`;
    case "skipped":
      return `skipped: ${s.reason}`;
  }
}

/** Fold one session event into the per-device rows; returns a note for the session log, if any. */
export function applyEvent(rows: Record<string, DeviceRow>, e: SessionEventView): string | null {
  if (!e.device) return e.text;
  const row = (rows[e.device] ??= { phase: "", done: 0, total: 0, status: null });
  switch (e.kind) {
    case "phase":
      row.phase = e.text ?? "";
      return null;
    case "transfer":
      row.done = e.done ?? 0;
      row.total = e.total ?? 0;
      return null;
    case "status":
      row.status = e.status;
      if (e.status?.status === "patched") row.done = row.total;
      return `${e.device}: ${statusText(e.status)}`;
    case "note":
      return `${e.device}: ${e.text}`;
  }
}

export function percent(row: DeviceRow | undefined): number {
  if (!row || row.total === 0) return 0;
  return Math.min(100, Math.round((row.done * 100) / row.total));
}
