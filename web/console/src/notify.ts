/** The one place the console tells a person that a call failed (never the browser console). */

import { Code, ConnectError } from "@connectrpc/connect";

import { describeError } from "../../client/src/index.js";

let onUnauthenticated: () => void = () => {};

/** What to do when the server refuses the key: ask for another one. */
export function whenUnauthenticated(handler: () => void): void {
  onUnauthenticated = handler;
}

export function showError(what: string, error: unknown): void {
  const box = document.getElementById("notice");
  if (box) {
    box.textContent = `${what} failed: ${describeError(error)}`;
    box.hidden = false;
  }
  if (error instanceof ConnectError && error.code === Code.Unauthenticated) onUnauthenticated();
}

export function clearError(): void {
  const box = document.getElementById("notice");
  if (box) box.hidden = true;
}
