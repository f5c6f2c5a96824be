import { describe, expect, it } from "vitest";
import { describeDataDir, toBridgeError } from "./bridge";

describe("toBridgeError", () => {
  it("keeps a structured error from the shell", () => {
    expect(toBridgeError({ code: "data_dir", message: "set FIELDPATCH_DATA_DIR" })).toEqual({
      code: "data_dir",
      message: "set FIELDPATCH_DATA_DIR",
    });
  });
  it("wraps strings, Errors and anything else with the bridge code", () => {
    expect(toBridgeError("boom")).toEqual({ code: "bridge", message: "boom" });
    expect(toBridgeError(new Error("bad"))).toEqual({ code: "bridge", message: "bad" });
    expect(toBridgeError(42).code).toBe("bridge");
    expect(toBridgeError({ code: 1, message: "x" }).code).toBe("bridge");
  });
});

describe("describeDataDir", () => {
  it("says where the directory came from", () => {
    expect(
      describeDataDir({ version: "1", data_dir: "/d", data_dir_source: "environment" }),
    ).toBe("/d (set by FIELDPATCH_DATA_DIR)");
    expect(
      describeDataDir({ version: "1", data_dir: "/e", data_dir_source: "os_convention" }),
    ).toBe("/e (OS default)");
  });
});
