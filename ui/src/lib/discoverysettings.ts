// Where discovery looks (real mode), as the settings form edits it: lists are one entry per line.

import type { DiscoverySettings, EspReset } from "./ipc";

/** The form's fields: the lists as text, one entry per line. */
export interface DiscoveryForm {
  usb_serial: boolean;
  all_ports: boolean;
  usb_dfu: boolean;
  ports: string;
  exclude: string;
  networks: string;
  interfaces: string;
  deadline_secs: number;
  /** How ESP boards are put into their ROM loader for discovery; "" never probes them. */
  esp_reset: EspReset | "";
}

export function toForm(s: DiscoverySettings): DiscoveryForm {
  return {
    usb_serial: s.usb_serial,
    all_ports: s.all_ports,
    usb_dfu: s.usb_dfu,
    ports: s.ports.join("\n"),
    exclude: s.exclude.join("\n"),
    networks: s.networks.join("\n"),
    interfaces: s.interfaces.join("\n"),
    deadline_secs: s.deadline_secs,
    esp_reset: s.esp_reset ?? "",
  };
}

/** One entry per line (commas also separate), blanks dropped. */
export function lines(text: string): string[] {
  return text
    .split(/[\n,]/)
    .map((l) => l.trim())
    .filter((l) => l !== "");
}

export function fromForm(f: DiscoveryForm): DiscoverySettings {
  return {
    usb_serial: f.usb_serial,
    all_ports: f.all_ports,
    usb_dfu: f.usb_dfu,
    ports: lines(f.ports),
    exclude: lines(f.exclude),
    networks: lines(f.networks),
    interfaces: lines(f.interfaces),
    deadline_secs: Math.round(Number(f.deadline_secs)),
    ...(f.esp_reset ? { esp_reset: f.esp_reset } : {}),
  };
}

/** What the form says before anything is sent, or null when it can be saved. */
export function formProblem(f: DiscoveryForm): string | null {
  const s = fromForm(f);
  if (!Number.isFinite(s.deadline_secs) || s.deadline_secs < 1 || s.deadline_secs > 600) {
    return "give a discovery deadline between 1 and 600 seconds";
  }
  const bad = s.ports.concat(s.exclude).find((p) => !p.startsWith("/") && !/^com\d+$/i.test(p));
  if (bad) return `serial port ${JSON.stringify(bad)}: give its full path (/dev/ttyUSB0)`;
  const searches =
    s.usb_serial || s.all_ports || s.usb_dfu || s.ports.length || s.networks.length || s.interfaces.length;
  return searches ? null : "these settings search nowhere: allow at least one place";
}
