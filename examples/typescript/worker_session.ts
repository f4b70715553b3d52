// A session's state on the TypeScript worker (worker.ts), and what turns Resume material and
// runtime events into wire messages: the history a runtime is rehydrated with, and event bodies.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  HistoryItemRole,
  HistoryItemSchema,
  OutputStream,
  RequestKind,
  RequestState,
  type EventBodySchema,
  type HistoryItem,
} from "../../gen/ts/tether/v1/resources_pb.js";
import { LeaseRefSchema, type LeaseRef, type Offer, type ResumeResponse } from "../../gen/ts/tether/v1/worker_service_pb.js";
import type { EventOutbox } from "./worker_outbox.js";
import { APPROVE_METHOD, type RuntimeEvent, type ScriptRuntime, type TerminalEvent } from "./worker_script.js";

// -- sessions ---------------------------------------------------------------------------------

export class LeaseLostError extends Error {}
export class RehydrationFailedError extends Error {}

export interface Reservation {
  offer: Offer;
  expiresAt: number;
}

export class Session {
  runtime: ScriptRuntime | null = null;
  turnId: string | null = null;
  turn: Promise<void> | null = null;
  /** Rehydration of a restore-only placement; a turn granted meanwhile waits for it. */
  restore: Promise<void> | null = null;
  /** An interrupt that arrived while the turn was still rehydrating. */
  pendingInterrupt: string | null = null;
  dropped = false;
  /** Aborted when the session is forgotten: cancels its Resume and Snapshot calls. */
  readonly abort = new AbortController();
  /** Session seq the runtime's history covered when it was rehydrated. */
  historySeq = 0n;
  /** Watermark of the latest snapshot stored at this epoch; null before the first. */
  snapshotSeq: bigint | null = null;
  readonly snapshots = new Set<Promise<boolean>>();
  /** Bumped when a turn is granted: an after-turn snapshot that sees it changed skips. */
  turnGeneration = 0;

  constructor(
    readonly sessionId: string,
    readonly epoch: bigint,
    readonly runtimeName: string,
    readonly outbox: EventOutbox,
  ) {}

  ref(): LeaseRef {
    return create(LeaseRefSchema, { sessionId: this.sessionId, leaseEpoch: this.epoch });
  }

  /** The session seq the runtime's history covers once every emitted event is acknowledged. */
  get watermark(): bigint {
    const acked = this.outbox.lastSeq;
    return acked > this.historySeq ? acked : this.historySeq;
  }
}

export interface SnapshotCapture {
  sessionId: string;
  epoch: bigint;
  seq: bigint;
  history: HistoryItem[];
  metadataJson: string;
  signal: AbortSignal;
}

// -- Resume material into history -------------------------------------------------------------

/**
 * Model-visible history from Resume chunks: the snapshot's items, then the events after it
 * (a port of the Python worker's `history_from_resume`).
 *
 * A turn whose runtime recorded its history (`history_item` events) contributes exactly those
 * items. Other turns become history the way the script runtime records it live: a turn's
 * input_received gives an INPUT item, and all its output chunks joined give one OUTPUT item right
 * after it (none when it printed nothing). The turn about to run (`skipTurnId`) is left out: its
 * input_received is already stored, but the runtime adds it itself when it runs the turn.
 */
export function historyFromResume(chunks: ResumeResponse[], skipTurnId: string): HistoryItem[] {
  const history: HistoryItem[] = [];
  const inputs = new Map<string, string>();
  const outputs = new Map<string, string[]>();
  const recorded = new Map<string, HistoryItem[]>();
  const order: string[] = []; // turns in the order their first event appears
  const checked = (item: HistoryItem): HistoryItem => {
    if (!(item.role in HistoryItemRole) || item.role === HistoryItemRole.UNSPECIFIED) {
      throw new RehydrationFailedError(`history item with unknown role ${item.role}`);
    }
    return item;
  };
  for (const chunk of chunks) {
    history.push(...chunk.history.map(checked));
    for (const event of chunk.events) {
      const turnId = event.turnId;
      if (skipTurnId !== "" && turnId === skipTurnId) continue;
      const body = event.body?.kind;
      if (body === undefined) continue;
      if (body.case === "inputReceived") {
        if (!inputs.has(turnId) && !outputs.has(turnId)) order.push(turnId);
        inputs.set(turnId, body.value.input);
      } else if (body.case === "output") {
        if (!inputs.has(turnId) && !outputs.has(turnId)) order.push(turnId);
        outputs.set(turnId, [...(outputs.get(turnId) ?? []), body.value.text]);
      } else if (body.case === "historyItem") {
        if (!inputs.has(turnId) && !outputs.has(turnId) && !recorded.has(turnId)) order.push(turnId);
        recorded.set(turnId, [...(recorded.get(turnId) ?? []), checked(body.value)]);
      }
    }
  }
  for (const turnId of order) {
    const items = recorded.get(turnId);
    if (items !== undefined) {
      history.push(...items);
      continue;
    }
    const input = inputs.get(turnId);
    if (input !== undefined) history.push(create(HistoryItemSchema, { role: HistoryItemRole.INPUT, text: input, turnId }));
    const text = (outputs.get(turnId) ?? []).join("");
    if (text !== "") history.push(create(HistoryItemSchema, { role: HistoryItemRole.OUTPUT, text, turnId }));
  }
  return history;
}

/** The session seq the rehydrated history covers: the last event sent, else the snapshot's. */
export function resumeWatermark(chunks: ResumeResponse[]): bigint {
  let watermark = 0n;
  for (const chunk of chunks) {
    if (chunk.snapshotSeq > watermark) watermark = chunk.snapshotSeq;
    for (const event of chunk.events) if (event.seq > watermark) watermark = event.seq;
  }
  return watermark;
}

// -- runtime events on the wire ---------------------------------------------------------------

export function eventBody(event: RuntimeEvent): MessageInitShape<typeof EventBodySchema> {
  return { kind: eventKind(event) };
}

function eventKind(event: RuntimeEvent): MessageInitShape<typeof EventBodySchema>["kind"] {
  switch (event.kind) {
    case "output":
      return { case: "output", value: { stream: OutputStream.STDOUT, text: event.text } };
    case "request":
      return {
        case: "requestOpened",
        value: {
          request: {
            requestId: event.requestId,
            kind: RequestKind.COMMAND_APPROVAL,
            method: APPROVE_METHOD,
            paramsJson: event.paramsJson,
            summary: event.summary,
            state: RequestState.PENDING,
            availableDecisions: event.decisions,
          },
        },
      };
    case "completed":
      return { case: "turnCompleted", value: { exitCode: event.exitCode } };
    case "failed":
      return { case: "turnFailed", value: { errorMessage: event.message } };
    case "interrupted":
      return { case: "turnInterrupted", value: { reason: event.reason } };
  }
}

export function describeTerminal(event: TerminalEvent): string {
  switch (event.kind) {
    case "completed":
      return `completed (exit ${event.exitCode})`;
    case "failed":
      return `failed: ${event.message}`;
    case "interrupted":
      return `interrupted: ${event.reason}`;
  }
}
