// A discovered demo sensor for the Devices tests (fields overridable).
import type { DiscoveredDevice } from "./ipc";

export function device(over: Partial<DiscoveredDevice> = {}): DiscoveredDevice {
  return {
    addresses: [{ transport: "udp", addr: "127.0.0.1:4001" }],
    via: ["udp-probe"],
    identity: {
      vendor: "Demo",
      model: "sensor",
      hardware_revision: "2",
      serial_number: "SN-SENSOR-01",
      firmware_version: { major: 1, minor: 4, revision: 0, build: 0 },
      image_hash: null,
    },
    bootloader: "MCUboot",
    capabilities: ["upload", "test_boot"],
    details: [],
    matched: { device_id: "sensor-01", key: "serial_number" },
    ...over,
  };
}
