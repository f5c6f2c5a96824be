// Device credentials as the credentials screen composes them: a name the keyring keeps them by
// (`device/<device>/<kind>` or `site/<site>/<model>/<kind>`) and what the form refuses before
// anything is sent. Values never come back from the shell.

export type CredentialKind = "password" | "psk" | "token";

export interface CredentialForm {
  /** One device, or every device of a model at a site. */
  scope: "device" | "site";
  device: string;
  site: string;
  model: string;
  kind: CredentialKind;
  secret: string;
}

export function emptyForm(): CredentialForm {
  return { scope: "device", device: "", site: "", model: "", kind: "password", secret: "" };
}

const PART = /^[A-Za-z0-9\-_.:@+]{1,128}$/;

/** The keyring name the form stands for. */
export function credentialName(f: CredentialForm): string {
  return f.scope === "device"
    ? `device/${f.device.trim()}/${f.kind}`
    : `site/${f.site.trim()}/${f.model.trim()}/${f.kind}`;
}

/** What is wrong with the form, or null when it can be saved. */
export function credentialProblem(f: CredentialForm): string | null {
  const parts: [string, string][] =
    f.scope === "device" ? [["device id", f.device]] : [["site id", f.site], ["model", f.model]];
  for (const [what, value] of parts) {
    if (!value.trim()) return `give the ${what}`;
    if (!PART.test(value.trim())) return `the ${what} may hold letters, digits and - _ . : @ + only`;
  }
  return f.secret === "" ? "type the secret" : null;
}
