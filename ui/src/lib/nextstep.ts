// What the window offers after a failed command, chosen from the error's code (never its message).

import type { BridgeError } from "./ipc";

export type NextStep =
  /** Close-out refused: highlight the reason inputs of the devices that still need one. */
  | { kind: "give_reasons" }
  /** Sync cannot run on this installation: disable the sync buttons and show why. */
  | { kind: "sync_unavailable" }
  /** A session is already running: keep the session controls locked until it finishes. */
  | { kind: "wait_for_session"; hint: string }
  /** No next step beyond the message itself, which says what to do. */
  | { kind: "show_message" };

export function nextStep(error: BridgeError): NextStep {
  switch (error.code) {
    case "reasons_missing":
      return { kind: "give_reasons" };
    case "sync_unavailable":
      return { kind: "sync_unavailable" };
    case "busy":
      return {
        kind: "wait_for_session",
        hint: "wait for it to finish: its progress shows in the device table",
      };
    default:
      return { kind: "show_message" };
  }
}

/** The hint to show under an error, when its next step has one. */
export function hintFor(error: BridgeError | null): string | null {
  if (!error) return null;
  const step = nextStep(error);
  return "hint" in step ? step.hint : null;
}
