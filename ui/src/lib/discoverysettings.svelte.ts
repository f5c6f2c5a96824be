// The discovery settings form's state (real mode): loaded from the shell, checked, saved.

import * as bridge from "./bridge";
import { formProblem, fromForm, toForm, type DiscoveryForm } from "./discoverysettings";
import type { BridgeError } from "./ipc";

export type DiscoverySettingsApi = Pick<typeof bridge, "discoverySettings" | "setDiscoverySettings">;

export class DiscoverySettingsStore {
  form: DiscoveryForm | null = $state(null);
  busy = $state(false);
  error: BridgeError | null = $state(null);
  result: string | null = $state(null);

  readonly problem: string | null = $derived(this.form ? formProblem(this.form) : null);

  #api: DiscoverySettingsApi;

  constructor(api: DiscoverySettingsApi = bridge) {
    this.#api = api;
  }

  async load(): Promise<void> {
    try {
      this.form = toForm(await this.#api.discoverySettings());
    } catch (e) {
      this.error = e as BridgeError;
    }
  }

  async save(): Promise<void> {
    if (!this.form || this.problem || this.busy) return;
    this.busy = true;
    this.error = null;
    this.result = null;
    try {
      this.form = toForm(await this.#api.setDiscoverySettings(fromForm(this.form)));
      this.result = "saved: discovery looks only where these settings allow";
    } catch (e) {
      this.error = e as BridgeError;
    } finally {
      this.busy = false;
    }
  }
}
