// Calls into the desktop shell. Errors cross the bridge as {code, message}; the UI branches on
// `code`, never on message text.
import { invoke } from "@tauri-apps/api/core";

export interface AppInfo {
  version: string;
  data_dir: string;
  data_dir_source: "environment" | "os_convention";
}

export interface BridgeError {
  code: string;
  message: string;
}

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

export async function appInfo(): Promise<AppInfo> {
  try {
    return await invoke<AppInfo>("app_info");
  } catch (e) {
    throw toBridgeError(e);
  }
}
