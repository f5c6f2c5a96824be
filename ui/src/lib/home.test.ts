// Tests of the home, visit-log and export helpers: banners for what is near or past its expiry,
// the chain line and each event's standing, the export's default path and verdict line.
import { describe, expect, it } from "vitest";
import { DAY, timeline, validity, visit } from "./home.fixtures";
import { banners, validityText, chainText, checkText, duration, eventTrust, exportPath, lastSyncText, openVisits, pendingText, reportText, visitLabel } from "./home";

describe("banners", () => {
  it("stay quiet while everything is valid for longer than the warning period", () => {
    expect(banners([validity("trust_store", "valid", 30 * DAY), validity("catalog_listing", "no_expiry", null)])).toEqual([]);
  });
  it("warn when something expires within a week, and say when", () => {
    const [b] = banners([validity("catalog_listing", "valid", 3 * DAY + 100)]);
    expect(b).toEqual({ what: "catalog_listing", tone: "warning", text: "Catalog listing expires in 3 days: sync before then" });
  });
  it("warn while in the offline grace period, with the time left", () => {
    const [b] = banners([validity("trust_store", "grace", 5 * 3600)]);
    expect(b.tone).toBe("warning");
    expect(b.text).toContain("offline grace period, which ends in 5 hours");
  });
  it("put what is past its grace or missing first, as errors", () => {
    const out = banners([
      validity("catalog_bundles", "valid", 60),
      validity("trust_store", "expired", null, "the trust store expired on 2026-01-01"),
      validity("catalog_listing", "missing", null, "sync the catalog"),
    ]);
    expect(out.map((b) => [b.what, b.tone])).toEqual([
      ["trust_store", "error"],
      ["catalog_listing", "error"],
      ["catalog_bundles", "warning"],
    ]);
    expect(out[0].text).toBe("Trust store is not usable: the trust store expired on 2026-01-01");
    expect(out[2].text).toBe("Catalog bundles expires in 1 minute: sync before then");
  });
  it("honour another warning period", () => {
    expect(banners([validity("trust_store", "valid", 20 * DAY)], 30 * DAY)).toHaveLength(1);
  });
});

describe("validity lines", () => {
  it("show the rule and the time left while usable, else the state and why", () => {
    expect(validityText(validity("catalog_listing", "valid", 3 * DAY, "valid until 2027-02-04T10:00:30.853022192+00:00"))).toBe(
      "valid until 2027-02-04T10:00:30+00:00 (3 days left)",
    );
    expect(validityText(validity("trust_store", "no_expiry", null, "version 1 does not expire"))).toBe("version 1 does not expire");
    expect(validityText(validity("trust_store", "expired", null, "expired on 2026-01-01"))).toBe("not usable: expired on 2026-01-01");
    expect(validityText(validity("trust_store", "missing", null, "sync first"))).toBe("none: sync first");
  });
});

describe("durations and lines", () => {
  it("round down to whole units", () => {
    expect(duration(2 * DAY)).toBe("2 days");
    expect(duration(DAY)).toBe("24 hours");
    expect(duration(7199)).toBe("119 minutes");
    expect(duration(10)).toBe("1 minute");
    expect(duration(-3 * DAY)).toBe("3 days");
  });
  it("say what is pending and when the last sync was", () => {
    expect(pendingText(0)).toBe("none: every event is on the server");
    expect(pendingText(12)).toBe("12 event(s) to sync");
    expect(lastSyncText(null)).toBe("never: sync before the trip");
    expect(lastSyncText("2026-12-06T09:10:11.123+00:00")).toBe("2026-12-06 09:10:11+00:00");
  });
  it("label visits and pick the open ones", () => {
    const open = visit("a", false);
    const closed = { ...visit("b", true), work_order: "WO-7" };
    expect(visitLabel(open)).toBe("batch session s1, opened 2026-12-06 09:00:00 UTC, open");
    expect(visitLabel(closed)).toBe("batch session s1 (work order WO-7), opened 2026-12-06 09:00:00 UTC, closed");
    expect(openVisits([open, closed])).toEqual([open]);
  });
});

describe("the visit log", () => {
  it("says the chain verifies, or names the first bad event", () => {
    expect(chainText(timeline(true))).toEqual({ ok: true, text: `chain verifies: 4 signed event(s) in this log, signer ${"ab".repeat(8)}…` });
    const bad = chainText(timeline(false, 3));
    expect(bad.ok).toBe(false);
    expect(bad.text).toBe("chain does NOT verify after 2 good event(s) (first bad event: seq 3): event seq 3: signature does not match");
  });
  it("marks events before the first bad one verified, it bad, and the rest unverified", () => {
    const t = timeline(false, 3);
    expect(t.events.map((e) => eventTrust(e, t))).toEqual(["verified", "verified", "bad", "unverified"]);
    const ok = timeline(true);
    expect(ok.events.map((e) => eventTrust(e, ok))).toEqual(["verified", "verified", "verified", "verified"]);
    // A log cut short (no single event to blame): everything after the verified ones is suspect.
    const cut = { ...timeline(false, null), verification: { ...timeline(false, null).verification, verified: 2 } };
    expect(cut.events.map((e) => eventTrust(e, cut))).toEqual(["verified", "verified", "bad", "unverified"]);
  });
});

describe("exports and sync reports", () => {
  it("suggest a file in the export folder named after the visit", () => {
    expect(exportPath("/data/exports/", "0190bbbb-1111-7000")).toBe("/data/exports/visit-0190bbbb.tar");
    expect(exportPath("C:\\Users\\t\\exports", "0190bbbb-1111")).toBe("C:\\Users\\t\\exports\\visit-0190bbbb.tar");
  });
  it("state the verifier's verdict: pass with its figures, or the first problem", () => {
    expect(checkText({ result: "pass", events: 40, devices: 6, fingerprint: "f".repeat(64), countersigned: false })).toBe(
      `verifies offline: 40 signed event(s), 6 device(s), not countersigned (exported before sync); fingerprint ${"f".repeat(16)}…`,
    );
    expect(checkText({ result: "fail", code: "audit", problem: "events.jsonl line 3: bad signature" })).toBe(
      "does NOT verify [audit]: events.jsonl line 3: bad signature",
    );
  });
  it("headline a sync with accepted, pending and rejected", () => {
    const p = { log_id: "l", seq: 4, code: "bad_signature", reason: "r" };
    expect(reportText({ accepted: 5, pending: 2, rejected: [p], retryable: [], not_applied: [], devices: 0, work_orders: 0, catalog: 0 })).toBe(
      "accepted 5, pending 2, rejected 1",
    );
  });
});
