// The `script` runtime (docs/conformance.md): a trivial, deterministic runtime every conformant
// worker offers, so the conformance kit can make a turn do exactly what a scenario needs.
//
// A turn's input is one command per line (blank lines ignored; command and argument split at
// the first space): say, sleep, fail, exit, recall, approve. The model-visible history is, per
// turn that ran, an INPUT item with the input and an OUTPUT item with all its output joined (none
// when it printed nothing): exactly what `historyFromResume` rebuilds from the log, so a session
// moves between workers of any language without loss.

import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import {
  HistoryItemRole,
  HistoryItemSchema,
  type HistoryItem,
} from "../../gen/ts/tether/v1/resources_pb.js";
import { sleep } from "./worker_util.js";

/** What a turn yields: any number of outputs and requests, then exactly one terminal event. */
export type RuntimeEvent =
  | { kind: "output"; text: string }
  | { kind: "request"; requestId: string; summary: string; decisions: string[]; paramsJson: string }
  | { kind: "completed"; exitCode: number }
  | { kind: "failed"; message: string }
  | { kind: "interrupted"; reason: string };

export type TerminalEvent = Extract<RuntimeEvent, { kind: "completed" | "failed" | "interrupted" }>;

export function isTerminal(event: RuntimeEvent): event is TerminalEvent {
  return event.kind === "completed" || event.kind === "failed" || event.kind === "interrupted";
}

/** The RequestOpened method name of `approve` (the runtime's own name for the question). */
export const APPROVE_METHOD = "script/approve";
const APPROVE_DECISIONS = ["accept", "decline"];

/** A fresh pending-request id: "req_" and 26 random Crockford base32 characters (the server
 * refuses any other shape). */
export function newRequestId(): string {
  const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const bytes = randomBytes(26);
  let id = "req_";
  for (const byte of bytes) id += alphabet[byte & 31];
  return id;
}

/** One running turn's controls: how an interrupt and an answer reach the waiting line. */
class TurnControl {
  interruptReason: string | null = null;
  private readonly interruptedAbort = new AbortController();
  /** Aborts when the turn is interrupted; every wait races it. */
  readonly interrupted = this.interruptedAbort.signal;
  /** Open requests of this turn, by id: the answer's resolver. */
  readonly waiting = new Map<string, (answer: unknown) => void>();

  interrupt(reason: string): void {
    if (this.interruptReason !== null) return;
    this.interruptReason = reason;
    this.interruptedAbort.abort();
  }
}

export class ScriptRuntime {
  private readonly history: HistoryItem[];
  private turn: TurnControl | null = null;
  private closed = false;

  /** Starts from the history a Resume rebuilt (empty for a new session). */
  constructor(history: HistoryItem[]) {
    this.history = [...history];
  }

  get running(): boolean {
    return this.turn !== null;
  }

  exportHistory(): HistoryItem[] {
    return this.history.map((item) => create(HistoryItemSchema, item));
  }

  metadata(): Record<string, unknown> {
    return { runtime: "script" };
  }

  /** Stop the running turn (it ends as interrupted with `reason`); nothing when idle. */
  interrupt(reason: string): void {
    this.turn?.interrupt(reason);
  }

  /** Hand an answer to the request waiting for it. False when no line waits for it (a repeat
   * after a reconnect, or an answer for a turn that ended): the caller ignores it. */
  respond(requestId: string, answer: unknown): boolean {
    const resolve = this.turn?.waiting.get(requestId);
    if (resolve === undefined) return false;
    this.turn?.waiting.delete(requestId);
    resolve(answer);
    return true;
  }

  /** The session is gone: stop whatever runs; no turn runs afterwards. */
  close(): void {
    this.closed = true;
    this.turn?.interrupt("runtime closed");
  }

  async *runTurn(turnId: string, input: string): AsyncGenerator<RuntimeEvent> {
    if (this.closed) {
      yield { kind: "failed", message: "script runtime is closed" };
      return;
    }
    if (this.turn !== null) {
      yield { kind: "failed", message: "another turn is already running in this session" };
      return;
    }
    // `recall` sees the history before this turn only.
    const before = [...this.history];
    this.history.push(create(HistoryItemSchema, { role: HistoryItemRole.INPUT, text: input, turnId }));
    const control = new TurnControl();
    this.turn = control;
    const outputs: string[] = [];
    let terminal: TerminalEvent | undefined;
    try {
      for await (const event of this.execute(input, before, control)) {
        if (isTerminal(event)) {
          terminal = event;
          break;
        }
        if (event.kind === "output") outputs.push(event.text);
        yield event;
      }
    } finally {
      // Recorded before the terminal event leaves, so a snapshot taken once the turn has ended
      // always holds the turn's output.
      if (outputs.length > 0) {
        this.history.push(create(HistoryItemSchema, { role: HistoryItemRole.OUTPUT, text: outputs.join(""), turnId }));
      }
      this.turn = null;
    }
    yield terminal ?? { kind: "completed", exitCode: 0 };
  }

  private async *execute(input: string, before: HistoryItem[], control: TurnControl): AsyncGenerator<RuntimeEvent> {
    const interrupted = (): RuntimeEvent => ({ kind: "interrupted", reason: control.interruptReason ?? "interrupted" });
    // Lines as Python's splitlines() cuts them, trimmed, as the Python script runtime reads them.
    const lines = input.split(/\r\n|[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]/);
    for (const [index, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === "") continue;
      const where = `line ${index + 1}`;
      if (control.interruptReason !== null) {
        yield interrupted();
        return;
      }
      const space = line.indexOf(" ");
      const command = space < 0 ? line : line.slice(0, space);
      const arg = space < 0 ? "" : line.slice(space + 1);
      switch (command) {
        case "say":
          yield { kind: "output", text: `${arg}\n` };
          break;
        case "sleep": {
          const ms = numberArg(arg);
          if (ms === null) {
            yield { kind: "failed", message: `${where}: ${JSON.stringify(line)} needs a number of at least 0` };
            return;
          }
          await sleep(ms, control.interrupted);
          // An interrupt ends the wait at once, and the turn with it.
          if (control.interruptReason !== null) {
            yield interrupted();
            return;
          }
          break;
        }
        case "fail":
          yield { kind: "failed", message: arg };
          return;
        case "exit": {
          const code = numberArg(arg);
          if (code === null || code >= 2 ** 31) {
            yield { kind: "failed", message: `${where}: ${JSON.stringify(line)} needs an exit code from 0 to 2147483647` };
            return;
          }
          yield { kind: "completed", exitCode: Math.trunc(code) };
          return;
        }
        case "recall":
          for (const item of before) {
            if (item.role === HistoryItemRole.INPUT) yield { kind: "output", text: `recalled: ${item.text}\n` };
          }
          break;
        case "approve": {
          const requestId = newRequestId();
          const answer = new Promise<unknown>((resolve) => control.waiting.set(requestId, resolve));
          yield {
            kind: "request",
            requestId,
            summary: arg,
            decisions: APPROVE_DECISIONS,
            paramsJson: JSON.stringify({ summary: arg }),
          };
          const stop = new Promise<typeof STOPPED>((resolve) => {
            if (control.interrupted.aborted) resolve(STOPPED);
            control.interrupted.addEventListener("abort", () => resolve(STOPPED), { once: true });
          });
          const got = await Promise.race([answer, stop]);
          control.waiting.delete(requestId);
          if (got === STOPPED) {
            yield interrupted();
            return;
          }
          yield { kind: "output", text: `decision: ${decisionOf(got)}\n` };
          break;
        }
        default:
          yield { kind: "failed", message: `${where}: unknown script command ${JSON.stringify(command)} in ${JSON.stringify(line)}` };
          return;
      }
    }
  }
}

/** A non-negative number argument (milliseconds, an exit code), or null. */
function numberArg(arg: string): number | null {
  const text = arg.trim();
  const value = Number(text);
  return text !== "" && Number.isFinite(value) && value >= 0 ? value : null;
}

const STOPPED = Symbol("stopped");

/** The decision in an answer ({"decision": "accept"}), as the Python script runtime reads it. */
function decisionOf(answer: unknown): string {
  if (typeof answer !== "object" || answer === null || !("decision" in answer)) return "";
  const decision = (answer as { decision: unknown }).decision;
  if (typeof decision === "string") return decision;
  // A decision with parameters ({"acceptWithExecpolicyAmendment": {...}}) is named by its key.
  if (typeof decision === "object" && decision !== null) return Object.keys(decision)[0] ?? "";
  return String(decision ?? "");
}
