// Unit tests for nextStep: the code of a bridge error picks what the window offers next.
import { describe, expect, it } from "vitest";
import { hintFor, nextStep } from "./nextstep";

describe("nextStep", () => {
  it("picks the next step from the code", () => {
    expect(nextStep({ code: "reasons_missing", message: "missing for sensor-04" }).kind).toBe("give_reasons");
    expect(nextStep({ code: "sync_unavailable", message: "no token" }).kind).toBe("sync_unavailable");
    expect(nextStep({ code: "busy", message: "a session is already running" }).kind).toBe("wait_for_session");
  });
  it("ignores the message", () => {
    expect(nextStep({ code: "store", message: "reasons_missing busy sync_unavailable" }).kind).toBe("show_message");
    expect(nextStep({ code: "busy", message: "" }).kind).toBe("wait_for_session");
  });
  it("shows a hint only where the message alone leaves the next step open", () => {
    expect(hintFor(null)).toBeNull();
    expect(hintFor({ code: "busy", message: "a session is already running" })).toMatch(/wait for it to finish/);
    expect(hintFor({ code: "data_dir", message: "set FIELDPATCH_DATA_DIR" })).toBeNull();
    expect(hintFor({ code: "reasons_missing", message: "x" })).toBeNull();
  });
});
