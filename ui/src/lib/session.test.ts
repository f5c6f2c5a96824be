import { describe, expect, it } from "vitest";
import type { SessionEventView } from "./ipc";
import { addressText, applyEvent, etaSecs, percent, planText, rateText, type DeviceRow } from "./session";

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
    expect(
      planText({ disposition: "unpatchable", why: { reason: "missing_credential", name: "pump-key" } }),
    ).toBe("cannot patch: missing credential");
  });
});

describe("applyEvent", () => {
  it("tracks phase, bytes and final status per device and reports notes", () => {
    const rows: Record<string, DeviceRow> = {};
    expect(applyEvent(rows, { kind: "phase", device: "d1", name: "upload" })).toBeNull();
    applyEvent(rows, { kind: "transfer", device: "d1", done: 512, total: 2048 });
    expect(percent(rows.d1)).toBe(25);
    const note = applyEvent(rows, {
      kind: "status",
      device: "d1",
      status: { status: "patched", version: "1.5.0" },
      text: "patched: 1.5.0",
    });
    expect(note).toBe("d1: patched: 1.5.0");
    expect(percent(rows.d1)).toBe(100);
    expect(rows.d1.phase).toBe("upload");
    expect(rows.d1.status).toEqual({ status: "patched", version: "1.5.0" });
    expect(applyEvent(rows, { kind: "note", device: null, text: "canary: d1" })).toBe("canary: d1");
    expect(applyEvent(rows, { kind: "note", device: "d1", text: "retrying" })).toBe("d1: retrying");
  });
  it("shows a status as the core words it", () => {
    const rows: Record<string, DeviceRow> = {};
    const e: SessionEventView = {
      kind: "status",
      device: "sensor-04",
      status: { status: "rolled_back", reason: "unhealthy" },
      text: "rolled back: unhealthy",
    };
    expect(applyEvent(rows, e)).toBe("sensor-04: rolled back: unhealthy");
    expect(rows["sensor-04"].result).toBe("rolled back: unhealthy");
    expect(rows["sensor-04"].done).toBe(0);
  });
  it("never divides by zero", () => {
    expect(percent(undefined)).toBe(0);
    expect(percent({ phase: "", done: 0, total: 0, status: null, result: "" })).toBe(0);
  });
});

describe("rate and time left", () => {
  const transfer = (done: number, total = 100 * 1024): SessionEventView => ({ kind: "transfer", device: "d", done, total });
  it("measure the transfer from its first report and count down", () => {
    const rows: Record<string, DeviceRow> = {};
    applyEvent(rows, transfer(0), 1000);
    expect(rateText(rows.d)).toBe("");
    expect(etaSecs(rows.d)).toBeNull();
    applyEvent(rows, transfer(20 * 1024), 3000);
    expect(rows.d.rate).toBe(10 * 1024);
    expect(etaSecs(rows.d)).toBe(8);
    expect(rateText(rows.d)).toBe("10.0 KiB/s, about 8 s left");
  });
  it("start over when a transfer goes back, and stop at the end", () => {
    const rows: Record<string, DeviceRow> = {};
    applyEvent(rows, transfer(50 * 1024), 0);
    applyEvent(rows, transfer(10 * 1024), 1000);
    expect(rows.d.rate).toBeUndefined();
    applyEvent(rows, transfer(100 * 1024), 2000);
    expect(rows.d.rate).toBe(90 * 1024);
    expect(etaSecs(rows.d)).toBeNull();
    expect(rateText(rows.d)).toBe("90.0 KiB/s");
  });
  it("say minutes for long transfers and MiB/s for fast ones", () => {
    const slow: DeviceRow = { phase: "upload", done: 0, total: 10 * 1024 * 1024, status: null, result: "", rate: 20 * 1024 };
    expect(rateText(slow)).toBe("20.0 KiB/s, about 9 min left");
    const fast: DeviceRow = { ...slow, rate: 3 * 1024 * 1024 };
    expect(rateText(fast)).toBe("3.0 MiB/s, about 4 s left");
  });
});

describe("labels", () => {
  it("names addresses", () => {
    expect(addressText({ transport: "usb", vid: 0x1209, pid: 2, serial: null })).toBe("usb 1209:0002");
    expect(addressText({ transport: "udp", addr: "127.0.0.1:1337" })).toBe("udp 127.0.0.1:1337");
    expect(addressText({ transport: "swupdate", url: "http://10.0.0.5:8080", user: null })).toBe(
      "swupdate http://10.0.0.5:8080",
    );
    expect(addressText({ transport: "serial", port: "/dev/pts/3", baud: 115200 })).toBe(
      "serial /dev/pts/3 @ 115200",
    );
    expect(addressText({ transport: "esp", port: "/dev/ttyUSB0", baud: null, reset: "classic", chip: "esp32c3" })).toBe(
      "esp esp32c3 /dev/ttyUSB0",
    );
    expect(addressText({ transport: "esp", port: "/dev/ttyACM0", baud: 460800, reset: "usb-jtag", chip: null })).toBe(
      "esp /dev/ttyACM0 @ 460800",
    );
  });
});
