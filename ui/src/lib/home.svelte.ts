// The state behind the home and visit-log screens: the overview (online, pending events, last
// sync, visits, work orders, expiry), the chosen visit's timeline with its chain verification, the
// last sync report, and the audit export of a visit with the offline verifier's verdict.

import * as bridge from "./bridge";
import { exportPath } from "./home";
import type { BridgeError, ExportView, HomeView, Mode, SyncReportView, VisitTimeline } from "./ipc";

export type HomeApi = Pick<typeof bridge, "home" | "visitLog" | "syncOnce" | "syncNow" | "exportVisit" | "chooseExportPath" | "onSync">;

export class HomeStore {
  view: HomeView | null = $state(null);
  error: BridgeError | null = $state(null);
  loading = $state(false);
  /** The visit whose log is shown (null: the newest). */
  visitId: string | null = $state(null);
  timeline: VisitTimeline | null = $state(null);
  timelineError: BridgeError | null = $state(null);
  /** The last sync's report, and the last sync line. */
  report: SyncReportView | null = $state(null);
  syncText = $state("");
  syncing = $state(false);
  /** The file the export goes to (suggested from the export folder and the visit). */
  exportTo = $state("");
  exporting = $state(false);
  /** The Save-as dialog is open. */
  choosing = $state(false);
  exported: ExportView | null = $state(null);
  exportError: BridgeError | null = $state(null);

  #api: HomeApi;
  #mode: Mode;
  /** Loads started, so that an older answer never replaces a newer one. */
  #loads = 0;

  constructor(mode: Mode, api: HomeApi = bridge) {
    this.#mode = mode;
    this.#api = api;
  }

  /** Load the overview and follow sync events (a finished sync reloads it); returns the stop. */
  start(): () => void {
    this.load();
    const stop = this.#api.onSync((e) => {
      this.syncText = e.text;
      if (e.kind !== "reachable" && e.kind !== "probing") this.syncing = false;
      if (e.report) {
        this.report = e.report;
        this.load();
      }
    });
    return () => void stop.then((f) => f());
  }

  async load(): Promise<void> {
    const n = ++this.#loads;
    this.loading = true;
    try {
      const view = await this.#api.home();
      if (n !== this.#loads) return;
      this.view = view;
      this.error = null;
    } catch (e) {
      if (n === this.#loads) this.error = e as BridgeError;
    } finally {
      if (n === this.#loads) this.loading = false;
    }
  }

  /** Sync now: one sync in real mode (its report comes back), a wake-up of automatic sync in the
   *  demo (its report arrives as an event). */
  async sync(): Promise<void> {
    this.syncing = true;
    this.syncText = "syncing…";
    try {
      if (this.#mode === "real") {
        this.report = await this.#api.syncOnce();
        this.syncing = false;
        await this.load();
      } else {
        await this.#api.syncNow();
      }
    } catch (e) {
      this.syncing = false;
      this.syncText = `sync failed: ${(e as BridgeError).message}`;
    }
  }

  /** Show visit `id`'s log (the newest visit with null). */
  async showVisit(id: string | null): Promise<void> {
    this.visitId = id;
    this.exported = null;
    this.exportError = null;
    try {
      this.timeline = await this.#api.visitLog(id);
      this.timelineError = null;
      this.visitId = this.timeline.visit.visit_id;
      if (this.view) this.exportTo = exportPath(this.view.export_dir, this.timeline.visit.visit_id);
    } catch (e) {
      this.timeline = null;
      this.timelineError = e as BridgeError;
    }
  }

  /** "Save as…": the native dialog, opened at `exportTo`; a chosen file becomes `exportTo` and
   *  the visit is exported there at once (cancelled: nothing changes). */
  async chooseAndExport(): Promise<void> {
    if (!this.timeline || this.exporting || this.choosing) return;
    this.exportError = null;
    let chosen: string | null;
    this.choosing = true;
    try {
      chosen = await this.#api.chooseExportPath(this.exportTo.trim());
    } catch (e) {
      this.exportError = e as BridgeError;
      return;
    } finally {
      this.choosing = false;
    }
    if (chosen === null) return;
    this.exportTo = chosen;
    await this.exportShown();
  }

  /** Export the shown visit to `exportTo` and check the file offline. */
  async exportShown(): Promise<void> {
    if (!this.timeline || !this.exportTo.trim() || this.exporting) return;
    this.exporting = true;
    this.exported = null;
    this.exportError = null;
    try {
      this.exported = await this.#api.exportVisit(this.timeline.visit.visit_id, this.exportTo.trim());
    } catch (e) {
      this.exportError = e as BridgeError;
    } finally {
      this.exporting = false;
    }
  }
}
