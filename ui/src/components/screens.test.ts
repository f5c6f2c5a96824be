// The home, visit-log and sync-report components rendered (server-side, to HTML) from a store in
// a known state: what the technician and a screen reader get.
import { render } from "svelte/server";
import { describe, expect, it } from "vitest";
import { DAY, homeView, timeline, validity, visit } from "../lib/home.fixtures";
import { HomeStore, type HomeApi } from "../lib/home.svelte";
import type { Plan, SiteView } from "../lib/ipc";
import DeviceTable from "./DeviceTable.svelte";
import HomePanel from "./HomePanel.svelte";
import Nav from "./Nav.svelte";
import SyncReport from "./SyncReport.svelte";
import VisitLogPanel from "./VisitLogPanel.svelte";

const never = () => new Promise<never>(() => {});
const api: HomeApi = { home: never, visitLog: never, syncOnce: never, syncNow: never, exportVisit: never, chooseExportPath: never, onSync: never };
const noop = () => {};

describe("HomePanel", () => {
  it("shows online state, pending events, last sync, the expiry banners and the open visit", () => {
    const home = new HomeStore("demo", api);
    home.view = homeView({
      pending_events: 12,
      last_sync: "2026-12-06T08:00:00+00:00",
      visits: [visit("v-open", false), visit("v-past", true, "batch session s0")],
      validity: [validity("trust_store", "grace", 2 * DAY, "expired at …"), validity("catalog_listing", "valid", 90 * DAY)],
    }, false);
    const { body } = render(HomePanel, { props: { home, mode: "demo", onOpenVisit: noop, onShowVisit: noop } });
    expect(body).toMatch(/<span id="online" data-online="false" class="error">offline<\/span>/);
    expect(body).toContain('data-pending="12"');
    expect(body).toContain("12 event(s) to sync");
    expect(body).toContain("2026-12-06 08:00:00+00:00");
    // One banner, as an alert for screen readers: the trust store in grace; the listing is fine.
    expect(body.match(/role="alert"/g)).toHaveLength(1);
    expect(body).toContain('data-banner="trust_store" data-tone="warning"');
    expect(body).toContain("offline grace period, which ends in 2 days");
    expect(body).toMatch(/<ul id="open-visits"[^>]*>[\s\S]*data-visit="v-open"/);
    expect(body).toContain("No work orders from the inventory.");
    expect(body).toContain('id="ad-hoc"');
    expect(body).toContain('aria-label="Show the log of visit batch session s0"');
  });

  it("says what the demo site could not start, as a status for screen readers", () => {
    const home = new HomeStore("demo", api);
    home.view = { ...homeView(), notices: ["the demo site has no SWUpdate gateway: `swupdate` is not installed"] };
    const { body } = render(HomePanel, { props: { home, mode: "demo", onOpenVisit: noop, onShowVisit: noop } });
    expect(body).toMatch(/<p class="banner warning[^"]*" role="status" data-notice="0">the demo site has no SWUpdate gateway/);
    expect(body).not.toContain('role="alert"');
  });

  it("lists work orders, each with a button that opens a visit for it, in real mode", () => {
    const home = new HomeStore("real", api);
    home.view = homeView({
      work_orders: [{ id: "WO-1", site_id: "plant-a", title: "Spring patching", status: "open", device_ids: ["pump-1", "pump-2"] }],
    });
    const { body } = render(HomePanel, { props: { home, mode: "real", onOpenVisit: noop, onShowVisit: noop } });
    expect(body).toContain('data-work-order="WO-1"');
    expect(body).toContain("pump-1, pump-2");
    expect(body).toMatch(/data-open-work-order="WO-1" aria-label="Open a visit for work order WO-1"/);
    expect(body).toContain('id="ad-hoc"');
    expect(body).toContain('id="no-open-visit"');
    expect(body).not.toContain('role="alert"');
  });
});

describe("VisitLogPanel", () => {
  it("shows the chain status and marks events from the first bad one", () => {
    const home = new HomeStore("demo", api);
    home.view = homeView({ visits: [timeline(false, 3).visit] });
    home.timeline = timeline(false, 3);
    home.exportTo = "/data/exports/visit-0190bbbb.tar";
    const { body } = render(VisitLogPanel, { props: { home } });
    expect(body).toMatch(/id="chain-status" role="status" aria-live="polite" class="error" data-ok="false"/);
    expect(body).toContain("first bad event: seq 3");
    expect(body).toMatch(/data-seq="2" data-kind="note" data-trust="verified"/);
    expect(body).toMatch(/data-seq="3" data-kind="note" data-trust="bad"/);
    expect(body).toMatch(/data-seq="4" data-kind="note" data-trust="unverified"/);
    expect(body).toContain('value="/data/exports/visit-0190bbbb.tar"');
    expect(body).toMatch(/<label>File <input id="export-path"/);
    expect(body).toMatch(/<button id="export-choose" type="button">Save as…<\/button>/);
  });

  it("shows the verifier's verdict on the written export", () => {
    const home = new HomeStore("demo", api);
    home.timeline = timeline(true);
    home.exported = {
      path: "/x/visit.tar",
      bytes: 10,
      visit_id: "v",
      events: 4,
      devices: 1,
      fingerprint: "a".repeat(64),
      server_key: null,
      check: { result: "fail", code: "audit", problem: "devices.csv row 2 is not backed by a signed event" },
    };
    const { body } = render(VisitLogPanel, { props: { home } });
    expect(body).toContain('data-result="fail"');
    expect(body).toContain("does NOT verify [audit]: devices.csv row 2 is not backed by a signed event");
    expect(body).toMatch(/class="ok" data-ok="true"/);
  });
});

describe("SyncReport and Nav", () => {
  it("lists rejected events with their reasons", () => {
    const report = {
      accepted: 3,
      pending: 1,
      rejected: [{ log_id: "l", seq: 8, code: "bad_signature", reason: "signature does not match the content" }],
      retryable: [],
      not_applied: [{ log_id: "l", seq: 5, code: "device_not_assigned", reason: "device x is at a site not assigned to you" }],
      devices: 2,
      work_orders: 0,
      catalog: 1,
    };
    const { body } = render(SyncReport, { props: { report } });
    expect(body).toContain("accepted 3, pending 1, rejected 1");
    expect(body).toMatch(/data-problems="rejected"[\s\S]*seq 8<\/span> \[bad_signature\]: signature does not match the content/);
    expect(body).toContain('data-problems="not-applied"');
    expect(body).not.toContain('data-problems="retryable"');
  });

  it("marks the current screen for screen readers", () => {
    const { body } = render(Nav, { props: { mode: "real", screen: "log", onShow: noop } });
    expect(body).toMatch(/<nav aria-label="Screens"/);
    expect(body).toMatch(/id="nav-log" aria-current="page"/);
    expect(body).toMatch(/id="nav-settings"[^>]*>Settings/);
    // The Devices screen is in both modes.
    expect(body).toMatch(/id="nav-site"[^>]*>Devices &amp; session/);
  });
});

describe("DeviceTable", () => {
  it("offers a choice and a single flash for the devices the plan would flash, and for no other", () => {
    const device = (id: string) => ({
      id,
      address: { transport: "udp" as const, addr: "127.0.0.1:1337" },
      identity: {
        vendor: "Lab",
        model: "sensor",
        hardware_revision: "1",
        serial_number: null,
        firmware_version: { major: 1, minor: 4, revision: 0, build: 0 },
        image_hash: null,
      },
      criticality: "normal" as const,
      windows: [],
      credential: null,
    });
    const v = { major: 1, minor: 5, revision: 0, build: 0 };
    const step = { bundle_id: "b", from: { ...v, minor: 4 }, to: v, cvss: 7, rollback: false };
    const plan: Plan = {
      created: "now",
      devices: [
        { device: device("s1"), disposition: { disposition: "patch", steps: [step], latest: v, short_reason: null } },
        { device: device("s2"), disposition: { disposition: "patch", steps: [step], latest: v, short_reason: null } },
        { device: device("up"), disposition: { disposition: "up_to_date", version: v } },
      ],
    };
    const view = {
      devices: [device("s1"), device("s2"), device("up")],
      unreachable: [],
      bundles: [],
      refused: [],
      inventory: "",
      auto_sync: false,
      sync_unavailable: null,
      work_order: null,
      missing: [],
      catalog_problem: null,
    } satisfies SiteView;
    const { body } = render(DeviceTable, { props: { view, plan, rows: {}, chosen: ["s2"] } });
    expect(body.match(/data-choose=/g)).toHaveLength(2);
    expect(body.match(/data-flash-one=/g)).toHaveLength(2);
    expect(body).toMatch(/data-choose="s1"(?![^>]*checked)[^>]*>/);
    expect(body).toMatch(/data-choose="s2"[^>]*checked/);
    expect(body).toContain('aria-label="Flash s2 alone now"');
    expect(body).not.toContain('data-choose="up"');
    expect(body).not.toContain('data-flash-one="up"');
  });
});
