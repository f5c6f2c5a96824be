// Shell answers the home, visit-log and export tests share.
import type { HomeView, Validity, VisitSummary, VisitTimeline } from "./ipc";

export const DAY = 86400;

export const visit = (id: string, closed: boolean, site = "batch session s1"): VisitSummary => ({
  visit_id: id,
  log_id: "0190aaaa-0000-7000-8000-000000000001",
  site,
  work_order: null,
  opened_at: "2026-12-06T09:00:00.123+00:00",
  closed_at: closed ? "2026-12-06T09:30:00+00:00" : null,
});

export const validity = (what: string, state: Validity["state"], remaining: number | null, detail = "rule"): Validity => ({
  what,
  state,
  usable_until: remaining === null ? null : "2026-12-20T00:00:00+00:00",
  remaining_secs: remaining,
  detail,
});

export function homeView(over: Partial<HomeView["overview"]> = {}, online = true): HomeView {
  return {
    overview: {
      pending_events: 0,
      last_sync: null,
      visits: [],
      work_orders: [],
      validity: [validity("trust_store", "valid", 300 * DAY)],
      ...over,
    },
    server: "http://127.0.0.1:8080",
    online,
    export_dir: "/data/exports",
    notices: [],
  };
}

export function timeline(ok: boolean, badSeq: number | null = null): VisitTimeline {
  return {
    visit: visit("0190bbbb-1111-7000-8000-000000000002", true),
    events: [1, 2, 3, 4].map((seq) => ({
      seq,
      time: `2026-12-06T09:0${seq}:00.5+00:00`,
      kind: seq === 1 ? "visit_opened" : "note",
      device: seq === 3 ? "sensor-04" : null,
      detail: seq === 1 ? '{"site":"s"}' : "{}",
      hash: `h${seq}`,
    })),
    verification: {
      log_id: "0190aaaa-0000-7000-8000-000000000001",
      signer: "ab".repeat(32),
      verified: ok ? 4 : (badSeq ?? 1) - 1,
      ok,
      problem: ok ? null : `event seq ${badSeq}: signature does not match`,
      bad_seq: badSeq,
    },
    pushed_seq: 2,
  };
}
