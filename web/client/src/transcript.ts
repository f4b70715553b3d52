/**
 * The transcript: a session's events folded into what a person reads, as they stream.
 *
 * Deltas are folded into their item (an agent message grows as its text arrives, a command
 * collects its output), consecutive output chunks of a turn into one block, and pending requests
 * are kept with their state, so a view renders entries rather than events. This is the browser's
 * counterpart of the Python SDK's `Transcript` (sdk/_transcript.py), which prints the same
 * events for a terminal.
 */

import {
  DeltaKind,
  type Event,
  type FileChange,
  type Item,
  ItemKind,
  OutputStream,
  type PendingRequest,
  RequestState,
} from "../../../gen/ts/tether/v1/resources_pb.js";

interface EntryBase {
  /** Stable id of the entry (the seq of the event that made it), for keying views. */
  key: string;
  /** The turn the entry belongs to. */
  turnId: string;
  /** Seq of the last event folded into the entry. */
  seq: bigint;
}

/** One thing a person reads in a session's transcript. */
export type Entry =
  | (EntryBase & { type: "input"; text: string })
  | (EntryBase & { type: "output"; stream: "stdout" | "stderr"; text: string })
  | (EntryBase & { type: "message"; itemId: string; text: string; done: boolean })
  | (EntryBase & { type: "reasoning"; itemId: string; text: string; done: boolean })
  | (EntryBase & {
      type: "command";
      itemId: string;
      command: string;
      output: string;
      status: string;
      exitCode: number | undefined;
      done: boolean;
    })
  | (EntryBase & { type: "file_change"; itemId: string; changes: FileChange[]; status: string; done: boolean })
  | (EntryBase & { type: "tool_call"; itemId: string; text: string; status: string; done: boolean })
  | (EntryBase & { type: "request"; request: PendingRequest })
  | (EntryBase & { type: "turn_end"; outcome: "completed" | "failed" | "interrupted"; detail: string; exitCode: number })
  | (EntryBase & { type: "notice"; level: "info" | "warning" | "error"; text: string });

type ItemEntry = Extract<Entry, { itemId: string }>;

/** Folds events into entries. Feed it every event of a session in seq order. */
export class Transcript {
  readonly entries: Entry[] = [];
  /** Seq of the last event applied (0 before any). */
  lastSeq = 0n;
  /** The turn running now (started, not ended), or "". */
  runningTurnId = "";
  /** The worker that started the latest turn, or "". */
  workerId = "";

  private readonly items = new Map<string, ItemEntry>();
  private readonly requests = new Map<string, Extract<Entry, { type: "request" }>>();

  /**
   * Applies one event; returns the entry it added or changed (undefined when the event shows
   * nothing, such as history items). An event at or below `lastSeq` is ignored: a replay never
   * changes what was folded.
   */
  apply(event: Event): Entry | undefined {
    if (event.seq <= this.lastSeq) return undefined;
    this.lastSeq = event.seq;
    const base = { key: String(event.seq), turnId: event.turnId, seq: event.seq };
    const body = event.body?.kind;
    switch (body?.case) {
      case "inputReceived":
        return this.add({ ...base, type: "input", text: body.value.input });
      case "turnStarted":
        this.runningTurnId = event.turnId;
        this.workerId = body.value.workerId;
        return this.add({ ...base, type: "notice", level: "info", text: `turn started on worker ${body.value.workerId}` });
      case "output":
        return this.output(base, body.value.stream === OutputStream.STDERR ? "stderr" : "stdout", body.value.text);
      case "itemStarted":
      case "itemCompleted":
        return body.value.item ? this.item(base, body.value.item, body.case === "itemCompleted") : undefined;
      case "itemDelta":
        return this.delta(base, body.value.itemId, body.value.kind, body.value.delta);
      case "turnCompleted":
        return this.end(base, "completed", "", body.value.exitCode);
      case "turnFailed":
        return this.end(base, "failed", body.value.errorMessage + (body.value.workerLost ? " (worker lost)" : ""), 0);
      case "turnInterrupted":
        return this.end(base, "interrupted", body.value.reason, 0);
      case "requestOpened": {
        const request = body.value.request;
        if (!request) return undefined;
        const entry = { ...base, type: "request" as const, request };
        this.requests.set(request.requestId, entry);
        return this.add(entry);
      }
      case "requestResolved": {
        const entry = this.requests.get(body.value.requestId);
        if (!entry) return undefined;
        entry.request = {
          ...entry.request,
          state: body.value.state,
          responseJson: body.value.responseJson,
          expireReason: body.value.expireReason,
        };
        entry.seq = event.seq;
        return entry;
      }
      case "agentError": {
        const { message, code, willRetry } = body.value;
        const text = `agent error: ${message}${code ? ` [${code}]` : ""}${willRetry ? " (retrying)" : ""}`;
        return this.add({ ...base, type: "notice", level: "error", text });
      }
      case "turnWaiting":
        return this.add({ ...base, type: "notice", level: "warning", text: `waiting: ${body.value.reason}` });
      case "sessionReverted":
        return this.add({ ...base, type: "notice", level: "info", text: `reverted to turn ${body.value.turnId}` });
      case "workspaceRestored": {
        const w = body.value;
        const text = `workspace restored on ${w.workerId}: ${w.fileCount} files, ${w.totalBytes} bytes`;
        return this.add({ ...base, type: "notice", level: "info", text });
      }
      default:
        return undefined; // history items, token usage and runtime events: nothing to read
    }
  }

  /** The requests still waiting for an answer, oldest first. */
  pendingRequests(): PendingRequest[] {
    return [...this.requests.values()].map((e) => e.request).filter((r) => r.state === RequestState.PENDING);
  }

  private add<E extends Entry>(entry: E): E {
    this.entries.push(entry);
    return entry;
  }

  private output(base: EntryBase, stream: "stdout" | "stderr", text: string): Entry {
    const last = this.entries[this.entries.length - 1];
    if (last?.type === "output" && last.turnId === base.turnId && last.stream === stream) {
      last.text += text;
      last.seq = base.seq;
      return last;
    }
    return this.add({ ...base, type: "output", stream, text });
  }

  private item(base: EntryBase, item: Item, completed: boolean): Entry | undefined {
    const id = `${base.turnId}/${item.itemId}`;
    let entry = this.items.get(id);
    if (!entry) {
      const made = newItemEntry(base, item);
      if (!made) return undefined;
      entry = this.add(made);
      this.items.set(id, entry);
    }
    entry.seq = base.seq;
    // A completed item carries the whole text; a started one what it has so far, if anything.
    switch (entry.type) {
      case "message":
      case "reasoning":
        if (completed || item.text) entry.text = item.text || entry.text;
        break;
      case "command":
        entry.command = item.command || entry.command;
        if (completed && item.aggregatedOutput) entry.output = item.aggregatedOutput;
        entry.exitCode = item.exitCode ?? entry.exitCode;
        break;
      case "file_change":
        if (item.changes.length) entry.changes = item.changes;
        break;
      case "tool_call":
        entry.text = item.text || entry.text;
        break;
    }
    if ("status" in entry) entry.status = item.status || entry.status;
    entry.done = completed;
    return entry;
  }

  private delta(base: EntryBase, itemId: string, kind: DeltaKind, text: string): Entry | undefined {
    const id = `${base.turnId}/${itemId}`;
    let entry = this.items.get(id);
    if (!entry) {
      // A delta before its item_started (or without one): start the entry from the delta.
      const type = DELTA_ENTRY[kind];
      if (!type) return undefined;
      const made: ItemEntry =
        type === "command"
          ? { ...base, type, itemId, command: "", output: "", status: "", exitCode: undefined, done: false }
          : { ...base, type, itemId, text: "", done: false };
      entry = this.add(made);
      this.items.set(id, entry);
    }
    entry.seq = base.seq;
    if (entry.type === "command") entry.output += text;
    else if (entry.type === "message" || entry.type === "reasoning") entry.text += text;
    else return undefined; // a file change's apply output: its diff says it
    return entry;
  }

  private end(base: EntryBase, outcome: "completed" | "failed" | "interrupted", detail: string, exitCode: number): Entry {
    if (this.runningTurnId === base.turnId) this.runningTurnId = "";
    // Requests of an ended turn expire; the control plane writes request_resolved for them.
    return this.add({ ...base, type: "turn_end", outcome, detail, exitCode });
  }
}

const DELTA_ENTRY: Partial<Record<DeltaKind, "message" | "reasoning" | "command">> = {
  [DeltaKind.AGENT_MESSAGE]: "message",
  [DeltaKind.REASONING]: "reasoning",
  [DeltaKind.COMMAND_OUTPUT]: "command",
};

function newItemEntry(base: EntryBase, item: Item): ItemEntry | undefined {
  const common = { ...base, itemId: item.itemId, done: false };
  switch (item.kind) {
    case ItemKind.AGENT_MESSAGE:
      return { ...common, type: "message", text: "" };
    case ItemKind.REASONING:
      return { ...common, type: "reasoning", text: "" };
    case ItemKind.COMMAND_EXECUTION:
      return { ...common, type: "command", command: "", output: "", status: "", exitCode: undefined };
    case ItemKind.FILE_CHANGE:
      return { ...common, type: "file_change", changes: [], status: "" };
    case ItemKind.TOOL_CALL:
      return { ...common, type: "tool_call", text: "", status: "" };
    default:
      return undefined; // the user's own message repeats the input entry
  }
}
