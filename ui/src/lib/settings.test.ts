// Tests of the settings screen (real mode): the login form's checks, the settings lines and the
// store against a stand-in for the desktop shell.
import { describe, expect, it, vi } from "vitest";
import type { BridgeError, SyncSettings } from "./ipc";
import { loginProblem, settingsRows, trustText } from "./settings";
import { SettingsStore, type SettingsApi } from "./settings.svelte";

const empty: SyncSettings = {
  server: null,
  token_stored: false,
  keyring: "secret-service",
  pinned_server_key: null,
  trust: null,
  trust_problem: null,
  private_ca: false,
};
const trust = { version: 3, expires: "2027-01-01T00:00:00+00:00", root_key_ids: ["ab12", "cd34"] };

describe("loginProblem", () => {
  it("asks for a URL, then a token", () => {
    expect(loginProblem("", "t")).toContain("URL");
    expect(loginProblem("inventory.example.com", "t")).toContain("https://");
    expect(loginProblem("https://inventory.example.com", "  ")).toContain("token");
    expect(loginProblem(" https://inventory.example.com ", "tok")).toBeNull();
  });
});

describe("settingsRows", () => {
  it("says what is missing on a first run", () => {
    const rows = Object.fromEntries(settingsRows(empty));
    expect(rows["Inventory server"]).toBe("not set: log in below");
    expect(rows["Sync token"]).toBe("none: log in below");
    expect(rows["Pinned server key"]).toContain("pinned at the first sync");
    expect(rows["Trust store"]).toContain("the first sync pulls and pins it");
    expect(rows["Server certificate"]).toBe("checked against the system's roots");
    expect(Object.fromEntries(settingsRows({ ...empty, private_ca: true }))["Server certificate"]).toContain(
      "private CA",
    );
  });

  it("shows the server, the keyring, the pinned key and the trust store in force", () => {
    const rows = Object.fromEntries(
      settingsRows({ ...empty, server: "https://inv", token_stored: true, pinned_server_key: "beef", trust }),
    );
    expect(rows["Inventory server"]).toBe("https://inv");
    expect(rows["Sync token"]).toBe("stored in the OS keyring (secret-service)");
    expect(rows["Pinned server key"]).toBe("beef");
    expect(rows["Trust store"]).toBe("version 3, expires 2027-01-01T00:00:00+00:00, root keys ab12, cd34");
  });

  it("says when the trust store cannot be read or does not expire", () => {
    expect(trustText(null, "bad signature")).toBe("cannot be read: bad signature");
    expect(trustText({ ...trust, expires: null }, null)).toContain("does not expire");
  });
});

describe("SettingsStore", () => {
  it("loads the settings and fills in the remembered server", async () => {
    const store = new SettingsStore({
      settings: async () => ({ ...empty, server: "https://inv" }),
      login: vi.fn(),
    });
    await store.load();
    expect(store.server).toBe("https://inv");
  });

  it("logs in, clears the token it sent and shows the new settings", async () => {
    const login = vi.fn<SettingsApi["login"]>(async (server) => ({ ...empty, server, token_stored: true }));
    const store = new SettingsStore({ settings: async () => empty, login });
    store.server = " https://inv ";
    store.token = "secret";
    await store.login();
    expect(login).toHaveBeenCalledWith("https://inv", "secret", null);
    store.token = "again";
    store.caPath = " /etc/ssl/inv-ca.pem ";
    await store.login();
    expect(login).toHaveBeenLastCalledWith("https://inv", "again", "/etc/ssl/inv-ca.pem");
    expect(store.token).toBe("");
    expect(store.settings?.token_stored).toBe(true);
    expect(store.result).toContain("OS keyring (secret-service)");
  });

  it("does not send an incomplete form", async () => {
    const login = vi.fn<SettingsApi["login"]>();
    const store = new SettingsStore({ settings: async () => empty, login });
    store.server = "https://inv";
    await store.login();
    expect(login).not.toHaveBeenCalled();
  });

  it("keeps the shell's error code", async () => {
    const error: BridgeError = { code: "insecure_server", message: "use https" };
    const store = new SettingsStore({ settings: async () => empty, login: () => Promise.reject(error) });
    store.server = "http://inv.example.com";
    store.token = "t";
    await store.login();
    expect(store.error).toEqual(error);
    expect(store.busy).toBe(false);
  });
});
