/**
 * A Tether application client in TypeScript: what an app backend does to run one agent turn.
 *
 * It creates a session (or uses one you name), sends one input as a new turn, follows the
 * session's durable event log live from a cursor, answers the runtime's approval requests, and
 * exits when the turn ends. It talks plain gRPC to the control plane through the code that
 * protoc-gen-es generated from proto/tether/v1 (gen/ts) and the Connect runtime.
 *
 *   node_modules/.bin/tsc -p examples/typescript
 *   node examples/typescript/dist/examples/typescript/client.js [options] [INPUT]
 *
 * Options (the control plane may also come from TETHER_CONTROL_PLANE; default 127.0.0.1:7670):
 *   --control-plane HOST:PORT   where the control plane listens (plaintext gRPC)
 *   --runtime NAME              runtime of a new session (default "script", see docs/conformance.md)
 *   --session ID                send to this existing session instead of creating one
 *   --idempotency-key KEY       makes a retried SendInput return the first turn (default: random)
 *   --decision DECISION         the answer to approval requests (default "accept")
 *   --reconnect-after N         close the event stream once after N events and resume it from the
 *                               last seq seen: what the client does anyway when the stream breaks
 *
 * INPUT defaults to a small script that speaks, asks for an approval, and speaks again.
 *
 * Exit status: the turn's exit code when it completed (0 normally); 1 when it failed;
 * 130 when it was interrupted; 2 when a call failed (the gRPC status and the server's reason
 * are printed on stderr) or the arguments were wrong.
 *
 * `client.js bench ...` measures dispatch latency as an application sees it; see bench() below.
 */

import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import { parseArgs } from "node:util";

import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { type Event, OutputStream, RequestKind, RequestState } from "../../gen/ts/tether/v1/resources_pb.js";
import { SessionService } from "../../gen/ts/tether/v1/session_service_pb.js";
import { errorInfo, fieldViolations } from "./rpc_errors.js";

type Sessions = Client<typeof SessionService>;

const DEFAULT_INPUT = ["say hello from TypeScript", "approve deploy to staging", "say done"].join("\n");

/** The --control-plane option, shared by both modes. */
const CONTROL_PLANE = { type: "string", default: process.env.TETHER_CONTROL_PLANE || "127.0.0.1:7670" } as const;

/** Every unary call gets a deadline; the event stream gets none (it follows the log until we stop). */
const CALL_TIMEOUT_MS = 10_000;

/** How long the client keeps retrying a broken connection before it gives up. */
const RECONNECT_FOR_MS = 30_000;

/** Exit statuses besides the turn's own exit code. */
const EXIT_TURN_FAILED = 1;
const EXIT_ERROR = 2;
const EXIT_INTERRUPTED = 130;

// -- following the log ----------------------------------------------------------------------

/**
 * The session's events with seq > afterSeq, in order, then live ones, for as long as the caller
 * iterates.
 *
 * The log is durable and gapless, so a stream that breaks (a network blip, a control plane
 * restart) loses nothing: reopen it with after_seq = the last seq seen, and the server sends
 * exactly the events after it, none twice. `dropAfter` closes the stream on purpose once, after
 * that many events, to show the same resume without breaking anything.
 */
async function* followEvents(
  sessions: Sessions,
  sessionId: string,
  afterSeq: bigint,
  dropAfter = 0,
): AsyncGenerator<Event> {
  let cursor = afterSeq;
  let seen = 0;
  let giveUpAt = 0; // 0 while connected; else when to stop retrying
  let backoffMs = 50;
  for (;;) {
    const abort = new AbortController();
    let dropped = false;
    try {
      const stream = sessions.streamSessionEvents({ sessionId, afterSeq: cursor }, { signal: abort.signal });
      batches: for await (const batch of stream) {
        giveUpAt = 0;
        backoffMs = 50;
        for (const event of batch.events) {
          cursor = event.seq;
          yield event;
          if (++seen === dropAfter) {
            dropped = true;
            break batches;
          }
        }
      }
      if (dropped) {
        note(`closed the event stream after seq ${cursor}; reopening it with after_seq=${cursor}`);
        continue;
      }
      // The server ends a live stream only when it shuts down: reopen it like a broken one.
      throw new ConnectError("the server ended the event stream", Code.Unavailable);
    } catch (err) {
      const error = ConnectError.from(err);
      if (!isTransient(error)) throw error;
      giveUpAt ||= Date.now() + RECONNECT_FOR_MS;
      if (Date.now() + backoffMs > giveUpAt) throw error;
      note(`event stream broke (${describeError(error)}); reconnecting with after_seq=${cursor}`);
      await sleep(backoffMs * (0.5 + Math.random()));
      backoffMs = Math.min(1000, backoffMs * 2);
    } finally {
      abort.abort(); // ends the call if the caller stopped iterating or we broke out
    }
  }
}

/**
 * Errors worth retrying: the connection failed, not the request. Every error the control plane
 * itself returns carries an ErrorInfo. A connection that fails under a call surfaces without
 * one: UNAVAILABLE (refused), or from Node's HTTP/2 layer CANCELED (a killed server's streams
 * close with RST_STREAM CANCEL), ABORTED (ECONNRESET) or INTERNAL (an HTTP/2 protocol error).
 * This client never cancels a call it still waits on, so a CANCELED is never its own doing.
 */
function isTransient(error: ConnectError): boolean {
  if (error.code === Code.Unavailable) return true;
  const dropped = [Code.Canceled, Code.Aborted, Code.Internal].includes(error.code);
  return dropped && errorInfo(error) === undefined;
}

// -- one turn -------------------------------------------------------------------------------

interface RunOptions {
  runtime: string;
  sessionId: string;
  input: string;
  idempotencyKey: string;
  decision: string;
  reconnectAfter: number;
}

async function runTurn(sessions: Sessions, opts: RunOptions): Promise<number> {
  // 1. A session: the durable identity the turns, the log and the runtime's state hang off.
  let sessionId = opts.sessionId;
  let cursor = 0n;
  if (sessionId) {
    // Follow an existing session from its current end, so we print only what this turn does.
    const { session } = await sessions.getSession({ sessionId }, { timeoutMs: CALL_TIMEOUT_MS });
    cursor = session?.lastSeq ?? 0n;
    console.log(`session ${sessionId} (runtime ${session?.runtime}, after seq ${cursor})`);
  } else {
    const { session } = await sessions.createSession({ runtime: opts.runtime }, { timeoutMs: CALL_TIMEOUT_MS });
    sessionId = session?.sessionId ?? "";
    console.log(`session ${sessionId} (runtime ${opts.runtime})`);
  }

  // 2. The input, as a new turn. The idempotency key makes the call safe to retry: if the
  //    answer is lost, sending the same key again returns the turn the first call stored
  //    instead of starting a second one.
  const sent = await retryTransient(() =>
    sessions.sendInput(
      { sessionId, input: opts.input, idempotencyKey: opts.idempotencyKey },
      { timeoutMs: CALL_TIMEOUT_MS },
    ),
  );
  const turnId = sent.turn?.turnId ?? "";
  if (sent.deduplicated) cursor = 0n; // a turn stored earlier: its events may predate our cursor
  console.log(`turn ${turnId}${sent.deduplicated ? " (deduplicated)" : ""} key=${opts.idempotencyKey}`);

  // 3. Follow the log from the cursor until the turn ends. The cursor was taken before the
  //    input was sent, so the stream replays whatever the turn did meanwhile, then goes live.
  for await (const event of followEvents(sessions, sessionId, cursor, opts.reconnectAfter)) {
    console.log(formatEvent(event));
    if (event.turnId !== turnId) continue; // another turn of the session (one queued before ours)
    const body = event.body?.kind;
    switch (body?.case) {
      case "requestOpened": {
        // 4. The runtime waits for an answer; the turn stays blocked until someone gives one.
        const request = body.value.request;
        if (request) await answer(sessions, sessionId, request.requestId, opts.decision);
        break;
      }
      case "turnCompleted":
        console.log(`turn ${turnId} completed with exit code ${body.value.exitCode}`);
        return body.value.exitCode;
      case "turnFailed":
        console.error(`turn ${turnId} failed: ${body.value.errorMessage}${body.value.workerLost ? " (worker lost)" : ""}`);
        return EXIT_TURN_FAILED;
      case "turnInterrupted":
        console.error(`turn ${turnId} interrupted: ${body.value.reason}`);
        return EXIT_INTERRUPTED;
    }
  }
  throw new Error("the event stream ended before the turn did"); // followEvents never ends by itself
}

/** Answer a pending approval. Each request resolves exactly once, whoever answers first. */
async function answer(sessions: Sessions, sessionId: string, requestId: string, decision: string): Promise<void> {
  try {
    const { request } = await sessions.respondToRequest(
      { sessionId, requestId, responseJson: JSON.stringify({ decision }) },
      { timeoutMs: CALL_TIMEOUT_MS },
    );
    console.log(`answered ${requestId}: ${request?.responseJson}`);
  } catch (err) {
    const error = ConnectError.from(err);
    // Someone else (another client, an operator) answered first, or the turn ended: not our error.
    if (errorInfo(error)?.reason !== "REQUEST_ALREADY_RESOLVED") throw error;
    console.log(`request ${requestId} was already answered`);
  }
}

/** Retry a call on transient errors with jittered backoff; only for calls that are safe to repeat. */
async function retryTransient<T>(call: () => Promise<T>): Promise<T> {
  const giveUpAt = Date.now() + RECONNECT_FOR_MS;
  for (let delayMs = 50; ; delayMs = Math.min(1000, delayMs * 2)) {
    try {
      return await call();
    } catch (err) {
      const error = ConnectError.from(err);
      if (!isTransient(error) || Date.now() + delayMs > giveUpAt) throw error;
      note(`retrying after ${describeError(error)}`);
      await sleep(delayMs * (0.5 + Math.random()));
    }
  }
}

// -- printing -------------------------------------------------------------------------------

/** `#seq kind details`: one line per event, the kind named as in the contract (snake_case). */
function formatEvent(event: Event): string {
  const body = event.body?.kind;
  const kind = snakeCase(body?.case ?? "unknown");
  let detail = "";
  switch (body?.case) {
    case "inputReceived":
      detail = JSON.stringify(body.value.input);
      break;
    case "turnStarted":
      detail = `worker ${body.value.workerId}`;
      break;
    case "output":
      detail = (body.value.stream === OutputStream.STDERR ? "[stderr] " : "") + JSON.stringify(body.value.text);
      break;
    case "turnCompleted":
      detail = `exit ${body.value.exitCode}`;
      break;
    case "turnFailed":
      detail = body.value.errorMessage + (body.value.workerLost ? " (worker lost)" : "");
      break;
    case "turnInterrupted":
      detail = body.value.reason;
      break;
    case "requestOpened": {
      const r = body.value.request;
      if (r) detail = `${r.requestId} ${RequestKind[r.kind]} ${JSON.stringify(r.summary)} [${r.availableDecisions.join(", ")}]`;
      break;
    }
    case "requestResolved":
      detail = `${body.value.requestId} ${RequestState[body.value.state]} ${body.value.responseJson || body.value.expireReason}`;
      break;
    case "agentError":
      detail = body.value.message;
      break;
    case "itemStarted":
    case "itemCompleted":
      detail = `${body.value.item?.itemId} ${body.value.item?.status}`;
      break;
    case "itemDelta":
      detail = `${body.value.itemId} ${JSON.stringify(body.value.delta)}`;
      break;
  }
  return `#${event.seq} ${kind} ${detail}`.trimEnd();
}

/** "turnStarted" (the oneof case in TypeScript) → "turn_started" (the field name in the contract). */
function snakeCase(name: string): string {
  return name.replace(/[A-Z]/g, (c) => "_" + c.toLowerCase());
}

/** Progress notes go to stderr, so stdout holds only what the session did. */
function note(text: string): void {
  console.error(`-- ${text}`);
}

// -- errors ---------------------------------------------------------------------------------

/** `NOT_FOUND (SESSION_NOT_FOUND): session 'x' does not exist`: the gRPC status, then the reason. */
function describeError(error: ConnectError): string {
  const status = Code[error.code].replace(/(?<!^)([A-Z])/g, "_$1").toUpperCase();
  const reason = errorInfo(error)?.reason;
  return `${status}${reason ? ` (${reason})` : ""}: ${error.rawMessage}`;
}

// -- the benchmark mode ---------------------------------------------------------------------

/**
 * `client.js bench`: dispatch latency as an application sees it.
 *
 * One sample: take the time, call SendInput, and stop the clock when the turn's first event
 * after input_received (turn_started, written by the worker that took the turn) arrives on the
 * session's event stream; wait for the turn to end before the next sample. The stream is
 * opened once and read all the time, and each event is timed as it is read, so the figure does
 * not depend on when the caller looks. bench/typescript.py measures the Python SDK the same way.
 *
 *   client.js bench [--session ID] [--turns N] [--warmup N] [--input TEXT]
 *       runs the samples back to back and prints {"p50_ms", "p99_ms", ...}
 *   client.js bench --session ID --paced
 *       one sample per line read on stdin, one JSON line {"turn_id", "ms", "end"} per sample on
 *       stdout, so that a driver can interleave this client's samples with another's
 */
async function bench(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      "control-plane": CONTROL_PLANE,
      runtime: { type: "string", default: "script" },
      session: { type: "string", default: "" },
      turns: { type: "string", default: "200" },
      warmup: { type: "string", default: "20" },
      input: { type: "string", default: "say ping" },
      paced: { type: "boolean", default: false },
    },
  });
  const sessions = connect(values["control-plane"]);
  let sessionId = values.session;
  if (!sessionId) {
    const { session } = await sessions.createSession({ runtime: values.runtime }, { timeoutMs: CALL_TIMEOUT_MS });
    sessionId = session?.sessionId ?? "";
  }
  const { session } = await sessions.getSession({ sessionId }, { timeoutMs: CALL_TIMEOUT_MS });
  const watch = new TurnWatch(sessions, sessionId, session?.lastSeq ?? 0n);

  const sample = async (): Promise<{ turn_id: string; ms: number; end: string }> => {
    const t0 = performance.now();
    const { turn } = await sessions.sendInput({ sessionId, input: values.input }, { timeoutMs: CALL_TIMEOUT_MS });
    const turnId = turn?.turnId ?? "";
    const end = await watch.ended(turnId);
    return { turn_id: turnId, ms: (watch.firstAt.get(turnId) ?? NaN) - t0, end };
  };

  try {
    if (values.paced) {
      for await (const _line of createInterface({ input: process.stdin })) {
        console.log(JSON.stringify(await sample()));
      }
      return 0;
    }
    const warmup = Number(values.warmup);
    const turns = Number(values.turns);
    const ms: number[] = [];
    for (let i = 0; i < warmup + turns; i++) {
      const s = await sample();
      if (s.end !== "turn_completed") throw new Error(`turn ${s.turn_id} ended ${s.end}`);
      if (i >= warmup) ms.push(s.ms);
    }
    ms.sort((a, b) => a - b);
    const at = (p: number) => ms[Math.min(ms.length - 1, Math.max(0, Math.round((p / 100) * (ms.length - 1))))] ?? NaN;
    console.log(JSON.stringify({ session_id: sessionId, turns: ms.length, p50_ms: at(50), p99_ms: at(99) }));
    return 0;
  } finally {
    watch.close();
  }
}

/** Reads a session's stream in the background and times each turn's first event after input. */
class TurnWatch {
  /** Turn id → performance.now() when its first event after input_received was read. */
  readonly firstAt = new Map<string, number>();
  private readonly ends = new Map<string, { promise: Promise<string>; resolve: (kind: string) => void }>();
  private readonly abort = new AbortController();
  private failed: unknown;

  constructor(sessions: Sessions, sessionId: string, afterSeq: bigint) {
    const stream = sessions.streamSessionEvents({ sessionId, afterSeq }, { signal: this.abort.signal });
    void (async () => {
      try {
        for await (const batch of stream) {
          for (const event of batch.events) {
            const now = performance.now();
            const kind = event.body?.kind.case;
            if (kind !== "inputReceived" && !this.firstAt.has(event.turnId)) this.firstAt.set(event.turnId, now);
            if (kind === "turnCompleted" || kind === "turnFailed" || kind === "turnInterrupted") {
              this.end(event.turnId).resolve(snakeCase(kind));
            }
          }
        }
      } catch (err) {
        if (!this.abort.signal.aborted) this.failed = err;
      }
      for (const end of this.ends.values()) end.resolve("stream ended: " + String(this.failed));
    })();
  }

  /** Resolves with the terminal event's kind once the turn has ended (even if it already has). */
  ended(turnId: string): Promise<string> {
    return this.end(turnId).promise;
  }

  private end(turnId: string) {
    let end = this.ends.get(turnId);
    if (!end) {
      let resolve!: (kind: string) => void;
      const promise = new Promise<string>((r) => (resolve = r));
      end = { promise, resolve };
      this.ends.set(turnId, end);
    }
    return end;
  }

  close(): void {
    this.abort.abort();
  }
}

// -- main -----------------------------------------------------------------------------------

/** One HTTP/2 connection to the control plane, reused by every call (re-dialled if it drops). */
function connect(address: string): Sessions {
  return createClient(SessionService, createGrpcTransport({ baseUrl: `http://${address}` }));
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === "bench") return bench(argv.slice(1));
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "control-plane": CONTROL_PLANE,
      runtime: { type: "string", default: "script" },
      session: { type: "string", default: "" },
      "idempotency-key": { type: "string", default: "" },
      decision: { type: "string", default: "accept" },
      "reconnect-after": { type: "string", default: "0" },
    },
  });
  return runTurn(connect(values["control-plane"]), {
    runtime: values.runtime,
    sessionId: values.session,
    input: positionals.join(" ") || DEFAULT_INPUT,
    idempotencyKey: values["idempotency-key"] || randomUUID(),
    decision: values.decision,
    reconnectAfter: Number(values["reconnect-after"]),
  });
}

main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (err: unknown) => {
    if (err instanceof ConnectError) {
      console.error(`error: ${describeError(err)}`);
      for (const violation of fieldViolations(err)) console.error(`  ${violation}`);
    } else {
      console.error(`error: ${err instanceof Error ? err.message : String(err)}`);
    }
    process.exit(EXIT_ERROR);
  },
);
