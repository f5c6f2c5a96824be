// Tests of the home store against a stand-in for the desktop shell: the overview, sync now in
// each mode (its report), a visit's log and its export with the verifier's verdict.
import { describe, expect, it, vi } from "vitest";
import type { BridgeError, ExportView, SyncEventView, SyncReportView } from "./ipc";
import { homeView, timeline } from "./home.fixtures";
import { HomeStore, type HomeApi } from "./home.svelte";

const report: SyncReportView = {
  accepted: 7,
  pending: 0,
  rejected: [{ log_id: "l", seq: 9, code: "bad_signature", reason: "signature does not match" }],
  retryable: [],
  not_applied: [],
  devices: 6,
  work_orders: 1,
  catalog: 2,
};
const exported: ExportView = {
  path: "/data/exports/visit-0190bbbb.tar",
  bytes: 4096,
  visit_id: "0190bbbb-1111-7000-8000-000000000002",
  events: 4,
  devices: 1,
  fingerprint: "f".repeat(64),
  server_key: null,
  check: { result: "pass", events: 4, devices: 1, fingerprint: "f".repeat(64), countersigned: false },
};

function shell(overrides: Partial<HomeApi> = {}) {
  const on: { sync?: (e: SyncEventView) => void } = {};
  const api: HomeApi = {
    home: vi.fn(async () => homeView({ pending_events: 3 })),
    visitLog: vi.fn(async () => timeline(true)),
    syncOnce: vi.fn(async () => report),
    syncNow: vi.fn(async () => {}),
    exportVisit: vi.fn(async () => exported),
    chooseExportPath: vi.fn(async () => "/media/usb/audit/site-7.tar"),
    onSync: async (f) => ((on.sync = f), () => {}),
    ...overrides,
  };
  return { api, on };
}
const flush = () => new Promise((r) => setTimeout(r, 0));

describe("HomeStore", () => {
  it("loads the overview and keeps a failure's code", async () => {
    const { api } = shell();
    const home = new HomeStore("demo", api);
    home.start();
    await flush();
    expect(home.view?.overview.pending_events).toBe(3);
    const failing = new HomeStore("real", shell({ home: () => Promise.reject<never>({ code: "store", message: "locked" } satisfies BridgeError) }).api);
    await failing.load();
    expect(failing.error?.code).toBe("store");
    expect(failing.view).toBeNull();
  });

  it("keeps the newest overview when answers arrive out of order", async () => {
    const answers: ((v: ReturnType<typeof homeView>) => void)[] = [];
    const { api } = shell({ home: () => new Promise((r) => answers.push(r)) });
    const home = new HomeStore("real", api);
    const first = home.load();
    const second = home.load();
    answers[1](homeView({ pending_events: 2 }));
    await second;
    answers[0](homeView({ pending_events: 1 }));
    await first;
    expect(home.view?.overview.pending_events).toBe(2);
    expect(home.loading).toBe(false);
  });

  it("syncs once in real mode and shows the report, then reloads the overview", async () => {
    const { api } = shell();
    const home = new HomeStore("real", api);
    await home.sync();
    expect(api.syncOnce).toHaveBeenCalledOnce();
    expect(api.syncNow).not.toHaveBeenCalled();
    expect(home.report).toEqual(report);
    expect(home.syncing).toBe(false);
    expect(api.home).toHaveBeenCalled();
  });

  it("wakes automatic sync in the demo; the report comes with the synced event", async () => {
    const { api, on } = shell();
    const home = new HomeStore("demo", api);
    home.start();
    await flush();
    await home.sync();
    expect(api.syncNow).toHaveBeenCalledOnce();
    expect(home.syncing).toBe(true);
    on.sync!({ kind: "reachable", text: "server reachable: syncing", report: null });
    expect(home.syncing).toBe(true);
    on.sync!({ kind: "synced", text: "synced: pushed 7", report });
    expect(home.syncing).toBe(false);
    expect(home.report).toEqual(report);
    expect(home.syncText).toBe("synced: pushed 7");
  });

  it("says why a sync failed", async () => {
    const { api } = shell({ syncOnce: () => Promise.reject<never>({ code: "unauthorized", message: "ask for a new token" }) });
    const home = new HomeStore("real", api);
    await home.sync();
    expect(home.syncText).toBe("sync failed: ask for a new token");
    expect(home.syncing).toBe(false);
  });

  it("shows a visit's log and exports it to the suggested file", async () => {
    const { api } = shell();
    const home = new HomeStore("demo", api);
    await home.load();
    await home.showVisit(null);
    expect(home.visitId).toBe("0190bbbb-1111-7000-8000-000000000002");
    expect(home.exportTo).toBe("/data/exports/visit-0190bbbb.tar");
    await home.exportShown();
    expect(api.exportVisit).toHaveBeenCalledWith("0190bbbb-1111-7000-8000-000000000002", "/data/exports/visit-0190bbbb.tar");
    expect(home.exported?.check.result).toBe("pass");
  });

  it("exports to the file chosen in the Save-as dialog, and does nothing when it is cancelled", async () => {
    const { api } = shell();
    const home = new HomeStore("demo", api);
    await home.load();
    await home.showVisit(null);
    await home.chooseAndExport();
    expect(api.chooseExportPath).toHaveBeenCalledWith("/data/exports/visit-0190bbbb.tar");
    expect(home.exportTo).toBe("/media/usb/audit/site-7.tar");
    expect(api.exportVisit).toHaveBeenCalledWith("0190bbbb-1111-7000-8000-000000000002", "/media/usb/audit/site-7.tar");
    expect(home.exported?.check.result).toBe("pass");

    // While the dialog is open, a second "Save as…" opens no other.
    let answer: (p: string | null) => void = () => {};
    const slow = shell({ chooseExportPath: vi.fn(() => new Promise<string | null>((r) => (answer = r))) }).api;
    const waiting = new HomeStore("demo", slow);
    await waiting.load();
    await waiting.showVisit(null);
    const first = waiting.chooseAndExport();
    expect(waiting.choosing).toBe(true);
    await waiting.chooseAndExport();
    expect(slow.chooseExportPath).toHaveBeenCalledTimes(1);
    answer(null);
    await first;
    expect(waiting.choosing).toBe(false);

    const cancelled = shell({ chooseExportPath: vi.fn(async () => null) }).api;
    const other = new HomeStore("demo", cancelled);
    await other.load();
    await other.showVisit(null);
    await other.chooseAndExport();
    expect(other.exportTo).toBe("/data/exports/visit-0190bbbb.tar");
    expect(cancelled.exportVisit).not.toHaveBeenCalled();
    expect(other.exported).toBeNull();

    const broken = shell({ chooseExportPath: () => Promise.reject<never>({ code: "dialog_closed", message: "type the file's full path instead" }) }).api;
    const third = new HomeStore("demo", broken);
    await third.load();
    await third.showVisit(null);
    await third.chooseAndExport();
    expect(third.exportError?.code).toBe("dialog_closed");
    expect(broken.exportVisit).not.toHaveBeenCalled();
  });

  it("keeps an export's error and a visit log's error", async () => {
    const { api } = shell({
      exportVisit: () => Promise.reject<never>({ code: "key_mismatch", message: "export it on the laptop that holds that key" }),
    });
    const home = new HomeStore("demo", api);
    await home.load();
    await home.showVisit(null);
    await home.exportShown();
    expect(home.exportError?.code).toBe("key_mismatch");
    expect(home.exported).toBeNull();
    const none = new HomeStore("demo", shell({ visitLog: () => Promise.reject<never>({ code: "invalid_input", message: "no visit yet" }) }).api);
    await none.showVisit(null);
    expect(none.timeline).toBeNull();
    expect(none.timelineError?.message).toBe("no visit yet");
  });
});
