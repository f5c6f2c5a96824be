// Tests of the site store against a stand-in for the desktop shell: actions, events and the next
// step each error code leads to.
import { describe, expect, it, vi } from "vitest";
import type {
  BridgeError,
  DeviceStatus,
  LogVerification,
  Plan,
  SessionEventView,
  SessionFinished,
  SiteView,
  SyncEventView,
} from "./ipc";
import { SiteStore, type SiteApi } from "./site.svelte";

const view: SiteView = {
  devices: [],
  unreachable: [],
  bundles: [],
  refused: [],
  inventory: "http://127.0.0.1:1",
  auto_sync: true,
  sync_unavailable: null,
  work_order: null,
  missing: [],
  catalog_problem: null,
};
const v = (major: number, minor: number) => ({ major, minor, revision: 0, build: 0 });
const planned = (id: string, disposition: Plan["devices"][number]["disposition"]) => ({
  device: {
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
  },
  disposition,
});
const patch = {
  disposition: "patch" as const,
  steps: [{ bundle_id: "b", from: v(1, 4), to: v(1, 5), cvss: 7, rollback: false }],
  latest: v(1, 5),
  short_reason: null,
};
const plan: Plan = {
  created: "now",
  devices: [
    planned("sensor-01", patch),
    planned("sensor-04", patch),
    planned("gw-01", { disposition: "up_to_date", version: v(3, 0) }),
  ],
};
const reject = (code: string, message = code) => () => Promise.reject<never>({ code, message } satisfies BridgeError);

/** A stand-in shell: every command succeeds unless overridden; events are fired by the test. */
function shell(overrides: Partial<SiteApi> = {}) {
  const on: {
    session?: (e: SessionEventView) => void;
    finished?: (r: SessionFinished) => void;
    sync?: (e: SyncEventView) => void;
  } = {};
  const unlisten = vi.fn();
  const api: SiteApi = {
    appInfo: async () => ({ version: "1.2.3", data_dir: "/d", data_dir_source: "environment" }),
    site: async () => view,
    makePlan: async () => ({ id: "plan-1", plan }),
    runSession: vi.fn(async () => "session-1"),
    pauseSession: vi.fn(async () => true),
    resumeSession: vi.fn(async () => "session-1"),
    endSession: vi.fn(async () => "session-1"),
    setAutoSync: vi.fn(async (v: boolean) => v),
    syncNow: vi.fn(async () => {}),
    closeSession: vi.fn(async (reasons: Record<string, string>) => Object.keys(reasons)),
    verifyLog: async () => [check(null)],
    onSessionEvent: async (f) => ((on.session = f), unlisten),
    onSessionFinished: async (f) => ((on.finished = f), unlisten),
    onSync: async (f) => ((on.sync = f), unlisten),
    ...overrides,
  };
  return { api, on, unlisten };
}

const flush = () => new Promise((r) => setTimeout(r, 0));
const status = (device: string, s: DeviceStatus, text: string): SessionEventView => ({
  kind: "status",
  device,
  status: s,
  text,
});
const summary = { patched: 1, rolled_back: 1, failed: 0, skipped: 0, pending: 0, unverified: 0 };
const check = (problem: string | null): LogVerification => ({
  log_id: "0190a1b2-0000-7000-8000-000000000000",
  signer: "ab",
  verified: 3,
  ok: problem === null,
  problem,
  bad_seq: problem === null ? null : 2,
});

/** A store that has run a session in which sensor-04 rolled back and sensor-01 was patched. */
async function afterSession(api: SiteApi, on: ReturnType<typeof shell>["on"]) {
  const site = new SiteStore(api);
  site.start();
  await flush();
  await site.makePlan();
  await site.run();
  on.session!(status("sensor-01", { status: "patched", version: "1.5.0" }, "patched: 1.5.0"));
  on.session!(status("sensor-04", { status: "rolled_back", reason: "unhealthy" }, "rolled back: unhealthy"));
  on.finished!({ outcome: "done", summary });
  await flush();
  return site;
}

describe("SiteStore", () => {
  it("loads the version and the site, and stops listening when asked", async () => {
    const { api, unlisten } = shell();
    const site = new SiteStore(api);
    const stop = site.start();
    await flush();
    expect(site.info?.version).toBe("1.2.3");
    expect(site.view).toEqual(view);
    expect(site.autoSync).toBe(true);
    stop();
    await flush();
    expect(unlisten).toHaveBeenCalledTimes(3);
  });

  it("runs a session from the plan and follows its events to the end", async () => {
    const { api, on } = shell();
    const site = await afterSession(api, on);
    expect(api.runSession).toHaveBeenCalledWith("plan-1", true, ["sensor-01", "sensor-04"]);
    expect(site.busy).toBe(false);
    expect(site.sessionDone).toBe(true);
    expect(site.unpatched).toEqual(["sensor-04"]);
    expect(site.notes).toEqual([
      "sensor-01: patched: 1.5.0",
      "sensor-04: rolled back: unhealthy",
      "session finished: 1 patched, 1 rolled back, 0 failed, 0 skipped, 0 pending",
    ]);
    expect(site.error).toBeNull();
  });

  it("chooses every device the plan would flash, and lets the technician leave some out", async () => {
    const { api } = shell();
    const site = new SiteStore(api);
    await site.makePlan();
    expect(site.patchable).toEqual(["sensor-01", "sensor-04"]);
    expect(site.chosen).toEqual(["sensor-01", "sensor-04"]);
    site.choose("sensor-01", false);
    expect(site.chosen).toEqual(["sensor-04"]);
    site.choose("sensor-01", true);
    expect(site.chosen).toEqual(["sensor-01", "sensor-04"]);
    site.choose("sensor-04", false);
    site.choose("sensor-01", false);
    await site.run();
    expect(api.runSession).not.toHaveBeenCalled();
    site.choose("sensor-04", true);
    await site.run();
    expect(api.runSession).toHaveBeenCalledWith("plan-1", true, ["sensor-04"]);
  });

  it("flashes one device as a session of one", async () => {
    const { api } = shell();
    const site = new SiteStore(api);
    await site.makePlan();
    await site.flashOne("sensor-04");
    expect(api.runSession).toHaveBeenCalledWith("plan-1", true, ["sensor-04"]);
    expect(site.chosen).toEqual(["sensor-04"]);
    expect(site.busy).toBe(true);
  });

  it("highlights the reasons still missing after a refused close-out", async () => {
    const { api, on } = shell({ closeSession: reject("reasons_missing", "give a reason: missing for sensor-04") });
    const site = await afterSession(api, on);
    expect(site.needsReason).toEqual([]);
    await site.closeOut();
    expect(site.closeResult).toBe("give a reason: missing for sensor-04");
    expect(site.needsReason).toEqual(["sensor-04"]);
    site.reasons["sensor-04"] = "  ";
    expect(site.needsReason).toEqual(["sensor-04"]);
    site.reasons["sensor-04"] = "owner refused a second attempt";
    expect(site.needsReason).toEqual([]);
  });

  it("does not highlight reasons for other close-out errors, and reports the count when recorded", async () => {
    const { api, on } = shell({ closeSession: reject("no_session", "run a session first") });
    const site = await afterSession(api, on);
    await site.closeOut();
    expect(site.closeResult).toBe("run a session first");
    expect(site.needsReason).toEqual([]);

    const ok = shell();
    const done = await afterSession(ok.api, ok.on);
    done.reasons["sensor-04"] = "owner refused";
    await done.closeOut();
    expect(ok.api.closeSession).toHaveBeenCalledWith({ "sensor-04": "owner refused" });
    expect(done.closeResult).toBe("session closed out: 1 unpatched device(s) recorded with their reasons");
  });

  it("disables sync and says why when the shell answers sync_unavailable", async () => {
    const { api } = shell({ syncNow: reject("sync_unavailable", "no inventory token") });
    const site = new SiteStore(api);
    site.start();
    await flush();
    await site.syncNow();
    expect(site.syncRefused).toBe("no inventory token");
    expect(site.sync).toEqual({ kind: "unavailable", text: "sync unavailable: no inventory token", tone: "error" });
    expect(site.error).toBeNull();
  });

  it("shows other sync errors as errors", async () => {
    const { api } = shell({ setAutoSync: reject("sync", "sync state poisoned") });
    const site = new SiteStore(api);
    site.autoSync = false;
    await site.toggleSync();
    expect(site.error?.code).toBe("sync");
    expect(site.syncRefused).toBeNull();
    expect(site.autoSync).toBe(false);
  });

  it("turns automatic sync off and says so", async () => {
    const { api, on } = shell();
    const site = new SiteStore(api);
    site.start();
    await flush();
    on.sync!({ kind: "synced", text: "synced: 3 event(s) pushed, 0 pending", report: null });
    expect(site.sync.text).toBe("synced: 3 event(s) pushed, 0 pending");
    site.autoSync = false;
    await site.toggleSync();
    expect(api.setAutoSync).toHaveBeenCalledWith(false);
    expect(site.sync.text).toBe("automatic sync is off");
  });

  it("keeps the controls locked while a session already running finishes", async () => {
    const { api, on } = shell({ runSession: reject("busy", "a session is already running") });
    const site = new SiteStore(api);
    site.start();
    await flush();
    await site.makePlan();
    await site.run();
    expect(site.error?.code).toBe("busy");
    expect(site.busy).toBe(true);
    on.finished!({ outcome: "done", summary });
    expect(site.busy).toBe(false);
    expect(site.sessionDone).toBe(true);
  });

  it("shows the error a session ended with", async () => {
    const { api, on } = shell();
    const site = new SiteStore(api);
    site.start();
    await flush();
    await site.makePlan();
    await site.run();
    on.finished!({ outcome: "failed", error: { code: "log_unwritable", message: "the visit log cannot be written" } });
    expect(site.busy).toBe(false);
    expect(site.error?.code).toBe("log_unwritable");
    expect(site.notes[site.notes.length - 1]).toBe("session failed: the visit log cannot be written");
  });

  it("unlocks the controls after any other failure to start", async () => {
    const { api } = shell({ runSession: reject("keyring", "no technician key") });
    const site = new SiteStore(api);
    await site.makePlan();
    await site.run();
    expect(site.error?.code).toBe("keyring");
    expect(site.busy).toBe(false);
  });

  it("pauses the running session and resumes the latest unfinished one", async () => {
    const { api, on } = shell();
    const site = new SiteStore(api);
    site.start();
    await flush();
    await site.makePlan();
    await site.run();
    await site.pause();
    expect(api.pauseSession).toHaveBeenCalledOnce();
    expect(site.pausing).toBe(true);
    on.finished!({ outcome: "done", summary: { ...summary, pending: 3 } });
    expect(site.pausing).toBe(false);
    expect(site.busy).toBe(false);
    await site.resume();
    expect(api.resumeSession).toHaveBeenCalledOnce();
    expect(site.busy).toBe(true);
    expect(site.sessionDone).toBe(false);
  });

  it("ends a paused session: the close-out opens and says why", async () => {
    const { api } = shell();
    const site = new SiteStore(api);
    await site.end();
    expect(api.endSession).toHaveBeenCalledOnce();
    expect(site.sessionDone).toBe(true);
    expect(site.notes[site.notes.length - 1]).toContain("session session-1 ended");
    const refused = new SiteStore(shell({ endSession: reject("busy", "a session is running") }).api);
    await refused.end();
    expect(refused.error?.code).toBe("busy");
    expect(refused.sessionDone).toBe(false);
  });

  it("unlocks the controls when there is nothing to pause or resume", async () => {
    const { api } = shell({
      pauseSession: reject("no_session", "no session is running"),
      resumeSession: reject("no_session", "no such session in the local store"),
    });
    const site = new SiteStore(api);
    await site.pause();
    expect(site.pausing).toBe(false);
    expect(site.error?.code).toBe("no_session");
    await site.resume();
    expect(site.busy).toBe(false);
  });

  it("says whether the visit log verifies", async () => {
    const { api } = shell({ verifyLog: async () => [check(null), check("hash chain broken")] });
    const site = new SiteStore(api);
    await site.verify();
    expect(site.logOk).toBe(false);
  });
});
