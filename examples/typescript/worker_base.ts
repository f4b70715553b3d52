// The TypeScript worker's (worker.ts) shared state and what it owns about held sessions: the
// connection, the Lease client wiring, Resume and rehydration, snapshots, and dropping sessions.
// The Worker (worker_offers.ts) extends it with offers, turns, the Lease stream's messages and drain.

import { mkdirSync } from "node:fs";
import { type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import {
  WorkerService,
  type LeaseResponse,
  type ResumeResponse,
  type SnapshotRequestSchema,
  type SnapshotRequested,
} from "../../gen/ts/tether/v1/worker_service_pb.js";
import { LeaseClient } from "./worker_lease.js";
import { ScriptRuntime } from "./worker_script.js";
import {
  LeaseLostError,
  Session,
  historyFromResume,
  resumeWatermark,
  type Reservation,
  type SnapshotCapture,
} from "./worker_session.js";
import { VERSION, resolveWorkerId, type Settings } from "./worker_settings.js";
import { Notifier, describe, isLeaseLost, log, monotonicMs, sleep, within } from "./worker_util.js";

/** History items per SnapshotRequest chunk. */
const SNAPSHOT_CHUNK_ITEMS = 500;

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

// -- the worker's sessions ---------------------------------------------------------------------

export abstract class WorkerBase {
  readonly workerId: string;
  protected readonly conn: Connection;
  protected readonly lease: LeaseClient;
  protected readonly sessions = new Map<string, Session>();
  protected readonly reservations = new Map<string, Reservation>();
  protected isDraining = false;
  /** When running turns stop being waited for (monotonic ms). */
  protected drainDeadline = 0;
  protected readonly workChanged = new Notifier();
  protected readonly drainRequested: Promise<void>;
  protected signalDrain!: () => void;
  protected closed = false;

  constructor(protected readonly settings: Settings) {
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

  protected get runningTurnCount(): number {
    let n = 0;
    for (const s of this.sessions.values()) if (s.turn !== null) n++;
    return n;
  }

  /** Run `promise` in the background; a failure is logged, never an unhandled rejection. */
  protected spawn<T>(promise: Promise<T>, name: string): Promise<T | undefined> {
    return promise.catch((error: unknown) => {
      log("ERROR", `task ${name} failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
      return undefined;
    });
  }

  // -- the Lease stream's callbacks (the Worker's) ---------------------------------------------

  protected abstract onLeaseMessage(message: LeaseResponse): void;
  protected abstract purgeExpiredReservations(): void;
  protected abstract onDisconnected(deaf: boolean): void;

  // -- Resume and rehydration -----------------------------------------------------------------

  /** Start the session's runtime from its stored history (the snapshot, then the events after
   * it, leaving out `skipTurnId`'s input, which the runtime adds when it runs the turn). Returns
   * null when the session was dropped meanwhile; throws LeaseLostError, or another error saying
   * why the history could not be had. */
  protected async rehydrate(session: Session, skipTurnId: string): Promise<ScriptRuntime | null> {
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
  protected async resume(session: Session): Promise<ResumeResponse[]> {
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

  // -- snapshots ------------------------------------------------------------------------------

  /** The after-turn snapshot: once the turn's events are acknowledged (so the watermark covers
   * them) and the session stayed idle a moment; a turn that starts meanwhile takes it over. */
  protected afterTurn(session: Session): void {
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
  protected async snapshotRequested(request: SnapshotRequested): Promise<void> {
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
  protected capture(session: Session): SnapshotCapture {
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

  protected spawnSnapshot(session: Session, capture: SnapshotCapture, requestId: string, why: string): void {
    const upload = this.spawn(this.sendSnapshot(capture, requestId), `${why} snapshot ${session.sessionId}`).then((ok) => ok === true);
    session.snapshots.add(upload);
    void upload.finally(() => session.snapshots.delete(upload));
  }

  /** Upload one captured snapshot (every snapshot path ends here). True once stored; a
   * LEASE_LOST answer drops the session. */
  protected async sendSnapshot(capture: SnapshotCapture, requestId: string, timeoutMs?: number): Promise<boolean> {
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
  protected dropSession(sessionId: string, epoch: bigint, why: string): void {
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
  protected async forget(session: Session, why: string): Promise<void> {
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
