// Calls into the desktop shell: the one place that names its commands and events. Errors cross
// the bridge as {code, message}; the UI branches on `code`, never on message text. The types are
// generated from the Rust types (./ipc).
import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type {
  AppInfo,
  BridgeError,
  CredentialsView,
  DiscoveryReport,
  DiscoverySettings,
  ExportView,
  HomeView,
  LogVerification,
  Mode,
  PlanView,
  SessionEventView,
  SessionFinished,
  SiteView,
  SyncEventView,
  SyncReportView,
  SyncSettings,
  Update,
  VisitTimeline,
} from "./ipc";

/** Normalise anything a command rejects with into a BridgeError. */
export function toBridgeError(e: unknown): BridgeError {
  if (e && typeof e === "object" && "code" in e && "message" in e) {
    const { code, message } = e as { code: unknown; message: unknown };
    if (typeof code === "string" && typeof message === "string") return { code, message };
  }
  if (typeof e === "string") return { code: "bridge", message: e };
  if (e instanceof Error) return { code: "bridge", message: e.message };
  return { code: "bridge", message: "the desktop shell returned an unexpected error" };
}

/** Describe where the data directory came from, for the status line. */
export function describeDataDir(info: AppInfo): string {
  const origin =
    info.data_dir_source === "environment" ? "set by FIELDPATCH_DATA_DIR" : "OS default";
  return `${info.data_dir} (${origin})`;
}

async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw toBridgeError(e);
  }
}

export const appInfo = () => call<AppInfo>("app_info");
export const mode = () => call<Mode>("mode");
/** Real mode: the inventory server, the token's presence, the pinned key, the trust store. */
export const settings = () => call<SyncSettings>("settings");
/** Real mode: keep the token in the OS keyring and remember the server. */
export const login = (server: string, token: string, caPath: string | null = null) =>
  call<SyncSettings>("login", { server, token, caPath });
export const site = () => call<SiteView>("site");
export const makePlan = () => call<PlanView>("plan");
/** Run the plan the app made (by its id: the window never sends a plan). */
export const runSession = (planId: string, canary: boolean, devices: string[] | null = null) =>
  call<string>("run_session", { planId, canary, devices });
/** Pause the running session: devices in flight finish, no new one starts. */
export const pauseSession = () => call<boolean>("pause_session");
/** Resume the latest unfinished session (paused, or cut short when the app closed). */
export const resumeSession = () => call<string>("resume_session");
/** End the paused session for good: devices not attempted are skipped (reasons at close-out). */
export const endSession = () => call<string>("end_session");
export const setAutoSync = (on: boolean) => call<boolean>("set_auto_sync", { on });
export const syncNow = () => call<void>("sync_now");
export const closeSession = (reasons: Record<string, string>) =>
  call<string[]>("close_session", { reasons });
export const verifyLog = () => call<LogVerification[]>("verify_log");
/** The home screen: pending events, last sync, visits, work orders, expiry, online or not. */
export const home = () => call<HomeView>("home");
/** A visit's events and its log's verification (the newest visit without an id). */
export const visitLog = (visitId: string | null) => call<VisitTimeline>("visit_log", { visitId });
/** Real mode: sync now with the inventory; the report also arrives as a `sync` event. */
export const syncOnce = () => call<SyncReportView>("sync_once");
/** Write a visit's audit export to `path`, then check the file with the offline verifier. */
export const exportVisit = (visitId: string, path: string) =>
  call<ExportView>("export_visit", { visitId, path });
/** The native Save-as dialog, opened at `suggested`: the chosen full path, null when cancelled. */
export const chooseExportPath = (suggested: string) => call<string | null>("choose_export_path", { suggested });
/** Real mode: the visit is for this synced work order (null: an ad-hoc visit). */
export const chooseWorkOrder = (workOrder: string | null) =>
  call<string | null>("choose_work_order", { workOrder });
/** Real mode: the device and site credentials in the OS keyring, by name (never values). */
export const credentials = () => call<CredentialsView>("credentials");
/** Real mode: keep a device or site credential in the OS keyring. */
export const setCredential = (name: string, secret: string) =>
  call<CredentialsView>("set_credential", { name, secret });
/** Real mode: remove a device or site credential from the OS keyring. */
export const deleteCredential = (name: string) => call<CredentialsView>("delete_credential", { name });
/** Real mode: where discovery looks. */
export const discoverySettings = () => call<DiscoverySettings>("discovery_settings");
/** Real mode: check and save where discovery looks; returns them as saved. */
export const setDiscoverySettings = (settings: DiscoverySettings) =>
  call<DiscoverySettings>("set_discovery_settings", { settings });
/** Find the site's devices; each arrives as a `discovery` event, the whole report at the end. */
export const discover = () => call<DiscoveryReport>("discover");

export function onSessionEvent(f: (e: SessionEventView) => void): Promise<UnlistenFn> {
  return listen<SessionEventView>("session", (e) => f(e.payload));
}

export function onSessionFinished(f: (r: SessionFinished) => void): Promise<UnlistenFn> {
  return listen<SessionFinished>("session-finished", (e) => f(e.payload));
}

export function onSync(f: (e: SyncEventView) => void): Promise<UnlistenFn> {
  return listen<SyncEventView>("sync", (e) => f(e.payload));
}

export function onDiscovery(f: (u: Update) => void): Promise<UnlistenFn> {
  return listen<Update>("discovery", (e) => f(e.payload));
}
