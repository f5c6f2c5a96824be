// The Devices screen's state: a discovery run, the devices streaming in, the final report and the
// search box. App.svelte makes one `DevicesStore`; its actions go through the desktop shell's
// bridge (or a stand-in in tests).

import * as bridge from "./bridge";
import { ambiguityHint, applyUpdate, discoveredRow, discoveryStatus, filterMissing, filterRows } from "./discovery";
import type { BridgeError, DiscoveredDevice, DiscoveryReport } from "./ipc";

/** The commands and events the store uses. */
export type DevicesApi = Pick<typeof bridge, "discover" | "onDiscovery">;

export class DevicesStore {
  /** The devices found so far (streamed), then the report's. */
  found: DiscoveredDevice[] = $state([]);
  report: DiscoveryReport | null = $state(null);
  running = $state(false);
  error: BridgeError | null = $state(null);
  /** The search box. */
  query = $state("");

  readonly rows = $derived(filterRows(this.found.map(discoveredRow), this.query));
  readonly missing: string[] = $derived(filterMissing(this.report?.missing ?? [], this.query));
  /** Nothing before the first run. */
  readonly status: string = $derived(
    this.running || this.report ? discoveryStatus(this.found, this.report) : "",
  );

  /** Why unknown and missing devices may be the same boards, when they can be. */
  readonly hint: string | null = $derived(ambiguityHint(this.report));

  #api: DevicesApi;

  constructor(api: DevicesApi = bridge) {
    this.#api = api;
  }

  /** Follow discovery updates; returns the stop. */
  start(): () => void {
    const stop = this.#api.onDiscovery((u) => {
      // An update that arrives after its run ended is already in the report.
      if (this.running) this.found = applyUpdate(this.found, u);
    });
    return () => void stop.then((f) => f());
  }

  /** Forget the last run (a new visit starts). */
  reset(): void {
    if (this.running) return;
    this.found = [];
    this.report = null;
    this.error = null;
  }

  /** Run one discovery: devices stream in, then the report replaces them (with the missing). */
  async discover(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.error = null;
    this.report = null;
    this.found = [];
    try {
      const report = await this.#api.discover();
      this.report = report;
      this.found = report.devices;
    } catch (e) {
      this.error = e as BridgeError;
    } finally {
      this.running = false;
    }
  }
}
