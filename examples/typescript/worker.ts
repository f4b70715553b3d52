// A Tether execution worker in TypeScript: a second implementation of the WorkerService contract
// (proto/tether/v1/worker_service.proto), written from the contract and the Python worker
// (execution_worker/) to show the contract is all a worker in another language needs. It offers
// the `script` runtime of docs/conformance.md and passes `tether conformance`.
//
//   node_modules/.bin/tsc -p examples/typescript
//   TETHER_CONTROL_PLANE=127.0.0.1:7670 TETHER_RUNTIME=script \
//     node examples/typescript/dist/examples/typescript/worker.js
//
// Layout: worker_lease.ts holds the Lease stream (register, heartbeat, liveness, reconnect),
// worker_outbox.ts a session's numbered events and their resend, worker_script.ts the runtime,
// worker_util.ts the small helpers; this file composes them: offers and turns, Resume,
// snapshots, fencing (LEASE_LOST) and drain.
//
// Sessions are forgotten on exactly four paths, as in the Python worker: lease lost (revoked,
// lost in a renewal or an open, LEASE_LOST on a write), released (end of a drain, failed
// restore), retired by a newer epoch of the same session, or the worker closing. Forgetting a
// session stops its turn, drops its unsent events and cancels its calls: nothing is ever written
// for that epoch again.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import {
  HistoryItemRole,
  HistoryItemSchema,
  OutputStream,
  RequestKind,
  RequestState,
  type EventBodySchema,
  type HistoryItem,
} from "../../gen/ts/tether/v1/resources_pb.js";
import {
  LeaseRefSchema,
  WorkerService,
  type InterruptRequested,
  type LeaseRef,
  type LeaseResponse,
  type Offer,
  type OfferGranted,
  type RequestAnswered,
  type ResumeResponse,
  type SnapshotRequestSchema,
  type SnapshotRequested,
} from "../../gen/ts/tether/v1/worker_service_pb.js";
import { LeaseClient } from "./worker_lease.js";
import { EventOutbox } from "./worker_outbox.js";
import { APPROVE_METHOD, ScriptRuntime, isTerminal, type RuntimeEvent, type TerminalEvent } from "./worker_script.js";
import {
  Backoff,
  Notifier,
  describe,
  isLeaseLost,
  log,
  monotonicMs,
  setLogLevel,
  sleep,
  within,
} from "./worker_util.js";

const VERSION = "0.1.0-ts";
/** The runtimes this worker can run. */
const RUNTIMES = ["script"];
/** History items per SnapshotRequest chunk. */
const SNAPSHOT_CHUNK_ITEMS = 500;
/** ReleaseLease.reason at the end of a drain, and the prefix after a failed restore. */
const RELEASE_DRAINED = "worker drained";
const RELEASE_REHYDRATION_FAILED = "rehydration failed";
/** After the drain grace, interrupted turns get this long to end. */
const INTERRUPT_GRACE_MS = 5000;

// -- settings ---------------------------------------------------------------------------------

interface Settings {
  controlPlane: string;
  workdir: string;
  runtimes: string[];
  slots: number;
  name: string;
  workerId: string | null;
  labels: Record<string, string>;
  drainGraceMs: number;
  /** Deadline of unary calls and of waiting for LeaseOpened. */
  rpcTimeoutMs: number;
  /** Deadline of a whole Resume download (retries included) and of a Snapshot upload. */
  resumeTimeoutMs: number;
  snapshotTimeoutMs: number;
  /** How long a drain waits for the control plane to acknowledge the last events. */
  flushTimeoutMs: number;
  /** An after-turn snapshot waits for the session to be idle this long (a turn that starts
   * meanwhile takes the snapshot over at its own end). */
  snapshotIdleMs: number;
}

const USAGE = `usage: worker.js [--control-plane HOST:PORT] [--workdir DIR] [--runtime NAME] [--slots N]
                 [--name NAME] [--worker-id ID] [--label KEY=VALUE] [--drain-grace-s S] [--log-level L]
Each flag falls back to its environment variable: TETHER_CONTROL_PLANE, TETHER_WORKDIR,
TETHER_RUNTIME, TETHER_SLOTS, TETHER_WORKER_NAME, TETHER_WORKER_ID, TETHER_LABELS,
TETHER_DRAIN_GRACE_S, TETHER_LOG_LEVEL. Runtimes available: ${RUNTIMES.join(", ")}.`;

class UsageError extends Error {}

function parseSettings(argv: string[], env: NodeJS.ProcessEnv): Settings & { logLevel: string } {
  const flags = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (match === null) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const name = match[1] ?? "";
    let value = match[2];
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
    }
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  const known = ["control-plane", "workdir", "runtime", "slots", "name", "worker-id", "label", "drain-grace-s", "log-level"];
  for (const name of flags.keys()) {
    if (!known.includes(name)) throw new UsageError(`unknown option --${name}`);
  }
  const one = (flag: string, envName: string, dflt: string): string => flags.get(flag)?.at(-1) ?? env[envName] ?? dflt;
  const list = (flag: string, envName: string): string[] =>
    (flags.get(flag) ?? [env[envName] ?? ""]).flatMap((v) => v.split(/[\s,]+/)).filter((v) => v !== "");

  const runtimes = [...new Set(list("runtime", "TETHER_RUNTIME"))];
  if (runtimes.length === 0) runtimes.push("script");
  const unknown = runtimes.filter((r) => !RUNTIMES.includes(r));
  if (unknown.length > 0) throw new UsageError(`unknown runtime ${unknown.join(", ")}; available: ${RUNTIMES.join(", ")}`);
  const slots = Number(one("slots", "TETHER_SLOTS", "4"));
  if (!Number.isInteger(slots) || slots < 1 || slots > 1024) throw new UsageError("slots must be an integer from 1 to 1024");
  const drainGrace = Number(one("drain-grace-s", "TETHER_DRAIN_GRACE_S", "30"));
  if (!(drainGrace >= 0)) throw new UsageError("drain grace must be 0 or more seconds");
  const workerId = one("worker-id", "TETHER_WORKER_ID", "") || null;
  if (workerId !== null && !WORKER_ID.test(workerId)) throw new UsageError("worker id must be 1-128 characters of [A-Za-z0-9._-]");
  const labels: Record<string, string> = {};
  for (const item of list("label", "TETHER_LABELS")) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new UsageError(`label ${JSON.stringify(item)} is not of the form key=value`);
    labels[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return {
    controlPlane: one("control-plane", "TETHER_CONTROL_PLANE", "127.0.0.1:7670"),
    workdir: one("workdir", "TETHER_WORKDIR", "./tether-worker"),
    runtimes,
    slots,
    name: one("name", "TETHER_WORKER_NAME", hostname()),
    workerId,
    labels,
    drainGraceMs: drainGrace * 1000,
    rpcTimeoutMs: 10_000,
    resumeTimeoutMs: 60_000,
    snapshotTimeoutMs: 60_000,
    flushTimeoutMs: 10_000,
    snapshotIdleMs: 50,
    logLevel: one("log-level", "TETHER_LOG_LEVEL", "INFO"),
  };
}

const WORKER_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** The worker's stable id: the one stored under the workdir (created on first start, the same
 * file the Python worker uses), so a restarted worker comes back as itself and keeps its
 * sticky sessions. */
function resolveWorkerId(workdir: string, override: string | null): string {
  if (override !== null) return override;
  const path = join(workdir, ".tether", "worker_id");
  try {
    const stored = readFileSync(path, "utf8").trim();
    if (WORKER_ID.test(stored)) return stored;
  } catch {
    // first start
  }
  const workerId = "wkr_" + randomBytes(8).toString("hex");
  mkdirSync(join(workdir, ".tether"), { recursive: true });
  writeFileSync(path + ".tmp", workerId + "\n");
  renameSync(path + ".tmp", path); // atomic: a crash never leaves a half-written id behind
  return workerId;
}

// -- the connection ---------------------------------------------------------------------------

/**
 * One HTTP/2 connection to the control plane that every call shares. `reset()` replaces it:
 * when the Lease stream goes deaf the connection under it is presumed dead too, and the event
 * streams on it would otherwise wait for TCP to notice.
 */
class Connection {
  private manager!: Http2SessionManager;
  client!: Client<typeof WorkerService>;

  constructor(private readonly target: string) {
    this.open();
  }

  private open(): void {
    const baseUrl = `http://${this.target}`;
    // PINGs are a backstop for streams that carry nothing for a long time; the Lease stream's
    // liveness check is what notices a dead connection quickly.
    this.manager = new Http2SessionManager(baseUrl, { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 });
    this.client = createClient(WorkerService, createGrpcTransport({ baseUrl, sessionManager: this.manager }));
  }

  reset(why: string): void {
    const old = this.manager;
    this.open();
    old.abort(new ConnectError(why, Code.Unavailable));
  }

  close(): void {
    this.manager.abort();
  }
}

// -- sessions ---------------------------------------------------------------------------------

class LeaseLostError extends Error {}
class RehydrationFailedError extends Error {}

interface Reservation {
  offer: Offer;
  expiresAt: number;
}

class Session {
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

interface SnapshotCapture {
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

function eventBody(event: RuntimeEvent): MessageInitShape<typeof EventBodySchema> {
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

function describeTerminal(event: TerminalEvent): string {
  switch (event.kind) {
    case "completed":
      return `completed (exit ${event.exitCode})`;
    case "failed":
      return `failed: ${event.message}`;
    case "interrupted":
      return `interrupted: ${event.reason}`;
  }
}

// -- the worker -------------------------------------------------------------------------------

export class Worker {
  readonly workerId: string;
  private readonly conn: Connection;
  private readonly lease: LeaseClient;
  private readonly sessions = new Map<string, Session>();
  private readonly reservations = new Map<string, Reservation>();
  private isDraining = false;
  /** When running turns stop being waited for (monotonic ms). */
  private drainDeadline = 0;
  private readonly workChanged = new Notifier();
  private readonly drainRequested: Promise<void>;
  private signalDrain!: () => void;
  private closed = false;

  constructor(private readonly settings: Settings) {
    mkdirSync(settings.workdir, { recursive: true });
    this.workerId = resolveWorkerId(settings.workdir, settings.workerId);
    this.conn = new Connection(settings.controlPlane);
    this.lease = new LeaseClient(
      () => this.conn.client,
      {
        controlPlane: settings.controlPlane,
        workerId: this.workerId,
        name: settings.name,
        runtimes: settings.runtimes,
        slots: settings.slots,
        labels: settings.labels,
        version: VERSION,
        rpcTimeoutMs: settings.rpcTimeoutMs,
      },
      {
        heldLeases: () => [...this.sessions.values()].filter((s) => !s.dropped).map((s) => s.ref()),
        runningTurns: () => this.runningTurnCount,
        onLostLeases: (lost, why) => {
          for (const ref of lost) this.dropSession(ref.sessionId, ref.leaseEpoch, why);
        },
        onLeaseMessage: (message) => this.onLeaseMessage(message),
        onHeartbeat: () => this.purgeExpiredReservations(),
        onDisconnected: (deaf) => this.onDisconnected(deaf),
      },
    );
    this.drainRequested = new Promise((resolve) => (this.signalDrain = resolve));
  }

  get draining(): boolean {
    return this.isDraining;
  }

  private get runningTurnCount(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (s.turn !== null) n++;
    return n;
  }

  /** Run until drained (SIGTERM, DrainRequested) or closed. Never throws for control-plane
   * trouble: the Lease loop reconnects forever. */
  async run(): Promise<void> {
    log(
      "INFO",
      `worker ${this.workerId} starting: control plane ${this.settings.controlPlane}, runtimes ` +
        `${this.settings.runtimes.join(",")}, ${this.settings.slots} slots, workdir ${this.settings.workdir}`,
    );
    const leaseLoop = this.spawn(this.lease.run(), "lease loop");
    await Promise.race([this.drainRequested, leaseLoop]);
    if (this.isDraining && !this.closed) await this.drain();
    await this.close();
  }

  /**
   * Start draining: no new offers; running turns get `graceMs` (default: the setting) to finish;
   * then events are flushed, final snapshots uploaded, leases released and `run()` returns. A
   * second call can only bring the deadline closer.
   */
  requestDrain(graceMs?: number): void {
    const grace = Math.max(0, graceMs ?? this.settings.drainGraceMs);
    const deadline = monotonicMs() + grace;
    if (!this.isDraining || deadline < this.drainDeadline) this.drainDeadline = deadline;
    if (!this.isDraining) {
      log("INFO", `drain requested; taking no new offers (grace ${(grace / 1000).toFixed(1)}s)`);
      this.isDraining = true;
      this.lease.announceDrain(Date.now() + grace);
    }
    this.signalDrain();
    // Reservations not yet granted would delay the drain for nothing; a closer deadline must
    // be noticed by the waiting drain.
    this.workChanged.notify();
  }

  /** Stop everything now: stop running turns, drop sessions, close the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.lease.stop();
    await Promise.all([...this.sessions.values()].map((s) => this.forget(s, "worker closing")));
    this.conn.close();
    log("INFO", `worker ${this.workerId} stopped`);
  }

  /** Run `promise` in the background; a failure is logged, never an unhandled rejection. */
  private spawn<T>(promise: Promise<T>, name: string): Promise<T | undefined> {
    return promise.catch((error: unknown) => {
      log("ERROR", `task ${name} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      return undefined;
    });
  }

  // -- drain ----------------------------------------------------------------------------------

  /** Turns running, offers accepted but not granted yet, or restores rehydrating. */
  private busy(): boolean {
    if (this.reservations.size > 0) return true;
    for (const s of this.sessions.values()) if (s.turn !== null || s.restore !== null) return true;
    return false;
  }

  /** Wait until not busy(); false once the monotonic clock passes `deadline()` (read again on
   * every change, so a drain whose deadline moves closer notices). */
  private async waitIdle(deadline: () => number): Promise<boolean> {
    while (this.busy()) {
      this.purgeExpiredReservations();
      const remaining = deadline() - monotonicMs();
      if (remaining <= 0) return false;
      await this.workChanged.wait(Math.min(remaining, 250));
    }
    return true;
  }

  private async drain(): Promise<void> {
    log(
      "INFO",
      `draining: ${this.runningTurnCount} turns running, ${(Math.max(0, this.drainDeadline - monotonicMs()) / 1000).toFixed(1)}s to finish them`,
    );
    if (!(await this.waitIdle(() => this.drainDeadline))) {
      log("WARNING", `drain grace over; interrupting ${this.runningTurnCount} running turns`);
      for (const s of this.sessions.values()) if (s.turn !== null) this.interruptSession(s, "worker draining");
      const interruptDeadline = monotonicMs() + INTERRUPT_GRACE_MS;
      await this.waitIdle(() => interruptDeadline);
    }
    const acked = await Promise.all([...this.sessions.values()].map((s) => s.outbox.waitAcked(this.settings.flushTimeoutMs)));
    if (!acked.every(Boolean)) log("WARNING", `drain: some events were not acknowledged in ${this.settings.flushTimeoutMs}ms`);
    // Each session: its final snapshot, then its release (sessions in parallel).
    await Promise.all([...this.sessions.values()].map((s) => this.handBack(s)));
    await this.lease.finish();
    log("INFO", "drained");
  }

  /** End of a drain for one session: a final snapshot of its warm runtime (so the next holder
   * rehydrates from it), then the lease goes back so another worker takes it at once. */
  private async handBack(session: Session): Promise<void> {
    if (session.runtime !== null) await this.finalSnapshot(session);
    if (session.dropped) return; // lost while snapshotting: not ours to release
    await this.release(session, RELEASE_DRAINED);
  }

  private async finalSnapshot(session: Session): Promise<void> {
    if (!session.outbox.allAcked) {
      // The watermark would not cover what the history holds; the log has it all anyway.
      log("WARNING", `no final snapshot of session ${session.sessionId}: its last events were not acknowledged`);
      return;
    }
    if (session.snapshots.size > 0) await within(Promise.allSettled([...session.snapshots]), this.settings.snapshotTimeoutMs);
    if (session.dropped || session.runtime === null) return;
    if (session.snapshotSeq !== null && session.snapshotSeq >= session.watermark) return; // already covered
    await this.sendSnapshot(this.capture(session), "");
  }

  /** Give the session's lease back with `reason` and forget the session. */
  private async release(session: Session, reason: string): Promise<void> {
    if (this.sessions.get(session.sessionId) === session) this.sessions.delete(session.sessionId);
    session.dropped = true; // out of the held leases before the release is on the wire
    const sent = this.lease.send({
      case: "release",
      value: { sessionId: session.sessionId, leaseEpoch: session.epoch, reason },
    });
    log(
      "INFO",
      `released session ${session.sessionId} (epoch ${session.epoch}): ${reason}` +
        (sent ? "" : " (not connected: the lease expires on the server)"),
    );
    await this.forget(session, `released: ${reason}`);
  }

  // -- the Lease stream's messages ------------------------------------------------------------

  private onDisconnected(deaf: boolean): void {
    // Grants for these would have come on the stream that just ended; the server re-offers.
    if (this.reservations.size > 0) {
      this.reservations.clear();
      this.workChanged.notify();
    }
    if (deaf && !this.closed) {
      // The connection under a deaf stream is presumed dead: replace it, and make the event
      // streams resend on the new one instead of waiting for acknowledgements that never come.
      this.conn.reset("the lease stream went deaf; reconnecting");
      for (const s of this.sessions.values()) s.outbox.kick();
    }
  }

  private onLeaseMessage(message: LeaseResponse): void {
    const kind = message.kind;
    switch (kind.case) {
      case "offer":
        this.onOffer(kind.value);
        break;
      case "granted":
        this.onGranted(kind.value);
        break;
      case "interrupt":
        this.onInterrupt(kind.value);
        break;
      case "revoked":
        this.dropSession(kind.value.sessionId, kind.value.leaseEpoch, `revoked: ${kind.value.reason || "no reason"}`);
        break;
      case "snapshot":
        this.spawn(this.snapshotRequested(kind.value), `snapshot ${kind.value.sessionId}`);
        break;
      case "drain": {
        // The server's deadline is wall clock; the drain counts on the monotonic clock.
        const deadline = kind.value.deadline;
        this.requestDrain(deadline === undefined ? undefined : timestampMs(deadline) - Date.now());
        break;
      }
      case "renewed":
        for (const ref of kind.value.lostLeases) this.dropSession(ref.sessionId, ref.leaseEpoch, "lost at renewal");
        break;
      case "answered":
        this.onAnswered(kind.value);
        break;
      case "opened":
        break; // only expected first; the Lease loop consumed it
      default:
        log("DEBUG", `ignoring lease message ${String(kind.case)}`);
    }
  }

  // -- offers and turns -----------------------------------------------------------------------

  private static key(sessionId: string, turnId: string): string {
    return `${sessionId}/${turnId}`;
  }

  private freeSlots(): number {
    return this.settings.slots - this.runningTurnCount - this.reservations.size;
  }

  private purgeExpiredReservations(): void {
    const now = monotonicMs();
    let purged = false;
    for (const [key, r] of this.reservations) {
      if (r.expiresAt <= now) {
        this.reservations.delete(key);
        purged = true;
      }
    }
    if (purged) this.workChanged.notify();
  }

  /** Why the offer (a turn or a restore-only placement) is declined; null to accept. */
  private rejection(offer: Offer): string | null {
    if (this.isDraining) return "worker draining";
    if (!this.settings.runtimes.includes(offer.runtime)) {
      return `runtime '${offer.runtime}' not available (have ${this.settings.runtimes.join(", ")})`;
    }
    // A restore still rehydrating is not busy: a turn granted meanwhile waits for it.
    const session = this.sessions.get(offer.sessionId);
    if (session?.turn != null) return "session busy on this worker";
    for (const r of this.reservations.values()) if (r.offer.sessionId === offer.sessionId) return "session busy on this worker";
    this.purgeExpiredReservations();
    if (this.freeSlots() <= 0) return "no free slot";
    return null;
  }

  private onOffer(offer: Offer): void {
    const what = offer.restoreOnly ? "restore" : "offer";
    const reason = this.rejection(offer);
    if (reason !== null) {
      this.lease.send({
        case: "reject",
        value: { sessionId: offer.sessionId, turnId: offer.turnId, leaseEpoch: offer.leaseEpoch, reason },
      });
      log("INFO", `${what} ${offer.sessionId}/${offer.turnId} rejected: ${reason}`);
      return;
    }
    // Reserve before answering so a burst of offers cannot oversubscribe the slots; the grant
    // comes on this stream well within the offer timeout, or the reservation lapses.
    const key = Worker.key(offer.sessionId, offer.turnId);
    const expiresAt = monotonicMs() + this.lease.timings.offerTimeoutMs + this.settings.rpcTimeoutMs;
    this.reservations.set(key, { offer, expiresAt });
    const sent = this.lease.send({
      case: "accept",
      value: { sessionId: offer.sessionId, turnId: offer.turnId, leaseEpoch: offer.leaseEpoch },
    });
    if (sent) {
      log("INFO", `${what} ${offer.sessionId}/${offer.turnId} accepted (epoch ${offer.leaseEpoch})`);
    } else {
      this.reservations.delete(key);
    }
  }

  private onGranted(granted: OfferGranted): void {
    const key = Worker.key(granted.sessionId, granted.turnId);
    const reservation = this.reservations.get(key);
    this.reservations.delete(key);
    this.workChanged.notify();
    if (reservation === undefined) {
      // Without the offer there is no input to run; the server times the turn out.
      log("WARNING", `grant for unknown offer ${granted.sessionId}/${granted.turnId} ignored`);
      return;
    }
    const offer = reservation.offer;
    const epoch = granted.leaseEpoch || offer.leaseEpoch;
    let session = this.sessions.get(offer.sessionId);
    if (session !== undefined && session.epoch !== epoch) {
      // A new epoch fences the old one: what we held under it may be stale, so retire it and
      // rehydrate (the new session below has no runtime).
      this.spawn(this.forget(session, `retired by epoch ${epoch}`), `retire ${session.sessionId}`);
      session = undefined;
    }
    if (offer.restoreOnly) {
      if (session !== undefined && (session.turn !== null || session.restore !== null)) {
        log("WARNING", `restore of session ${offer.sessionId} ignored: it is busy here at epoch ${epoch}`);
        return;
      }
      session ??= this.newSession(offer.sessionId, epoch, offer.runtime);
      session.restore = this.spawn(this.restore(session), `restore ${offer.sessionId}`).then(() => undefined);
      return;
    }
    session ??= this.newSession(offer.sessionId, epoch, offer.runtime);
    session.turnId = offer.turnId;
    session.turnGeneration += 1;
    session.pendingInterrupt = null;
    // runTurn always awaits before its `finally` clears `turn`, so this assignment comes first.
    session.turn = this.spawn(this.runTurn(session, offer), `turn ${offer.turnId}`).then(() => undefined);
    log("INFO", `turn ${offer.turnId} of session ${offer.sessionId} granted (epoch ${epoch})`);
  }

  private newSession(sessionId: string, epoch: bigint, runtimeName: string): Session {
    const outbox = new EventOutbox({
      client: () => this.conn.client,
      workerId: this.workerId,
      sessionId,
      leaseEpoch: epoch,
      maxEventsPerMessage: () => this.lease.timings.maxEventsPerMessage,
      newBackoff: () => this.lease.newBackoff(),
      ackTimeoutMs: () => Math.max(this.lease.timings.livenessMs, 1000),
      onLeaseLost: () => this.dropSession(sessionId, epoch, "LEASE_LOST on an event write"),
    });
    const session = new Session(sessionId, epoch, runtimeName, outbox);
    this.sessions.set(sessionId, session);
    return session;
  }

  /** A restore-only placement: rehydrate the runtime and keep it warm, then confirm with a
   * snapshot at the new epoch. Fails closed: a runtime that cannot be rebuilt from the history
   * is never replaced by an empty one; the lease goes back with the reason. */
  private async restore(session: Session): Promise<void> {
    let runtime: ScriptRuntime | null;
    try {
      runtime = await this.rehydrate(session, "");
    } catch (error) {
      session.restore = null;
      this.workChanged.notify();
      if (error instanceof LeaseLostError) {
        this.dropSession(session.sessionId, session.epoch, "LEASE_LOST on Resume");
      } else {
        await this.release(session, `${RELEASE_REHYDRATION_FAILED}: ${describe(error)}`);
      }
      return;
    }
    session.restore = null;
    this.workChanged.notify();
    if (runtime === null) return; // dropped meanwhile
    this.spawnSnapshot(session, this.capture(session), "", "restore");
  }

  private async runTurn(session: Session, offer: Offer): Promise<void> {
    const turnId = offer.turnId;
    const outbox = session.outbox;
    let terminal: TerminalEvent | undefined;
    const end = (event: TerminalEvent) => {
      terminal = event;
      outbox.emit(turnId, eventBody(event));
    };
    try {
      outbox.emit(turnId, { kind: { case: "turnStarted", value: { workerId: this.workerId } } });
      // A turn right after a restore-only placement runs on the runtime it rebuilds.
      if (session.restore !== null) await session.restore;
      let runtime = session.runtime;
      if (runtime === null || offer.resumeRequired) {
        try {
          runtime = await this.rehydrate(session, turnId);
        } catch (error) {
          if (error instanceof LeaseLostError) {
            this.dropSession(session.sessionId, session.epoch, "LEASE_LOST on Resume");
            return;
          }
          if (session.dropped) return; // the Resume was cancelled because the lease went
          // Fails closed: never run the turn on an empty history by mistake.
          end({ kind: "failed", message: `could not rehydrate session ${session.sessionId}: ${describe(error)}` });
          return;
        }
        if (runtime === null) return;
      }
      if (session.pendingInterrupt !== null) {
        end({ kind: "interrupted", reason: session.pendingInterrupt });
        return;
      }
      for await (const event of runtime.runTurn(turnId, offer.input)) {
        if (session.dropped) break; // lease gone: the outbox writes nothing any more anyway
        if (isTerminal(event)) {
          if (terminal === undefined) end(event); // exactly one terminal event per turn
          continue;
        }
        outbox.emit(turnId, eventBody(event));
      }
      if (terminal === undefined && !session.dropped) end({ kind: "failed", message: "the runtime ended the turn without a result" });
    } catch (error) {
      log("ERROR", `turn ${turnId} of session ${session.sessionId} failed in the worker: ${describe(error)}`);
      if (terminal === undefined && !session.dropped) end({ kind: "failed", message: `worker error: ${describe(error)}` });
    } finally {
      session.turnId = null;
      session.turn = null;
      session.pendingInterrupt = null;
      this.workChanged.notify();
      if (terminal !== undefined) {
        log("INFO", `turn ${turnId} of session ${session.sessionId} finished: ${describeTerminal(terminal)}`);
        this.afterTurn(session);
      }
    }
  }

  /** Start the session's runtime from its stored history (the snapshot, then the events after
   * it, leaving out `skipTurnId`'s input, which the runtime adds when it runs the turn). Returns
   * null when the session was dropped meanwhile; throws LeaseLostError, or another error saying
   * why the history could not be had. */
  private async rehydrate(session: Session, skipTurnId: string): Promise<ScriptRuntime | null> {
    if (session.runtime !== null) {
      session.runtime.close();
      session.runtime = null;
    }
    const chunks = await this.resume(session);
    const history = historyFromResume(chunks, skipTurnId);
    if (session.dropped) return null;
    const runtime = new ScriptRuntime(history);
    session.runtime = runtime;
    session.historySeq = resumeWatermark(chunks);
    log("INFO", `session ${session.sessionId} rehydrated with ${history.length} history items (up to seq ${session.historySeq})`);
    return runtime;
  }

  /** All of Resume's chunks. A broken connection is retried (the turn waits rather than fails)
   * until the resume timeout; LEASE_LOST is final. */
  private async resume(session: Session): Promise<ResumeResponse[]> {
    const deadline = monotonicMs() + this.settings.resumeTimeoutMs;
    const backoff = this.lease.newBackoff();
    for (;;) {
      try {
        const chunks: ResumeResponse[] = [];
        const call = this.conn.client.resume(
          { workerId: this.workerId, sessionId: session.sessionId, leaseEpoch: session.epoch },
          // grpc-timeout takes whole units: a fractional value is refused by the server.
          { signal: session.abort.signal, timeoutMs: Math.ceil(Math.max(1, deadline - monotonicMs())) },
        );
        for await (const chunk of call) chunks.push(chunk);
        return chunks;
      } catch (error) {
        if (isLeaseLost(error)) throw new LeaseLostError(describe(error));
        const retriable = error instanceof ConnectError && [Code.Unavailable, Code.Canceled, Code.Unknown].includes(error.code);
        if (session.dropped || !retriable || monotonicMs() >= deadline) throw error;
        const delay = backoff.nextDelayMs();
        log("WARNING", `session ${session.sessionId}: Resume failed (${describe(error)}); retrying in ${(delay / 1000).toFixed(2)}s`);
        await sleep(delay, session.abort.signal);
      }
    }
  }

  private onInterrupt(request: InterruptRequested): void {
    const session = this.sessions.get(request.sessionId);
    if (session === undefined || session.turn === null || session.turnId !== request.turnId) {
      log("DEBUG", `interrupt for ${request.sessionId}/${request.turnId} ignored: not running here`);
      return;
    }
    log("INFO", `interrupting turn ${request.turnId} of session ${request.sessionId}`);
    this.interruptSession(session, request.reason || "interrupted by request");
  }

  private interruptSession(session: Session, reason: string): void {
    session.pendingInterrupt = reason;
    session.runtime?.interrupt(reason);
  }

  /** An application answered a pending request: hand it to the runtime, once. Repeats (a
   * reconnect re-sends answers) and answers for turns no longer running here are ignored. */
  private onAnswered(answered: RequestAnswered): void {
    const session = this.sessions.get(answered.sessionId);
    if (session === undefined || session.runtime === null || session.turnId !== answered.turnId) {
      log("DEBUG", `answer to ${answered.sessionId}/${answered.requestId} ignored: its turn is not running here`);
      return;
    }
    let answer: unknown;
    try {
      answer = JSON.parse(answered.responseJson);
    } catch {
      log("WARNING", `answer to request ${answered.requestId} is not JSON; ignoring it`);
      return;
    }
    if (session.runtime.respond(answered.requestId, answer)) {
      log("INFO", `request ${answered.requestId} answered`);
    } else {
      log("DEBUG", `request ${answered.requestId} already answered or gone; repeat ignored`);
    }
  }

  // -- snapshots ------------------------------------------------------------------------------

  /** The after-turn snapshot: once the turn's events are acknowledged (so the watermark covers
   * them) and the session stayed idle a moment; a turn that starts meanwhile takes it over. */
  private afterTurn(session: Session): void {
    if (session.dropped || session.runtime === null) return;
    const generation = session.turnGeneration;
    this.spawn(
      (async () => {
        if (!(await session.outbox.waitAcked(this.settings.snapshotTimeoutMs))) return;
        await sleep(this.settings.snapshotIdleMs, session.abort.signal);
        if (session.dropped || session.runtime === null) return;
        if (session.turnGeneration !== generation || session.turn !== null) return;
        this.spawnSnapshot(session, this.capture(session), "", "after turn");
      })(),
      `after-turn snapshot ${session.sessionId}`,
    );
  }

  /** Answer a SnapshotRequested once the session is quiet: no turn or restore half-way, and
   * every event the history reflects stored (so the watermark covers them). */
  private async snapshotRequested(request: SnapshotRequested): Promise<void> {
    const session = this.sessions.get(request.sessionId);
    if (session === undefined || session.epoch !== request.leaseEpoch) {
      log("WARNING", `snapshot of session ${request.sessionId} (epoch ${request.leaseEpoch}) requested but its lease is not held here`);
      return;
    }
    const deadline = monotonicMs() + this.settings.snapshotTimeoutMs;
    for (;;) {
      const remaining = deadline - monotonicMs();
      if (remaining <= 0 || session.dropped) {
        log("WARNING", `snapshot of session ${request.sessionId} abandoned: the session never became quiet`);
        return;
      }
      const busy = session.turn ?? session.restore;
      if (busy !== null) {
        await within(busy, remaining);
        continue;
      }
      if (!session.outbox.allAcked) {
        await session.outbox.waitAcked(remaining);
        continue;
      }
      break;
    }
    if (session.runtime === null) {
      log("WARNING", `snapshot of session ${request.sessionId} requested but its runtime is not held here`);
      return;
    }
    await this.sendSnapshot(this.capture(session), request.requestId, deadline - monotonicMs());
  }

  /** The session's history and watermark, now, in one synchronous step. Call it quiet. */
  private capture(session: Session): SnapshotCapture {
    const runtime = session.runtime;
    if (runtime === null) throw new Error("capture without a runtime");
    return {
      sessionId: session.sessionId,
      epoch: session.epoch,
      seq: session.watermark,
      history: runtime.exportHistory(),
      metadataJson: JSON.stringify(runtime.metadata()),
      signal: session.abort.signal,
    };
  }

  private spawnSnapshot(session: Session, capture: SnapshotCapture, requestId: string, why: string): void {
    const upload = this.spawn(this.sendSnapshot(capture, requestId), `${why} snapshot ${session.sessionId}`).then((ok) => ok === true);
    session.snapshots.add(upload);
    void upload.finally(() => session.snapshots.delete(upload));
  }

  /** Upload one captured snapshot (every snapshot path ends here). True once stored; a
   * LEASE_LOST answer drops the session. */
  private async sendSnapshot(capture: SnapshotCapture, requestId: string, timeoutMs?: number): Promise<boolean> {
    const history = capture.history;
    const workerId = this.workerId;
    async function* chunks(): AsyncGenerator<MessageInitShape<typeof SnapshotRequestSchema>> {
      yield {
        workerId,
        sessionId: capture.sessionId,
        leaseEpoch: capture.epoch,
        seq: capture.seq,
        runtimeMetadataJson: capture.metadataJson,
        requestId,
        history: history.slice(0, SNAPSHOT_CHUNK_ITEMS),
      };
      for (let start = SNAPSHOT_CHUNK_ITEMS; start < history.length; start += SNAPSHOT_CHUNK_ITEMS) {
        yield { history: history.slice(start, start + SNAPSHOT_CHUNK_ITEMS) };
      }
    }
    try {
      const response = await this.conn.client.snapshot(chunks(), {
        signal: capture.signal,
        timeoutMs: Math.ceil(Math.max(100, timeoutMs ?? this.settings.snapshotTimeoutMs)),
      });
      const session = this.sessions.get(capture.sessionId);
      if (session !== undefined && session.epoch === capture.epoch && (session.snapshotSeq ?? -1n) < capture.seq) {
        session.snapshotSeq = capture.seq;
      }
      log("INFO", `snapshot ${response.snapshotId} of session ${capture.sessionId} stored (seq ${capture.seq}, ${history.length} items)`);
      return true;
    } catch (error) {
      if (isLeaseLost(error)) {
        this.dropSession(capture.sessionId, capture.epoch, "LEASE_LOST on Snapshot");
      } else if (!capture.signal.aborted) {
        log("WARNING", `snapshot of session ${capture.sessionId} failed: ${describe(error)}`);
      }
      return false;
    }
  }

  // -- dropping sessions ----------------------------------------------------------------------

  /** Forget a session whose lease is gone (epoch 0: whatever epoch is held). */
  private dropSession(sessionId: string, epoch: bigint, why: string): void {
    // An accepted offer revoked before its grant: free the slot it reserved.
    for (const [key, r] of this.reservations) {
      if (r.offer.sessionId === sessionId && (epoch === 0n || r.offer.leaseEpoch === epoch)) {
        this.reservations.delete(key);
        this.workChanged.notify();
      }
    }
    const session = this.sessions.get(sessionId);
    if (session === undefined || (epoch !== 0n && session.epoch !== epoch)) return;
    log("WARNING", `dropping session ${sessionId} (epoch ${session.epoch}): ${why}`);
    this.spawn(this.forget(session, why), `drop ${sessionId}`);
  }

  /** Stop the session's turn, discard its unsent events, cancel its calls. */
  private async forget(session: Session, why: string): Promise<void> {
    if (this.sessions.get(session.sessionId) === session) this.sessions.delete(session.sessionId);
    session.dropped = true;
    log("DEBUG", `forgetting session ${session.sessionId}: ${why}`);
    session.abort.abort();
    session.runtime?.close(); // ends a running turn at once (its loop sees `dropped`)
    this.workChanged.notify();
    await session.outbox.close();
    const pending = [session.turn, session.restore].filter((p): p is Promise<void> => p !== null);
    await within(Promise.allSettled(pending), 5000);
    session.runtime = null;
    this.workChanged.notify();
  }
}

// -- main -------------------------------------------------------------------------------------

async function main(): Promise<number> {
  let settings: ReturnType<typeof parseSettings>;
  try {
    settings = parseSettings(process.argv.slice(2), process.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`${USAGE}\n\nerror: ${error.message}\n`);
    return 2;
  }
  setLogLevel(settings.logLevel);
  const worker = new Worker(settings);
  // First SIGTERM or SIGINT drains (exit 0 once drained); a second one stops at once.
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (!worker.draining) {
        log("INFO", `${signal} received; draining (send it again to stop at once)`);
        worker.requestDrain();
      } else {
        log("WARNING", `${signal} received again; stopping now`);
        process.exit(128 + (signal === "SIGTERM" ? 15 : 2));
      }
    });
  }
  // A bug in a background task is logged; it must not take the worker and its sessions down.
  process.on("unhandledRejection", (reason) => {
    log("ERROR", `unhandled rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
  });
  await worker.run();
  return 0;
}

// Exit explicitly: idle HTTP/2 sessions and timers would otherwise keep the process alive.
main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log("ERROR", `worker failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
