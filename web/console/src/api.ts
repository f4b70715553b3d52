/**
 * The console's connection: a TetherClient to the page's own origin (the console is served by
 * `tether serve --http-port ... --console`), with the API key a person entered once, kept in
 * sessionStorage for the tab's life. A `--dev` control plane needs no key.
 */

import { TetherClient } from "../../client/src/index.js";

const KEY = "tether.apiKey";

export function apiKey(): string {
  return sessionStorage.getItem(KEY) ?? "";
}

export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
  current = undefined;
}

let current: TetherClient | undefined;

/** The client for the key in use (rebuilt when the key changes). */
export function client(): TetherClient {
  current ??= new TetherClient({ baseUrl: location.origin, apiKey: apiKey() || undefined });
  return current;
}
