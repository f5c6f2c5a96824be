// Tests of the Devices store against a stand-in for the desktop shell: streamed updates, the final
// report, errors and the search box.
import { describe, expect, it, vi } from "vitest";
import { DevicesStore, type DevicesApi } from "./devices.svelte";
import { device } from "./discovery.fixtures";
import type { BridgeError, DiscoveryReport, Update } from "./ipc";

function shell(discover: DevicesApi["discover"]) {
  const on: { update?: (u: Update) => void } = {};
  const unlisten = vi.fn();
  const api: DevicesApi = {
    discover,
    onDiscovery: async (f) => ((on.update = f), unlisten),
  };
  return { api, on, unlisten };
}

const flush = () => new Promise((r) => setTimeout(r, 0));

const sensor = device();
const stray = device({
  addresses: [{ transport: "udp", addr: "127.0.0.1:4009" }],
  identity: { ...device().identity, serial_number: "SN-STRAY" },
  matched: null,
});
const report: DiscoveryReport = {
  devices: [sensor, stray],
  missing: ["pump-ctl-01"],
  skipped: [],
  matched_against: "site demo-site",
  deadline_reached: false,
  elapsed_ms: 800,
};

describe("DevicesStore", () => {
  it("shows devices as they stream in, then the report with the missing", async () => {
    let finish: (r: DiscoveryReport) => void = () => {};
    const { api, on } = shell(() => new Promise((r) => (finish = r)));
    const store = new DevicesStore(api);
    store.start();
    await flush();
    expect(store.status).toBe("");

    const run = store.discover();
    expect(store.running).toBe(true);
    on.update!({ event: "device", device: sensor });
    expect(store.rows.map((r) => r.name)).toEqual(["sensor-01"]);
    expect(store.status).toBe("searching… 1 device(s) so far");
    on.update!({ event: "skipped", skipped: { candidate: "x", code: "no_answer", reason: "-" } });
    expect(store.rows).toHaveLength(1);

    finish(report);
    await run;
    expect(store.running).toBe(false);
    expect(store.rows.map((r) => r.name)).toEqual(["sensor-01", "unknown"]);
    expect(store.missing).toEqual(["pump-ctl-01"]);
    expect(store.status).toContain("2 device(s) found (1 in the inventory, 1 unknown), 1 missing");
    expect(store.hint).toContain("1 unknown device(s) may be missing ones");
  });

  it("ignores updates that arrive when no discovery runs", async () => {
    const { api, on } = shell(async () => report);
    const store = new DevicesStore(api);
    store.start();
    await flush();
    await store.discover();
    on.update!({ event: "device", device: device({ addresses: [{ transport: "udp", addr: "10.0.0.1:1337" }] }) });
    expect(store.found).toHaveLength(2);
  });

  it("filters rows and missing devices with the search box", async () => {
    const store = new DevicesStore(shell(async () => report).api);
    await store.discover();
    store.query = "unknown";
    expect(store.rows.map((r) => r.serial)).toEqual(["SN-STRAY"]);
    expect(store.missing).toEqual([]);
    store.query = "pump";
    expect(store.rows).toEqual([]);
    expect(store.missing).toEqual(["pump-ctl-01"]);
  });

  it("keeps the error code and runs again after a failure", async () => {
    const error: BridgeError = { code: "discover", message: "no such port" };
    const discover = vi.fn<DevicesApi["discover"]>().mockRejectedValueOnce(error).mockResolvedValueOnce(report);
    const store = new DevicesStore(shell(discover).api);
    await store.discover();
    expect(store.error).toEqual(error);
    expect(store.running).toBe(false);
    await store.discover();
    expect(store.error).toBeNull();
    expect(store.found).toHaveLength(2);
  });

  it("runs one discovery at a time", async () => {
    const discover = vi.fn(() => new Promise<DiscoveryReport>(() => {}));
    const store = new DevicesStore(shell(discover).api);
    void store.discover();
    void store.discover();
    expect(discover).toHaveBeenCalledTimes(1);
  });

  it("stops listening when stopped", async () => {
    const { api, unlisten } = shell(async () => report);
    const stop = new DevicesStore(api).start();
    stop();
    await flush();
    expect(unlisten).toHaveBeenCalled();
  });
});
