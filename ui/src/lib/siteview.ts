// Pure helpers behind the site store: what the window derives from rows, plans, reasons and sync
// events (unit-tested; no Tauri calls here).

import type { DeviceMode, Disposition, LogVerification, Plan, SessionFinished, SyncEventView } from "./ipc";
import type { DeviceRow } from "./session";

/** How many session-log lines are kept before the oldest are dropped. */
export const NOTES_KEPT = 200;

/** Append a line to the session log, dropping the oldest beyond `NOTES_KEPT`. */
export function appendNote(notes: string[], note: string): string[] {
  return [...notes.slice(-NOTES_KEPT), note];
}

/** The line the session log gets when a session ends. */
export function finishedNote(result: SessionFinished): string {
  switch (result.outcome) {
    case "done": {
      const s = result.summary;
      const unverified = s.unverified ? `, ${s.unverified} unverified` : "";
      return `session finished: ${s.patched} patched, ${s.rolled_back} rolled back, ${s.failed} failed, ${s.skipped} skipped, ${s.pending} pending${unverified}`;
    }
    case "failed":
      return `session failed: ${result.error.message}`;
  }
}

/** Devices that ended the session with a status other than patched, in row order. */
export function unpatchedIds(rows: Record<string, DeviceRow>, missing: string[] = []): string[] {
  const ids = Object.entries(rows)
    .filter(([, r]) => r.status && r.status.status !== "patched")
    .map(([id]) => id);
  // Devices of the work order that discovery did not find were not patched either.
  return [...ids, ...missing.filter((id) => !(id in rows))];
}

/** Of `ids`, those without a reason yet (absent or only blanks, as the core counts them). */
export function missingReasons(ids: string[], reasons: Record<string, string>): string[] {
  return ids.filter((id) => !reasons[id]?.trim());
}

/** What the window says once a close-out is recorded. */
export function closeOutText(recorded: string[]): string {
  return `session closed out: ${recorded.length} unpatched device(s) recorded with their reasons`;
}

/** Whether every visit-log check came back without a problem. */
export function logVerifies(checks: LogVerification[]): boolean {
  return checks.every((c) => c.ok);
}

/** The plan's disposition for one device, if the plan covers it. */
/** The devices the plan would flash now, in plan order: what a session may be chosen from. */
export function patchableIds(plan: Plan | null): string[] {
  return (plan?.devices ?? [])
    .filter((d) => d.disposition.disposition === "patch" && d.disposition.steps.length > 0)
    .map((d) => d.device.id);
}

/** What "Run session" says it will do with the devices chosen. */
export function runLabel(chosen: string[], patchable: string[]): string {
  if (chosen.length === 0) return "Run session";
  if (chosen.length === 1) return `Flash ${chosen[0]}`;
  if (chosen.length === patchable.length) return `Run session (${chosen.length} devices)`;
  return `Run session (${chosen.length} of ${patchable.length} devices)`;
}

export function dispositionOf(plan: Plan | null, id: string): Disposition | undefined {
  return plan?.devices.find((d) => d.device.id === id)?.disposition;
}

/**
 * What the plan says a device cannot do (test boot, revert) as it was identified, e.g. a device
 * held in MCUboot's serial recovery; empty when it can.
 */
export function noRollbackOf(plan: Plan | null, id: string): string {
  return plan?.devices.find((d) => d.device.id === id)?.no_rollback ?? "";
}

/** How a device was found answering: its bootloader in serial recovery, or nothing to say. */
export function modeText(mode: DeviceMode | null | undefined): string {
  return mode === "serial_recovery" ? "serial recovery (bootloader)" : "";
}

/** The sync event shown once automatic sync is switched off. */
export const SYNC_OFF: SyncEventView = { kind: "stopped", text: "automatic sync is off", report: null };

export interface SyncStatus {
  kind: SyncEventView["kind"] | "unavailable" | "";
  text: string;
  tone: "error" | "muted";
}

/** The sync status line: why sync is unavailable, else the last sync event, else a wait. */
export function syncStatus(last: SyncEventView | null, unavailable: string | null): SyncStatus {
  if (unavailable !== null) {
    return { kind: "unavailable", text: unavailable ? `sync unavailable: ${unavailable}` : "sync unavailable", tone: "error" };
  }
  if (!last) return { kind: "", text: "waiting for the first sync…", tone: "muted" };
  const tone = last.kind === "failed" || last.kind === "offline" ? "error" : "muted";
  return { kind: last.kind, text: last.text, tone };
}
