// The credentials screen's state (real mode): the names in the OS keyring, the form, and what
// the last action did. The secret typed is cleared as soon as it has been sent.

import * as bridge from "./bridge";
import { credentialName, credentialProblem, emptyForm, type CredentialForm } from "./credentials";
import type { BridgeError, CredentialsView } from "./ipc";

export type CredentialsApi = Pick<typeof bridge, "credentials" | "setCredential" | "deleteCredential">;

export class CredentialsStore {
  view: CredentialsView | null = $state(null);
  form: CredentialForm = $state(emptyForm());
  busy = $state(false);
  error: BridgeError | null = $state(null);
  result: string | null = $state(null);

  readonly problem: string | null = $derived(credentialProblem(this.form));

  #api: CredentialsApi;

  constructor(api: CredentialsApi = bridge) {
    this.#api = api;
  }

  async load(): Promise<void> {
    try {
      this.view = await this.#api.credentials();
    } catch (e) {
      this.error = e as BridgeError;
    }
  }

  async save(): Promise<void> {
    if (this.problem || this.busy) return;
    const name = credentialName(this.form);
    const secret = this.form.secret;
    this.form.secret = "";
    await this.#run(() => this.#api.setCredential(name, secret), `stored ${name} in the OS keyring`);
  }

  async remove(name: string): Promise<void> {
    await this.#run(() => this.#api.deleteCredential(name), `removed ${name} from the OS keyring`);
  }

  async #run(action: () => Promise<CredentialsView>, done: string): Promise<void> {
    this.busy = true;
    this.error = null;
    this.result = null;
    try {
      this.view = await action();
      this.result = done;
    } catch (e) {
      this.error = e as BridgeError;
    } finally {
      this.busy = false;
    }
  }
}
