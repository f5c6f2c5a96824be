// Unit tests for the credentials screen: the keyring names the form composes, what it refuses,
// and that the store never keeps a secret once sent.
import { describe, expect, it } from "vitest";
import { credentialName, credentialProblem, emptyForm } from "./credentials";
import { CredentialsStore } from "./credentials.svelte";
import type { CredentialsView } from "./ipc";

describe("credential names", () => {
  it("names a device's and a site model's credential as the keyring keeps them", () => {
    const f = { ...emptyForm(), device: " gw-1 ", secret: "s" };
    expect(credentialName(f)).toBe("device/gw-1/password");
    const s = { ...emptyForm(), scope: "site" as const, site: "plant-a", model: "gw100", kind: "psk" as const };
    expect(credentialName(s)).toBe("site/plant-a/gw100/psk");
  });
  it("says what is missing or not allowed", () => {
    expect(credentialProblem(emptyForm())).toBe("give the device id");
    expect(credentialProblem({ ...emptyForm(), device: "gw 1", secret: "s" })).toContain("letters, digits");
    expect(credentialProblem({ ...emptyForm(), device: "gw-1" })).toBe("type the secret");
    expect(credentialProblem({ ...emptyForm(), scope: "site", site: "a", secret: "s" })).toBe("give the model");
    expect(credentialProblem({ ...emptyForm(), device: "gw-1", secret: "s" })).toBeNull();
  });
});

describe("CredentialsStore", () => {
  it("sends the name and secret once, clears the secret and lists names only", async () => {
    const sent: [string, string][] = [];
    const view = (names: string[]): CredentialsView => ({
      keyring: "secret-service",
      credentials: names.map((name) => ({ name, backend: "secret-service", updated_at: "2026-12-06T10:00:00Z" })),
    });
    const store = new CredentialsStore({
      credentials: async () => view([]),
      setCredential: async (name, secret) => (sent.push([name, secret]), view([name])),
      deleteCredential: async () => view([]),
    });
    await store.load();
    store.form.device = "gw-1";
    store.form.secret = "hunter2";
    await store.save();
    expect(sent).toEqual([["device/gw-1/password", "hunter2"]]);
    expect(store.form.secret).toBe("");
    expect(store.view?.credentials.map((c) => c.name)).toEqual(["device/gw-1/password"]);
    expect(JSON.stringify(store.view)).not.toContain("hunter2");
    await store.remove("device/gw-1/password");
    expect(store.view?.credentials).toEqual([]);
    expect(store.result).toContain("removed");
  });
});
