/**
 * The Tether web console: sessions, one session live, workers and pairing, on the browser
 * library (web/client). Routes are hashes (#/sessions, #/sessions/<id>, #/workers) so the
 * static files need no server-side routing.
 */

import { apiKey, setApiKey } from "./api.js";
import { h, type View } from "./dom.js";
import { clearError, whenUnauthenticated } from "./notify.js";
import { sessionView } from "./session_view.js";
import { sessionsView } from "./sessions.js";
import { workersView } from "./workers.js";

let current: View | undefined;

function route(): View {
  const path = location.hash.replace(/^#/, "") || "/sessions";
  const session = /^\/sessions\/([\w-]+)$/.exec(path);
  if (session?.[1]) return sessionView(session[1]);
  if (path === "/workers") return workersView();
  return sessionsView();
}

function render(): void {
  current?.dispose();
  clearError();
  current = route();
  document.getElementById("view")?.replaceChildren(current.el);
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    link.classList.toggle("active", location.hash.startsWith(link.getAttribute("href") ?? "#/none"));
  }
}

function keyForm(): HTMLElement {
  const field = h("input", { type: "password", placeholder: "API key (none with --dev)", autocomplete: "off", "data-testid": "api-key" });
  const state = h("span", { class: "dim", "data-testid": "key-state" }, apiKey() ? "key set" : "no key");
  const save = (event: Event): void => {
    event.preventDefault();
    setApiKey(field.value.trim());
    field.value = "";
    state.textContent = apiKey() ? "key set" : "no key";
    render();
  };
  whenUnauthenticated(() => {
    state.textContent = "the key was refused: enter another";
    field.focus();
  });
  return h("form", { class: "key", onsubmit: save }, field, h("button", { type: "submit" }, "Use key"), state);
}

function main(): void {
  document.getElementById("key")?.replaceChildren(keyForm());
  window.addEventListener("hashchange", render);
  render();
}

main();
