// Pure view logic for the Devices screen: discovery updates streaming in, the rows the table
// shows, the search filter and the summary line (unit-tested; no Tauri calls here).

import type { DiscoveredDevice, DiscoveryReport, Update } from "./ipc";
import { addressText, versionText } from "./session";

/**
 * How the window tells discovered devices apart while updates stream in: the core sends a
 * device's whole merged state each time it answers, and the first address it answered at never
 * changes (later transports are appended).
 */
export function deviceKey(d: DiscoveredDevice): string {
  const first = d.addresses[0];
  return first ? addressText(first) : (d.identity.serial_number ?? "");
}

/** The devices list after one update: the device replaced in place, or appended when new. */
export function applyUpdate(devices: DiscoveredDevice[], u: Update): DiscoveredDevice[] {
  if (u.event !== "device") return devices;
  const key = deviceKey(u.device);
  const i = devices.findIndex((d) => deviceKey(d) === key);
  if (i < 0) return [...devices, u.device];
  const next = devices.slice();
  next[i] = u.device;
  return next;
}

/** One row of the discovered-devices table. */
export interface DiscoveredRow {
  key: string;
  /** The inventory device it is, or null when the inventory does not know it. */
  inventoryId: string | null;
  /** What the Device column says: the inventory id, or "unknown". */
  name: string;
  /** How it was matched (`serial number`, ...), empty for an unknown device. */
  matchedBy: string;
  /** Vendor, model and hardware revision, as far as the device told. */
  identity: string;
  serial: string;
  /** What it runs now ("?" when it cannot say, as a DFU device). */
  version: string;
  addresses: string;
  bootloader: string;
}

const MATCHED_BY: Record<string, string> = {
  serial_number: "serial number",
  only_of_its_model: "only device of its model at the site",
};

export function discoveredRow(d: DiscoveredDevice): DiscoveredRow {
  const id = d.identity;
  const rev = id.hardware_revision?.trim();
  return {
    key: deviceKey(d),
    inventoryId: d.matched?.device_id ?? null,
    name: d.matched?.device_id ?? "unknown",
    matchedBy: d.matched ? (MATCHED_BY[d.matched.key] ?? d.matched.key) : "",
    identity: [id.vendor, id.model, rev ? `rev ${rev}` : null].filter(Boolean).join(" "),
    serial: id.serial_number ?? "",
    version: versionText(id.firmware_version),
    addresses: d.addresses.map(addressText).join(", "),
    bootloader: d.bootloader ?? "",
  };
}

/**
 * Rows whose text contains every word of `query` (case-insensitive): the inventory id, identity,
 * serial number, version, addresses and bootloader; `unknown` finds the unmatched devices.
 */
export function filterRows(rows: DiscoveredRow[], query: string): DiscoveredRow[] {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return rows;
  return rows.filter((r) => {
    const text = [r.name, r.identity, r.serial, r.version, r.addresses, r.bootloader]
      .join(" ")
      .toLowerCase();
    return words.every((w) => text.includes(w));
  });
}

/** Missing inventory ids that contain every word of `query`. */
export function filterMissing(missing: string[], query: string): string[] {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  return missing.filter((id) => words.every((w) => id.toLowerCase().includes(w)));
}

/** The line under the table while discovery runs, and once it is over. */
export function discoveryStatus(found: DiscoveredDevice[], report: DiscoveryReport | null): string {
  if (!report) return `searching… ${found.length} device(s) so far`;
  const known = report.devices.filter((d) => d.matched).length;
  const unknown = report.devices.length - known;
  const secs = (report.elapsed_ms / 1000).toFixed(1);
  const deadline = report.deadline_reached ? "; the deadline cut some candidates short" : "";
  return (
    `${report.devices.length} device(s) found (${known} in the inventory, ${unknown} unknown), ` +
    `${report.missing.length} missing, in ${secs} s, matched against ${report.matched_against}${deadline}`
  );
}

/**
 * Why a device can be both on the bench and missing: devices the inventory could not tell apart
 * (the same model several times, and no serial number to compare) stay unknown rather than be
 * guessed, and their records are then listed as missing. Null when that cannot be the case.
 */
export function ambiguityHint(report: DiscoveryReport | null): string | null {
  if (!report?.missing.length) return null;
  const unknown = report.devices.filter((d) => !d.matched).length;
  if (!unknown) return null;
  return (
    `${unknown} unknown device(s) may be missing ones the inventory cannot tell apart ` +
    `(the same model, no serial number reported): they are not guessed, check them by hand`
  );
}
