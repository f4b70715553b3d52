/** The sessions list: state, title and last activity, newest activity first; a new session. */

import { SessionState, type Session } from "../../../gen/ts/tether/v1/resources_pb.js";
import { client } from "./api.js";
import { h, type View, when } from "./dom.js";
import { clearError, showError } from "./notify.js";

const REFRESH_MS = 2_000;

export function stateName(state: SessionState): string {
  return (SessionState[state] ?? "UNKNOWN").toLowerCase();
}

function row(session: Session): HTMLTableRowElement {
  const href = `#/sessions/${session.sessionId}`;
  return h(
    "tr",
    { "data-session-id": session.sessionId },
    h("td", {}, h("a", { href }, session.title || "(no input yet)")),
    h("td", {}, h("span", { class: `state state-${stateName(session.state)}` }, stateName(session.state))),
    h("td", {}, session.runtime),
    h("td", {}, when(session.lastActivityTime)),
    h("td", { class: "mono" }, session.workerId || "-"),
    h("td", { class: "mono" }, h("a", { href }, session.sessionId)),
  );
}

export function sessionsView(): View {
  const body = h("tbody");
  const runtime = h("input", { name: "runtime", value: "shell", size: 10, "aria-label": "runtime" });
  const create = async (event: Event): Promise<void> => {
    event.preventDefault();
    try {
      const session = await client().createSession(runtime.value.trim());
      location.hash = `#/sessions/${session.sessionId}`;
    } catch (error) {
      showError("create session", error);
    }
  };
  const el = h(
    "section",
    { class: "sessions" },
    h(
      "form",
      { class: "toolbar", onsubmit: (e) => void create(e) },
      h("h2", {}, "Sessions"),
      h("label", {}, "runtime ", runtime),
      h("button", { type: "submit", "data-testid": "new-session" }, "New session"),
    ),
    h(
      "table",
      { "data-testid": "sessions" },
      h("thead", {}, h("tr", {}, ...["Title", "State", "Runtime", "Last activity", "Worker", "Id"].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  let stopped = false;
  const refresh = async (): Promise<void> => {
    try {
      const { sessions } = await client().listSessions({ pageSize: 100 });
      if (!stopped) body.replaceChildren(...sessions.map(row));
      clearError("list sessions");
    } catch (error) {
      showError("list sessions", error);
    }
  };
  void refresh();
  const timer = setInterval(() => void refresh(), REFRESH_MS);
  return {
    el,
    dispose: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
