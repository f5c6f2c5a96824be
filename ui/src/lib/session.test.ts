import { describe, expect, it } from "vitest";
import { addressText, applyEvent, percent, planText, statusText, type DeviceRow } from "./session";

const v = (major: number, minor: number, revision = 0) => ({ major, minor, revision, build: 0 });

describe("planText", () => {
  it("shows an upgrade path and every refusal reason", () => {
    expect(
      planText({
        disposition: "patch",
        steps: [
          { bundle_id: "a", from: v(1, 0), to: v(1, 5), cvss: 9, rollback: false },
          { bundle_id: "b", from: v(1, 5), to: v(2, 0), cvss: 9, rollback: false },
        ],
        latest: v(2, 0),
        short_reason: null,
      }),
    ).toBe("1.0.0 → 1.5.0, 1.5.0 → 2.0.0");
    expect(planText({ disposition: "up_to_date", version: v(2, 0) })).toBe("up to date (2.0.0)");
    expect(planText({ disposition: "unpatchable", why: { reason: "missing_credential" } })).toBe(
      "cannot patch: missing credential",
    );
  });
});

describe("applyEvent", () => {
  it("tracks phase, bytes and final status per device and reports notes", () => {
    const rows: Record<string, DeviceRow> = {};
    expect(applyEvent(rows, { device: "d1", kind: "phase", text: "upload", done: null, total: null, status: null })).toBeNull();
    applyEvent(rows, { device: "d1", kind: "transfer", text: null, done: 512, total: 2048, status: null });
    expect(percent(rows.d1)).toBe(25);
    const note = applyEvent(rows, {
      device: "d1",
      kind: "status",
      text: null,
      done: null,
      total: null,
      status: { status: "patched", version: "1.5.0" },
    });
    expect(note).toBe("d1: patched: 1.5.0");
    expect(percent(rows.d1)).toBe(100);
    expect(rows.d1.phase).toBe("upload");
    expect(applyEvent(rows, { device: null, kind: "note", text: "canary: d1", done: null, total: null, status: null })).toBe(
      "canary: d1",
    );
  });
  it("never divides by zero", () => {
    expect(percent(undefined)).toBe(0);
    expect(percent({ phase: "", done: 0, total: 0, status: null })).toBe(0);
  });
});

describe("labels", () => {
  it("names addresses and statuses", () => {
    expect(addressText({ transport: "usb", vid: 0x1209, pid: 2 })).toBe("usb 1209:0002");
    expect(addressText({ transport: "udp", addr: "127.0.0.1:1337" })).toBe("udp 127.0.0.1:1337");
    expect(statusText({ status: "rolled_back", reason: "unhealthy" })).toBe("rolled back: unhealthy");
    expect(statusText(null)).toBe("");
  });
});
