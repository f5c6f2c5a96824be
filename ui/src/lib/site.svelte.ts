// The site as the window works on it: the state every component reads and the actions that change
// it (identify, plan, run, close out, verify, sync). Components get one `SiteStore` from App.svelte.

import * as bridge from "./bridge";
import type { AppInfo, BridgeError, Plan, SiteView, SyncEventView } from "./ipc";
import { nextStep } from "./nextstep";
import { applyEvent, type DeviceRow } from "./session";
import {
  appendNote,
  closeOutText,
  finishedNote,
  logVerifies,
  missingReasons,
  patchableIds,
  SYNC_OFF,
  syncStatus,
  unpatchedIds,
} from "./siteview";

/** The commands and events the store uses: the desktop shell's bridge, or a stand-in. */
export type SiteApi = Pick<
  typeof bridge,
  | "appInfo"
  | "site"
  | "makePlan"
  | "runSession"
  | "pauseSession"
  | "resumeSession"
  | "endSession"
  | "setAutoSync"
  | "syncNow"
  | "closeSession"
  | "verifyLog"
  | "onSessionEvent"
  | "onSessionFinished"
  | "onSync"
>;

export class SiteStore {
  info: AppInfo | null = $state(null);
  error: BridgeError | null = $state(null);
  view: SiteView | null = $state(null);
  plan: Plan | null = $state(null);
  /** The id the app gave the plan shown: what "Run" names. */
  planId: string | null = $state(null);
  rows: Record<string, DeviceRow> = $state({});
  /** The devices of the plan the next session flashes (all it would flash, once planned). */
  chosen: string[] = $state([]);
  notes: string[] = $state([]);
  busy = $state(false);
  canary = $state(true);
  sessionDone = $state(false);
  /** Whether a pause was asked of the running session. */
  pausing = $state(false);
  logOk: boolean | null = $state(null);
  autoSync = $state(true);
  syncState: SyncEventView | null = $state(null);
  /** Why sync is unavailable, once a sync command answered `sync_unavailable`. */
  syncRefused: string | null = $state(null);
  reasons: Record<string, string> = $state({});
  /** The work order the visit is for (real mode; null: an ad-hoc visit). */
  workOrder: string | null = $state(null);
  closeResult: string | null = $state(null);
  /** Whether the last close-out was refused for missing reasons. */
  reasonsRefused = $state(false);

  /** The devices the plan would flash now: what the technician chooses from. */
  readonly patchable: string[] = $derived(patchableIds(this.plan));
  /** Devices the session left unpatched: each needs a reason before the close-out. */
  readonly unpatched: string[] = $derived(unpatchedIds(this.rows, this.view?.missing ?? []));
  /** Devices whose reason inputs are highlighted after a refused close-out. */
  readonly needsReason: string[] = $derived(
    this.reasonsRefused ? missingReasons(this.unpatched, this.reasons) : [],
  );
  /** The sync status line. */
  readonly sync = $derived(syncStatus(this.syncState, this.syncRefused));

  #api: SiteApi;

  constructor(api: SiteApi = bridge) {
    this.#api = api;
  }

  /** Load the version and the site, and follow session and sync events; returns the stop. */
  start(): () => void {
    this.#api.appInfo().then(
      (i) => (this.info = i),
      (e) => this.#fail(e),
    );
    this.identify();
    const stop = [
      this.#api.onSessionEvent((e) => {
        const note = applyEvent(this.rows, e);
        if (note) this.notes = appendNote(this.notes, note);
      }),
      this.#api.onSync((e) => (this.syncState = e)),
      this.#api.onSessionFinished((r) => {
        this.busy = false;
        this.pausing = false;
        this.sessionDone = true;
        this.notes = [...this.notes, finishedNote(r)];
        if (r.outcome === "failed") this.error = r.error;
        this.identify();
      }),
    ];
    return () => stop.forEach((p) => p.then((f) => f()));
  }

  /** Identify the site's devices (what each runs now). */
  identify(): Promise<void> {
    return this.#api.site().then(
      (v) => {
        this.view = v;
        this.autoSync = v.auto_sync;
        this.workOrder = v.work_order;
      },
      (e) => this.#fail(e),
    );
  }

  async makePlan(): Promise<void> {
    this.error = null;
    const made = await this.#api.makePlan().catch((e) => (this.#fail(e), null));
    this.plan = made?.plan ?? null;
    this.planId = made?.id ?? null;
    this.chosen = patchableIds(this.plan);
  }

  /** Choose, or leave out, one device of the plan for the next session. */
  choose(id: string, on: boolean): void {
    const rest = this.chosen.filter((c) => c !== id);
    this.chosen = on ? this.patchable.filter((p) => p === id || rest.includes(p)) : rest;
  }

  /** Flash this one device now: a session of one, with the same checks and log as any. */
  flashOne(id: string): Promise<void> {
    this.chosen = [id];
    return this.run();
  }

  /**
   * Run a session on the plan with the chosen devices (the plan's others are skipped as not
   * chosen); progress and the end arrive as events.
   */
  async run(): Promise<void> {
    if (!this.plan || !this.planId || this.chosen.length === 0) return;
    this.error = null;
    this.busy = true;
    this.sessionDone = false;
    this.rows = {};
    this.notes = [];
    this.reasons = {};
    this.closeResult = null;
    this.reasonsRefused = false;
    const devices = $state.snapshot(this.chosen);
    await this.#api.runSession(this.planId, this.canary, devices).catch((e) => this.#fail(e));
  }

  /** Pause the running session: devices in flight finish, no new one starts. */
  async pause(): Promise<void> {
    this.pausing = true;
    await this.#api.pauseSession().catch((e) => ((this.pausing = false), this.#fail(e)));
  }

  /** Resume the latest unfinished session where it stopped (also after a restart of the app). */
  async resume(): Promise<void> {
    this.error = null;
    this.busy = true;
    this.sessionDone = false;
    this.closeResult = null;
    this.reasonsRefused = false;
    await this.#api.resumeSession().catch((e) => ((this.busy = false), this.#fail(e)));
  }

  /** End the paused session for good: its devices not attempted are skipped; close out next. */
  async end(): Promise<void> {
    this.error = null;
    try {
      const id = await this.#api.endSession();
      this.sessionDone = true;
      this.closeResult = null;
      this.notes = appendNote(this.notes, `session ${id} ended: give a reason for each device it did not patch`);
    } catch (e) {
      this.#fail(e as BridgeError);
    }
  }

  /** Record the technician's reason for every unpatched device of the last session. */
  async closeOut(): Promise<void> {
    try {
      const recorded = await this.#api.closeSession($state.snapshot(this.reasons));
      this.reasonsRefused = false;
      this.closeResult = closeOutText(recorded);
    } catch (e) {
      const error = e as BridgeError;
      this.reasonsRefused = nextStep(error).kind === "give_reasons";
      this.closeResult = error.message;
    }
  }

  async verify(): Promise<void> {
    const checks = await this.#api.verifyLog().catch((e) => (this.#fail(e), null));
    if (checks) this.logOk = logVerifies(checks);
  }

  /** Apply the auto-sync checkbox (bound to `autoSync`) to the shell. */
  async toggleSync(): Promise<void> {
    this.autoSync = await this.#api
      .setAutoSync(this.autoSync)
      .catch((e) => (this.#syncFailed(e), false));
    if (!this.autoSync) this.syncState = SYNC_OFF;
  }

  syncNow(): Promise<void> {
    return this.#api.syncNow().catch((e) => this.#syncFailed(e));
  }

  #syncFailed(e: BridgeError) {
    if (nextStep(e).kind === "sync_unavailable") this.syncRefused = e.message;
    else this.#fail(e);
  }

  #fail(e: BridgeError) {
    this.error = e;
    this.busy = nextStep(e).kind === "wait_for_session";
  }
}
