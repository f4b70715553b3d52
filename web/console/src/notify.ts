/** The one place the console tells a person that a call failed (never the browser console). */

import { Code, ConnectError } from "@connectrpc/connect";

import { describeError } from "../../client/src/index.js";

let onUnauthenticated: () => void = () => {};

/** What to do when the server refuses the key: ask for another one. */
export function whenUnauthenticated(handler: () => void): void {
  onUnauthenticated = handler;
}

/** What the notice shown now is about ("" when none is shown). */
let shownFor = "";

export function showError(what: string, error: unknown): void {
  const box = document.getElementById("notice");
  shownFor = what;
  if (box) {
    box.textContent = `${what} failed: ${describeError(error)}`;
    box.hidden = false;
  }
  if (error instanceof ConnectError && error.code === Code.Unauthenticated) onUnauthenticated();
}

/**
 * Hides the notice. With `what`, only a notice about that (a periodic refresh that works again
 * clears its own failure, not the failure of something a person did).
 */
export function clearError(what?: string): void {
  if (what !== undefined && what !== shownFor) return;
  shownFor = "";
  const box = document.getElementById("notice");
  if (box) box.hidden = true;
}
