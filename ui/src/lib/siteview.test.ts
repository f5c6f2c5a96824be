// Unit tests for the pure helpers behind the site store.
import { describe, expect, it } from "vitest";
import type { DeviceStatus, LogVerification, Plan } from "./ipc";
import type { DeviceRow } from "./session";
import {
  appendNote,
  closeOutText,
  dispositionOf,
  patchableIds,
  runLabel,
  finishedNote,
  logVerifies,
  missingReasons,
  modeText,
  noRollbackOf,
  NOTES_KEPT,
  syncStatus,
  unpatchedIds,
} from "./siteview";

const row = (status: DeviceStatus | null): DeviceRow => ({
  phase: "",
  done: 0,
  total: 0,
  status,
  result: "",
});
const check = (problem: string | null): LogVerification => ({
  log_id: "0190a1b2-0000-7000-8000-000000000000",
  signer: "ab",
  verified: 1,
  ok: problem === null,
  problem,
  bad_seq: null,
});

describe("unpatchedIds and missingReasons", () => {
  it("lists devices with a final status other than patched", () => {
    const rows = {
      a: row({ status: "patched", version: "1.5.0" }),
      b: row({ status: "rolled_back", reason: "unhealthy" }),
      c: row(null),
      d: row({ status: "skipped", reason: "already at 3.0.0" }),
    };
    expect(unpatchedIds(rows)).toEqual(["b", "d"]);
  });
  it("adds the work order's devices that discovery did not find, once", () => {
    const rows = { a: row({ status: "patched", version: "1.5.0" }), b: row({ status: "failed", reason: "x" }) };
    expect(unpatchedIds(rows, ["m1", "b"])).toEqual(["b", "m1"]);
    expect(unpatchedIds({}, ["m1"])).toEqual(["m1"]);
  });
  it("counts absent and blank reasons as missing, like the core", () => {
    expect(missingReasons(["b", "d", "e"], { b: "owner refused", d: "   " })).toEqual(["d", "e"]);
    expect(missingReasons([], {})).toEqual([]);
  });
});

describe("session log", () => {
  it("keeps the newest lines", () => {
    const full = Array.from({ length: NOTES_KEPT + 5 }, (_, i) => `n${i}`);
    const next = appendNote(full, "last");
    expect(next).toHaveLength(NOTES_KEPT + 1);
    expect(next[next.length - 1]).toBe("last");
    expect(next[0]).toBe("n5");
    expect(appendNote([], "a")).toEqual(["a"]);
  });
  it("says how a session finished", () => {
    const summary = { patched: 5, rolled_back: 1, failed: 0, skipped: 2, pending: 0, unverified: 0 };
    expect(finishedNote({ outcome: "done", summary })).toBe(
      "session finished: 5 patched, 1 rolled back, 0 failed, 2 skipped, 0 pending",
    );
    expect(finishedNote({ outcome: "failed", error: { code: "store", message: "disk full" } })).toBe(
      "session failed: disk full",
    );
    expect(
      finishedNote({ outcome: "done", summary: { ...summary, unverified: 1 } }),
    ).toBe(
      "session finished: 5 patched, 1 rolled back, 0 failed, 2 skipped, 0 pending, 1 unverified",
    );
  });
});

describe("close-out and visit log", () => {
  it("counts the devices recorded", () => {
    expect(closeOutText(["sensor-04"])).toBe(
      "session closed out: 1 unpatched device(s) recorded with their reasons",
    );
  });
  it("verifies only when no check has a problem", () => {
    expect(logVerifies([check(null), check(null)])).toBe(true);
    expect(logVerifies([check(null), check("bad signature")])).toBe(false);
    expect(logVerifies([])).toBe(true);
  });
});

describe("dispositionOf", () => {
  it("finds the plan for a device", () => {
    const plan = {
      created: "now",
      devices: [
        {
          device: {
            id: "g",
            address: { transport: "udp", addr: "127.0.0.1:1337" },
            identity: {
              vendor: null,
              model: null,
              hardware_revision: null,
              serial_number: null,
              firmware_version: null,
              image_hash: null,
            },
            criticality: "low",
            windows: [],
            credential: null,
          },
          disposition: { disposition: "up_to_date", version: { major: 3, minor: 0, revision: 0, build: 0 } },
        },
      ],
    } satisfies Plan;
    expect(dispositionOf(plan, "g")?.disposition).toBe("up_to_date");
    expect(dispositionOf(plan, "x")).toBeUndefined();
    expect(dispositionOf(null, "g")).toBeUndefined();
  });
});

describe("patchableIds and runLabel", () => {
  it("offer the devices with steps to flash now, and say what the run button does", () => {
    const device = (id: string) => ({
      id,
      address: { transport: "udp" as const, addr: "127.0.0.1:1337" },
      identity: {
        vendor: null,
        model: null,
        hardware_revision: null,
        serial_number: null,
        firmware_version: null,
        image_hash: null,
      },
      criticality: "normal" as const,
      windows: [],
      credential: null,
    });
    const v = { major: 1, minor: 0, revision: 0, build: 0 };
    const step = { bundle_id: "b", from: v, to: { ...v, minor: 1 }, cvss: 5, rollback: false };
    const plan = {
      created: "now",
      devices: [
        { device: device("a"), disposition: { disposition: "patch" as const, steps: [step], latest: v, short_reason: null } },
        { device: device("none"), disposition: { disposition: "patch" as const, steps: [], latest: v, short_reason: null } },
        { device: device("later"), disposition: { disposition: "scheduled" as const, steps: [step], not_before: "t" } },
        { device: device("b"), disposition: { disposition: "patch" as const, steps: [step], latest: v, short_reason: null } },
      ],
    } satisfies Plan;
    expect(patchableIds(plan)).toEqual(["a", "b"]);
    expect(patchableIds(null)).toEqual([]);
    expect(runLabel([], ["a", "b"])).toBe("Run session");
    expect(runLabel(["b"], ["a", "b"])).toBe("Flash b");
    expect(runLabel(["a", "b"], ["a", "b"])).toBe("Run session (2 devices)");
    expect(runLabel(["a", "b"], ["a", "b", "c"])).toBe("Run session (2 of 3 devices)");
  });
});

describe("noRollbackOf and modeText", () => {
  it("say what a device in serial recovery cannot do, and nothing for the others", () => {
    const device = (id: string, mode: "application" | "serial_recovery") => ({
      id,
      address: { transport: "serial" as const, port: `/dev/tty-${id}`, baud: 115200 },
      identity: {
        vendor: "Lab",
        model: "board",
        hardware_revision: "1",
        serial_number: null,
        firmware_version: null,
        image_hash: null,
        mode,
      },
      criticality: "normal" as const,
      windows: [],
      credential: null,
    });
    const up = { disposition: "up_to_date" as const, version: { major: 1, minor: 0, revision: 0, build: 0 } };
    const plan = {
      created: "now",
      devices: [
        { device: device("rec", "serial_recovery"), disposition: up, no_rollback: "in MCUboot serial recovery: no revert" },
        { device: device("app", "application"), disposition: up },
      ],
    } satisfies Plan;
    expect(noRollbackOf(plan, "rec")).toBe("in MCUboot serial recovery: no revert");
    expect(noRollbackOf(plan, "app")).toBe("");
    expect(noRollbackOf(null, "rec")).toBe("");
    expect(modeText("serial_recovery")).toContain("serial recovery");
    expect(modeText("application")).toBe("");
    expect(modeText(undefined)).toBe("");
  });
});

describe("syncStatus", () => {
  it("waits for the first event, then shows the last one", () => {
    expect(syncStatus(null, null)).toEqual({ kind: "", text: "waiting for the first sync…", tone: "muted" });
    expect(syncStatus({ kind: "synced", text: "synced: 3 event(s)", report: null }, null)).toEqual({
      kind: "synced",
      text: "synced: 3 event(s)",
      tone: "muted",
    });
    expect(syncStatus({ kind: "offline", text: "unreachable", report: null }, null).tone).toBe("error");
    expect(syncStatus({ kind: "failed", text: "boom", report: null }, null).tone).toBe("error");
    expect(syncStatus({ kind: "stopped", text: "automatic sync is off", report: null }, null).text).toBe("automatic sync is off");
  });
  it("says why sync is unavailable, before any event", () => {
    expect(syncStatus({ kind: "synced", text: "synced", report: null }, "no inventory token")).toEqual({
      kind: "unavailable",
      text: "sync unavailable: no inventory token",
      tone: "error",
    });
    expect(syncStatus(null, "").text).toBe("sync unavailable");
  });
});
