// Pure helpers behind the home, visit-log, sync-report and export screens (unit-tested; no Tauri
// calls here).

import type {
  ExportCheck,
  SyncReportView,
  TimelineEvent,
  Validity,
  VisitSummary,
  VisitTimeline,
} from "./ipc";

/** How close to its end something that expires has to be for the home screen to warn. */
export const NEAR_EXPIRY_SECS = 7 * 24 * 3600;

/** What the catalog and trust-store banner says, and how loudly. */
export interface Banner {
  what: string;
  tone: "warning" | "error";
  text: string;
}

const NAMES: Record<string, string> = {
  trust_store: "Trust store",
  catalog_listing: "Catalog listing",
  catalog_bundles: "Catalog bundles",
};

/** The display name of a validity's subject. */
export function validityName(what: string): string {
  return NAMES[what] ?? what;
}

/** One validity as the status list shows it: the rule while usable, else its state and why. */
export function validityText(v: Validity): string {
  const detail = v.detail.replace(/(\d{2}:\d{2}:\d{2})\.\d+/g, "$1");
  switch (v.state) {
    case "valid":
    case "grace":
      return v.remaining_secs === null ? detail : `${detail} (${duration(v.remaining_secs)} left)`;
    case "no_expiry":
      return detail;
    case "expired":
      return `not usable: ${detail}`;
    case "missing":
      return `none: ${detail}`;
  }
}

/** "3 days", "5 hours", "12 minutes": a duration in whole units for the technician. */
export function duration(secs: number): string {
  const s = Math.abs(secs);
  const [n, unit] =
    s >= 2 * 86400 ? [Math.floor(s / 86400), "day"] : s >= 2 * 3600 ? [Math.floor(s / 3600), "hour"] : [Math.max(1, Math.floor(s / 60)), "minute"];
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

/** The banners the home screen shows: everything past its expiry, in grace, missing, or within
 *  `NEAR_EXPIRY_SECS` of its end. Errors first. */
export function banners(validity: Validity[], near = NEAR_EXPIRY_SECS): Banner[] {
  const out: Banner[] = [];
  for (const v of validity) {
    const name = validityName(v.what);
    switch (v.state) {
      case "expired":
        out.push({ what: v.what, tone: "error", text: `${name} is not usable: ${v.detail}` });
        break;
      case "missing":
        out.push({ what: v.what, tone: "error", text: `${name}: ${v.detail}` });
        break;
      case "grace":
        out.push({
          what: v.what,
          tone: "warning",
          text: `${name} has expired and is used under the offline grace period, which ends in ${duration(v.remaining_secs ?? 0)}: sync to renew it`,
        });
        break;
      case "valid":
        if (v.remaining_secs !== null && v.remaining_secs <= near) {
          out.push({
            what: v.what,
            tone: "warning",
            text: `${name} expires in ${duration(v.remaining_secs)}: sync before then`,
          });
        }
        break;
      case "no_expiry":
        break;
    }
  }
  return out.sort((a, b) => (a.tone === b.tone ? 0 : a.tone === "error" ? -1 : 1));
}

/** The last-sync line. */
export function lastSyncText(lastSync: string | null): string {
  return lastSync ? lastSync.replace("T", " ").replace(/\.\d+/, "") : "never: sync before the trip";
}

/** The pending-events line. */
export function pendingText(pending: number): string {
  return pending === 0 ? "none: every event is on the server" : `${pending} event(s) to sync`;
}

/** A visit as one line: site or session, when it was opened and whether it is still open. */
export function visitLabel(v: VisitSummary): string {
  const wo = v.work_order ? ` (work order ${v.work_order})` : "";
  const when = v.opened_at.replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, " UTC");
  return `${v.site}${wo}, opened ${when}${v.closed_at ? ", closed" : ", open"}`;
}

/** Visits still open (no close time). */
export function openVisits(visits: VisitSummary[]): VisitSummary[] {
  return visits.filter((v) => v.closed_at === null);
}

/** The chain-verification line of a visit log. */
export function chainText(t: VisitTimeline): { ok: boolean; text: string } {
  const v = t.verification;
  if (v.ok) {
    return { ok: true, text: `chain verifies: ${v.verified} signed event(s) in this log, signer ${v.signer.slice(0, 16)}…` };
  }
  const at = v.bad_seq !== null ? ` (first bad event: seq ${v.bad_seq})` : "";
  return { ok: false, text: `chain does NOT verify after ${v.verified} good event(s)${at}: ${v.problem ?? "unknown problem"}` };
}

/** Where an event stands: verified (before any bad event), the bad one, or after it. */
export function eventTrust(e: TimelineEvent, t: VisitTimeline): "verified" | "bad" | "unverified" {
  const bad = t.verification.ok ? null : t.verification.bad_seq ?? t.verification.verified + 1;
  if (bad === null || e.seq < bad) return "verified";
  return e.seq === bad ? "bad" : "unverified";
}

/** The suggested file for a visit's export in `dir`. */
export function exportPath(dir: string, visitId: string): string {
  const sep = dir.includes("\\") && !dir.includes("/") ? "\\" : "/";
  return `${dir.replace(/[\\/]+$/, "")}${sep}visit-${visitId.slice(0, 8)}.tar`;
}

/** The offline verifier's verdict as one line. */
export function checkText(c: ExportCheck): string {
  if (c.result === "pass") {
    const cs = c.countersigned ? "countersigned by the inventory" : "not countersigned (exported before sync)";
    return `verifies offline: ${c.events} signed event(s), ${c.devices} device(s), ${cs}; fingerprint ${c.fingerprint.slice(0, 16)}…`;
  }
  return `does NOT verify [${c.code}]: ${c.problem}`;
}

/** The sync report's headline: accepted, pending, rejected. */
export function reportText(r: SyncReportView): string {
  return `accepted ${r.accepted}, pending ${r.pending}, rejected ${r.rejected.length}`;
}
