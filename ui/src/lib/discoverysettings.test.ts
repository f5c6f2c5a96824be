// Unit tests for the discovery settings form: lists as lines, and what it refuses before saving.
import { describe, expect, it } from "vitest";
import { formProblem, fromForm, lines, toForm } from "./discoverysettings";
import { DiscoverySettingsStore } from "./discoverysettings.svelte";
import type { DiscoverySettings } from "./ipc";

const saved: DiscoverySettings = {
  usb_serial: true,
  all_ports: false,
  usb_dfu: true,
  ports: ["/dev/pts/4", "/dev/serial/by-id/usb-x"],
  exclude: [],
  networks: ["192.0.2.0/24"],
  interfaces: ["eth0"],
  deadline_secs: 10,
};

describe("discovery settings form", () => {
  it("round-trips the saved settings through the form", () => {
    expect(fromForm(toForm(saved))).toEqual(saved);
    expect(toForm(saved).ports).toBe("/dev/pts/4\n/dev/serial/by-id/usb-x");
  });
  it("keeps the ESP probe off unless a reset mode is chosen", () => {
    expect(toForm(saved).esp_reset).toBe("");
    expect(fromForm(toForm(saved))).not.toHaveProperty("esp_reset");
    const allowed = { ...saved, esp_reset: "classic" as const };
    expect(toForm(allowed).esp_reset).toBe("classic");
    expect(fromForm(toForm(allowed))).toEqual(allowed);
  });
  it("splits lines and commas and drops blanks", () => {
    expect(lines(" /dev/a \n\n/dev/b, /dev/c ,")).toEqual(["/dev/a", "/dev/b", "/dev/c"]);
    expect(lines("   ")).toEqual([]);
  });
  it("names a port given without its path", () => {
    const f = { ...toForm(saved), ports: "ttyUSB0" };
    expect(formProblem(f)).toContain('"ttyUSB0"');
    expect(formProblem({ ...toForm(saved), ports: "COM3" })).toBeNull();
  });
  it("refuses a deadline out of range and settings that search nowhere", () => {
    expect(formProblem({ ...toForm(saved), deadline_secs: 0 })).toContain("deadline");
    const nowhere = { ...toForm(saved), usb_serial: false, usb_dfu: false, ports: "", networks: "", interfaces: "" };
    expect(formProblem(nowhere)).toContain("nowhere");
    expect(formProblem(toForm(saved))).toBeNull();
  });
});

describe("DiscoverySettingsStore", () => {
  it("loads, saves what the form says, and shows the shell's refusal", async () => {
    const sent: DiscoverySettings[] = [];
    let refuse = false;
    const store = new DiscoverySettingsStore({
      discoverySettings: async () => saved,
      setDiscoverySettings: async (s) => {
        if (refuse) throw { code: "invalid_input", message: 'network "x": give an address' };
        sent.push(s);
        return s;
      },
    });
    await store.load();
    expect(store.form?.networks).toBe("192.0.2.0/24");
    store.form!.networks = "192.0.2.0/24\n198.51.100.7:1337";
    await store.save();
    expect(sent[0].networks).toEqual(["192.0.2.0/24", "198.51.100.7:1337"]);
    expect(store.result).toContain("saved");
    refuse = true;
    await store.save();
    expect(store.error?.code).toBe("invalid_input");
    expect(store.result).toBeNull();
  });
});
