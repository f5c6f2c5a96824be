// Pure view logic for the settings screen (real mode): what the window says about the inventory
// server, the token, the pinned server key and the trust store in force, and what it checks
// before a login (unit-tested; no Tauri calls here).

import type { SyncSettings, TrustSummary } from "./ipc";

/** Why the login form cannot be sent yet, or null when it can. */
export function loginProblem(server: string, token: string): string | null {
  const url = server.trim();
  if (!url) return "enter the inventory server's URL (https://…)";
  if (!/^https?:\/\/[^\s/]+/.test(url)) return "the server URL starts with https:// (or http:// on this machine)";
  if (!token.trim()) return "paste the sync token from the inventory team";
  return null;
}

/** One line per setting, as the settings screen lists them. */
export function settingsRows(s: SyncSettings): [label: string, value: string][] {
  return [
    ["Inventory server", s.server ?? "not set: log in below"],
    ["Server certificate", s.private_ca ? "checked against the private CA and the system's roots" : "checked against the system's roots"],
    ["Sync token", s.token_stored ? `stored in the OS keyring (${s.keyring})` : "none: log in below"],
    ["Pinned server key", s.pinned_server_key ?? "none yet: pinned at the first sync, check it with the inventory team"],
    ["Trust store", trustText(s.trust, s.trust_problem)],
  ];
}

/** The trust store in force: version, expiry and root key ids. */
export function trustText(t: TrustSummary | null, problem: string | null): string {
  if (problem) return `cannot be read: ${problem}`;
  if (!t) return "none yet: the first sync pulls and pins it";
  const expires = t.expires ? `expires ${t.expires}` : "does not expire";
  const roots = t.root_key_ids.length ? t.root_key_ids.join(", ") : "none";
  return `version ${t.version}, ${expires}, root keys ${roots}`;
}
