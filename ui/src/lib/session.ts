// Pure view logic for sites, plans and sessions (unit-tested; no Tauri calls here). The types come
// from ./ipc, generated from the Rust types.

import type { DeviceAddress, DeviceStatus, Disposition, SessionEventView, Version } from "./ipc";

/** One device's row in the device table while a session runs. */
export interface DeviceRow {
  phase: string;
  done: number;
  total: number;
  /** The device's last status, if the session reported one. */
  status: DeviceStatus | null;
  /** The core's wording of that status: what the table shows. */
  result: string;
  /** When (ms) and at how many bytes the current transfer was first seen, for rate and ETA. */
  since?: { at: number; done: number };
  /** Bytes per second over the current transfer so far, once measurable. */
  rate?: number;
}

export function versionText(v: Version | null | undefined): string {
  if (!v) return "?";
  const base = `${v.major}.${v.minor}.${v.revision}`;
  return v.build ? `${base}+${v.build}` : base;
}

export function addressText(a: DeviceAddress): string {
  switch (a.transport) {
    case "serial":
      return `serial ${a.port} @ ${a.baud}`;
    case "udp":
      return `udp ${a.addr}`;
    case "usb":
      return `usb ${a.vid.toString(16).padStart(4, "0")}:${a.pid.toString(16).padStart(4, "0")}`;
    case "swupdate":
      return `swupdate ${a.url}`;
    case "esp":
      return `esp ${a.chip ?? ""}${a.chip ? " " : ""}${a.port}${a.baud ? ` @ ${a.baud}` : ""}`;
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

/**
 * Fold one session event into the per-device rows; returns a line for the session log, if any.
 * A status is shown as the core words it (the event's `text`), never reworded here.
 */
export function applyEvent(rows: Record<string, DeviceRow>, e: SessionEventView, now: number = Date.now()): string | null {
  if (!e.device) {
    if (e.kind === "phase") return e.name;
    return "text" in e ? e.text : null;
  }
  const row = (rows[e.device] ??= { phase: "", done: 0, total: 0, status: null, result: "" });
  switch (e.kind) {
    case "phase":
      row.phase = e.name;
      if (e.name !== "upload") row.rate = undefined;
      return null;
    case "transfer":
      // A new transfer (or one that went back, as after a reconnect) starts the measure again.
      if (!row.since || e.done < row.done || e.total !== row.total) row.since = { at: now, done: e.done };
      row.done = e.done;
      row.total = e.total;
      if (now > row.since.at && e.done > row.since.done) {
        row.rate = ((e.done - row.since.done) * 1000) / (now - row.since.at);
      } else {
        row.rate = undefined;
      }
      return null;
    case "status":
      row.status = e.status;
      row.result = e.text;
      if (e.status.status === "patched") row.done = row.total;
      return `${e.device}: ${e.text}`;
    case "note":
      return `${e.device}: ${e.text}`;
  }
}

export function percent(row: DeviceRow | undefined): number {
  if (!row || row.total === 0) return 0;
  return Math.min(100, Math.round((row.done * 100) / row.total));
}

/** Seconds left at the measured rate, once there is one. */
export function etaSecs(row: DeviceRow | undefined): number | null {
  if (!row?.rate || row.total === 0 || row.done >= row.total) return null;
  return Math.ceil((row.total - row.done) / row.rate);
}

/** "12.3 KiB/s, about 5 s left": the rate and ETA line of a device's transfer. */
export function rateText(row: DeviceRow | undefined): string {
  if (!row?.rate) return "";
  const kib = row.rate / 1024;
  const rate = kib >= 1024 ? `${(kib / 1024).toFixed(1)} MiB/s` : `${kib.toFixed(1)} KiB/s`;
  const eta = etaSecs(row);
  if (eta === null) return rate;
  return `${rate}, about ${eta >= 120 ? `${Math.round(eta / 60)} min` : `${eta} s`} left`;
}
