/**
 * One session: its live transcript (deltas rendered as they arrive), pending approvals and
 * questions as buttons, input, and interrupt, restore and fork.
 */

import {
  answerText,
  approvalDecisions,
  describeError,
  type Entry,
  type FollowState,
  isApproval,
  questions,
  SessionFollower,
} from "../../client/src/index.js";
import { type PendingRequest, RequestState, type Session } from "../../../gen/ts/tether/v1/resources_pb.js";
import { client } from "./api.js";
import { h, type View, when } from "./dom.js";
import { clearError, showError } from "./notify.js";
import { stateName } from "./sessions.js";

const REFRESH_MS = 2_000;

function renderEntry(entry: Entry): HTMLElement {
  const attrs = { class: `entry entry-${entry.type}`, "data-seq": String(entry.seq), "data-turn": entry.turnId };
  switch (entry.type) {
    case "input":
      return h("div", attrs, h("span", { class: "who" }, "input"), h("pre", {}, entry.text));
    case "output":
      return h("pre", { ...attrs, class: `${attrs.class} ${entry.stream}` }, entry.text);
    case "message":
    case "reasoning":
      return h("div", attrs, h("span", { class: "who" }, entry.type === "message" ? "agent" : "thinking"), h("pre", {}, entry.text));
    case "command":
      return h(
        "div",
        attrs,
        h("pre", { class: "command" }, `$ ${entry.command}`),
        h("pre", {}, entry.output),
        entry.done && h("span", { class: "dim" }, entry.exitCode === undefined ? `[${entry.status}]` : `[exit ${entry.exitCode}]`),
      );
    case "file_change":
      return h(
        "div",
        attrs,
        ...entry.changes.map((c) => h("div", {}, h("strong", {}, `~ ${c.path} (${c.kind || "change"})`), h("pre", {}, c.diff))),
      );
    case "tool_call":
      return h("div", attrs, h("strong", {}, `tool: ${entry.text || "call"}`), entry.status && h("span", { class: "dim" }, ` [${entry.status}]`));
    case "request": {
      const r = entry.request;
      const state =
        r.state === RequestState.PENDING
          ? "waiting for an answer"
          : r.state === RequestState.RESOLVED
            ? `answered: ${answerText(r.responseJson)}`
            : `expired: ${r.expireReason}`;
      return h("div", attrs, h("strong", {}, `? ${r.summary || r.method}`), h("span", { class: "dim" }, ` ${state}`));
    }
    case "turn_end":
      return h(
        "div",
        attrs,
        `turn ${entry.outcome}${entry.outcome === "completed" ? ` (exit ${entry.exitCode})` : ""}${entry.detail ? `: ${entry.detail}` : ""}`,
      );
    case "notice":
      return h("div", { ...attrs, class: `${attrs.class} ${entry.level}` }, entry.text);
  }
}

function requestCard(sessionId: string, request: PendingRequest, done: () => void): HTMLElement {
  const answer = async (send: () => Promise<unknown>): Promise<void> => {
    try {
      await send();
      clearError();
      done();
    } catch (error) {
      showError("answer", error);
    }
  };
  const card = h(
    "div",
    { class: "request", "data-request-id": request.requestId },
    h("div", {}, h("strong", {}, isApproval(request) ? "Approval needed: " : "Input needed: "), request.summary || request.method),
  );
  if (isApproval(request)) {
    card.append(
      h(
        "div",
        { class: "buttons" },
        ...approvalDecisions(request).map((decision) =>
          h(
            "button",
            {
              "data-decision": decision,
              onclick: () => void answer(() => client().approve(sessionId, request.requestId, decision)),
            },
            decision,
          ),
        ),
      ),
    );
    return card;
  }
  const asked = questions(request);
  const fields = asked.map((q) => {
    const input = h("input", { name: q.id, list: `opts-${request.requestId}-${q.id}` });
    return {
      q,
      input,
      el: h(
        "label",
        { class: "question" },
        `${q.text} `,
        input,
        h("datalist", { id: `opts-${request.requestId}-${q.id}` }, ...q.options.map((o) => h("option", { value: o }))),
      ),
    };
  });
  const submit = (event: Event): void => {
    event.preventDefault();
    const answers = Object.fromEntries(fields.map(({ q, input }) => [q.id, input.value]));
    void answer(() => client().answerQuestions(sessionId, request.requestId, answers));
  };
  card.append(h("form", { onsubmit: submit }, ...fields.map((f) => f.el), h("button", { type: "submit" }, "Answer")));
  return card;
}

export function sessionView(sessionId: string): View {
  const title = h("h2", {}, sessionId);
  const facts = h("dl", { class: "facts" });
  const connection = h("span", { class: "connection", "data-testid": "connection" }, "connecting");
  const transcriptEl = h("div", { class: "transcript", "data-testid": "transcript" });
  const requestsEl = h("div", { class: "requests", "data-testid": "requests" });
  const input = h("textarea", { rows: 3, placeholder: "Input for the next turn (Ctrl+Enter sends)", "data-testid": "input" });
  const interrupt = h("button", { "data-testid": "interrupt", onclick: () => void act("interrupt", () => client().interrupt(sessionId)) }, "Interrupt");
  const restoreTo = h("select", { "aria-label": "restore onto", "data-testid": "restore-to" }, h("option", { value: "" }, "any worker"));
  const restore = h(
    "button",
    { "data-testid": "restore", onclick: () => void act("restore", () => client().restore(sessionId, restoreTo.value)) },
    "Restore",
  );
  const fork = h(
    "button",
    {
      "data-testid": "fork",
      onclick: () =>
        void act("fork", async () => {
          location.hash = `#/sessions/${(await client().fork(sessionId)).sessionId}`;
        }),
    },
    "Fork",
  );
  const rendered = new Map<string, HTMLElement>();
  let stopped = false;

  async function act(what: string, call: () => Promise<unknown>): Promise<void> {
    try {
      await call();
      clearError();
      void refresh();
    } catch (error) {
      showError(what, error);
    }
  }

  const send = async (event: Event): Promise<void> => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    try {
      await client().sendInput(sessionId, text);
      input.value = "";
      clearError();
    } catch (error) {
      showError("send input", error);
    }
  };
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) void send(e);
  });

  const follower = new SessionFollower(client(), sessionId, {
    onEntry: (entry) => {
      const el = renderEntry(entry);
      const old = rendered.get(entry.key);
      const atBottom = transcriptEl.scrollHeight - transcriptEl.scrollTop - transcriptEl.clientHeight < 40;
      if (old) old.replaceWith(el);
      else transcriptEl.append(el);
      rendered.set(entry.key, el);
      if (atBottom) transcriptEl.scrollTop = transcriptEl.scrollHeight;
      if (entry.type === "request" || entry.type === "turn_end") renderRequests();
      if (entry.type === "turn_end" || (entry.type === "notice" && entry.text.startsWith("turn started"))) void refresh();
    },
    onState: (state: FollowState) => {
      connection.textContent =
        state.kind === "reconnecting" ? `reconnecting after seq ${state.afterSeq} (${describeError(state.error)})` : state.kind;
      connection.className = `connection ${state.kind}`;
    },
  });

  function renderRequests(): void {
    const pending = follower.transcript.pendingRequests();
    requestsEl.replaceChildren(...pending.map((r) => requestCard(sessionId, r, renderRequests)));
    requestsEl.hidden = pending.length === 0;
  }

  function renderFacts(s: Session): void {
    title.textContent = s.title || s.sessionId;
    const fact = (name: string, value: string, testid: string): HTMLElement[] => [
      h("dt", {}, name),
      h("dd", { "data-testid": testid }, value),
    ];
    facts.replaceChildren(
      ...fact("state", stateName(s.state), "session-state"),
      ...fact("runtime", s.runtime, "session-runtime"),
      ...fact("worker", s.workerId || "-", "session-worker"),
      ...fact("lease epoch", String(s.leaseEpoch), "session-epoch"),
      ...fact("turns", String(s.turnCount), "session-turns"),
      ...fact("last activity", when(s.lastActivityTime), "session-activity"),
      ...fact("id", s.sessionId, "session-id"),
      ...(s.forkedFromSessionId ? fact("forked from", s.forkedFromSessionId, "session-forked-from") : []),
      ...(s.waitingReason ? fact("waiting", s.waitingReason, "session-waiting") : []),
    );
    interrupt.disabled = !s.activeTurnId;
  }

  async function refresh(): Promise<void> {
    try {
      const [s, workers] = await Promise.all([client().getSession(sessionId), client().listWorkers()]);
      if (stopped) return;
      clearError("refresh session");
      renderFacts(s);
      const chosen = restoreTo.value;
      restoreTo.replaceChildren(
        h("option", { value: "" }, "any worker"),
        ...workers
          .filter((w) => w.connected && w.workerId !== s.workerId)
          .map((w) => h("option", { value: w.workerId, selected: w.workerId === chosen }, w.name || w.workerId)),
      );
    } catch (error) {
      showError("refresh session", error);
    }
  }

  const el = h(
    "section",
    { class: "session", "data-testid": "session-view", "data-session-id": sessionId },
    h("div", { class: "toolbar" }, h("a", { href: "#/sessions" }, "← sessions"), title, connection),
    facts,
    h("div", { class: "toolbar" }, interrupt, h("span", { class: "group" }, restoreTo, restore), fork),
    requestsEl,
    transcriptEl,
    h("form", { class: "send", onsubmit: (e) => void send(e) }, input, h("button", { type: "submit", "data-testid": "send" }, "Send")),
  );
  requestsEl.hidden = true;
  void refresh();
  follower.start().catch((error: unknown) => {
    if (stopped) return;
    connection.textContent = `stopped: ${describeError(error)}`;
    connection.className = "connection stopped";
    showError("follow session", error);
  });
  const timer = setInterval(() => void refresh(), REFRESH_MS);
  return {
    el,
    dispose: () => {
      stopped = true;
      clearInterval(timer);
      follower.stop();
    },
  };
}
