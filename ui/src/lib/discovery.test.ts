// Tests of the Devices screen's view logic: updates streaming in, rows, search and the summary.
import { describe, expect, it } from "vitest";
import {
  ambiguityHint,
  applyUpdate,
  deviceKey,
  discoveredRow,
  discoveryStatus,
  filterMissing,
  filterRows,
} from "./discovery";
import { device } from "./discovery.fixtures";
import type { DiscoveredDevice, DiscoveryReport } from "./ipc";

const gateway = device({
  addresses: [{ transport: "usb", vid: 0x1209, pid: 2, serial: "SN-GATEWAY-01" }],
  via: ["usb"],
  identity: {
    vendor: null,
    model: null,
    hardware_revision: null,
    serial_number: "SN-GATEWAY-01",
    firmware_version: null,
    image_hash: null,
  },
  bootloader: "DFU",
  matched: { device_id: "gateway-01", key: "serial_number" },
});
const stray = device({
  addresses: [{ transport: "udp", addr: "127.0.0.1:4009" }],
  identity: { ...device().identity, serial_number: "SN-STRAY", model: "lab_sensor" },
  matched: null,
});

function report(over: Partial<DiscoveryReport> = {}): DiscoveryReport {
  return {
    devices: [device(), gateway, stray],
    missing: ["pump-ctl-01"],
    skipped: [],
    matched_against: "site demo-site",
    deadline_reached: false,
    elapsed_ms: 1234,
    ...over,
  };
}

describe("applyUpdate", () => {
  it("appends new devices in the order they answer", () => {
    let list: DiscoveredDevice[] = [];
    list = applyUpdate(list, { event: "device", device: device() });
    list = applyUpdate(list, { event: "device", device: gateway });
    expect(list.map((d) => d.matched?.device_id)).toEqual(["sensor-01", "gateway-01"]);
  });

  it("replaces a device in place when it answers on one more transport", () => {
    const first = device();
    const both = device({
      addresses: [...first.addresses, { transport: "serial", port: "/dev/pts/3", baud: 115200 }],
      via: ["udp-probe", "serial"],
    });
    let list = applyUpdate([], { event: "device", device: first });
    list = applyUpdate(list, { event: "device", device: gateway });
    list = applyUpdate(list, { event: "device", device: both });
    expect(list).toHaveLength(2);
    expect(list[0].addresses).toHaveLength(2);
    expect(deviceKey(list[0])).toBe("udp 127.0.0.1:4001");
  });

  it("leaves the list alone for a skipped candidate", () => {
    const list = [device()];
    const skipped = { candidate: "/dev/pts/9", code: "no_answer", reason: "nothing answered" };
    expect(applyUpdate(list, { event: "skipped", skipped })).toBe(list);
  });
});

describe("discoveredRow", () => {
  it("shows the inventory match, identity and what the device runs", () => {
    expect(discoveredRow(device())).toEqual({
      key: "udp 127.0.0.1:4001",
      inventoryId: "sensor-01",
      name: "sensor-01",
      matchedBy: "serial number",
      identity: "Demo sensor rev 2",
      serial: "SN-SENSOR-01",
      version: "1.4.0",
      addresses: "udp 127.0.0.1:4001",
      bootloader: "MCUboot",
    });
  });

  it("marks a device the inventory does not know as unknown", () => {
    const r = discoveredRow(stray);
    expect(r.inventoryId).toBeNull();
    expect(r.name).toBe("unknown");
    expect(r.matchedBy).toBe("");
  });

  it("says '?' for a version a DFU device cannot report", () => {
    const r = discoveredRow(gateway);
    expect(r.version).toBe("?");
    expect(r.identity).toBe("");
    expect(r.addresses).toBe("usb 1209:0002");
  });
});

describe("filterRows", () => {
  const rows = [device(), gateway, stray].map(discoveredRow);

  it("keeps everything for an empty query", () => {
    expect(filterRows(rows, "  ")).toBe(rows);
  });

  it("matches every word, case-insensitively, across the columns", () => {
    expect(filterRows(rows, "GATEWAY").map((r) => r.name)).toEqual(["gateway-01"]);
    expect(filterRows(rows, "sensor 1.4").map((r) => r.name)).toEqual(["sensor-01", "unknown"]);
    expect(filterRows(rows, "dfu usb").map((r) => r.name)).toEqual(["gateway-01"]);
    expect(filterRows(rows, "4009").map((r) => r.serial)).toEqual(["SN-STRAY"]);
  });

  it("finds the unknown devices by the word unknown", () => {
    expect(filterRows(rows, "unknown").map((r) => r.serial)).toEqual(["SN-STRAY"]);
  });

  it("filters the missing ids with the same words", () => {
    expect(filterMissing(["pump-ctl-01", "sensor-09"], "pump")).toEqual(["pump-ctl-01"]);
    expect(filterMissing(["pump-ctl-01"], "")).toEqual(["pump-ctl-01"]);
  });
});

describe("discoveryStatus", () => {
  it("counts the devices so far while the scan runs", () => {
    expect(discoveryStatus([device()], null)).toBe("searching… 1 device(s) so far");
  });

  it("sums up the report", () => {
    expect(discoveryStatus([], report())).toBe(
      "3 device(s) found (2 in the inventory, 1 unknown), 1 missing, in 1.2 s, matched against site demo-site",
    );
  });

  it("says when the deadline cut the scan short", () => {
    expect(discoveryStatus([], report({ deadline_reached: true }))).toContain("deadline");
  });
});

describe("ambiguityHint", () => {
  it("explains unknown devices next to missing ones", () => {
    expect(ambiguityHint(report())).toContain("1 unknown device(s) may be missing ones");
  });

  it("says nothing without unknown or without missing devices", () => {
    expect(ambiguityHint(null)).toBeNull();
    expect(ambiguityHint(report({ missing: [] }))).toBeNull();
    expect(ambiguityHint(report({ devices: [device()] }))).toBeNull();
  });
});
