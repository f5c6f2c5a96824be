// The settings screen's state (real mode): the settings as the shell reports them, the login form
// and its outcome. The token typed is cleared as soon as it has been sent.

import * as bridge from "./bridge";
import type { BridgeError, SyncSettings } from "./ipc";
import { loginProblem } from "./settings";

export type SettingsApi = Pick<typeof bridge, "settings" | "login">;

export class SettingsStore {
  settings: SyncSettings | null = $state(null);
  server = $state("");
  token = $state("");
  /** Full path of the private CA's PEM file (blank: the system's roots only). */
  caPath = $state("");
  busy = $state(false);
  error: BridgeError | null = $state(null);
  /** What the last login did. */
  result: string | null = $state(null);

  readonly problem: string | null = $derived(loginProblem(this.server, this.token));

  #api: SettingsApi;

  constructor(api: SettingsApi = bridge) {
    this.#api = api;
  }

  async load(): Promise<void> {
    try {
      this.settings = await this.#api.settings();
      if (!this.server && this.settings.server) this.server = this.settings.server;
    } catch (e) {
      this.error = e as BridgeError;
    }
  }

  async login(): Promise<void> {
    if (this.problem || this.busy) return;
    this.busy = true;
    this.error = null;
    this.result = null;
    const token = this.token;
    this.token = "";
    try {
      this.settings = await this.#api.login(this.server.trim(), token, this.caPath.trim() || null);
      this.result = `logged in: the token is in the OS keyring (${this.settings.keyring})`;
    } catch (e) {
      this.error = e as BridgeError;
    } finally {
      this.busy = false;
    }
  }
}
