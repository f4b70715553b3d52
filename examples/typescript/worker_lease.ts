// The Lease loop: register, hold the long-lived Lease stream, heartbeat on it, and reconnect
// forever when it ends.
//
// The loop owns the connection and its timing; what the messages mean is the worker's business,
// handed over through `LeaseHandler`. Heartbeats ride on the stream and the server answers every
// renewal, so silence from the server for the liveness timeout (set at Register) means the
// stream is deaf (alive but receiving nothing, as with a half-dead TCP connection): the loop then
// drops it, and the HTTP/2 connection under it, and reconnects. Leases stay held across the
// reconnect; the next LeaseOpen lists them. Every connect registers again first, which is what
// makes a restarted control plane (which no longer knows the registration) work without a
// special case.

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { durationMs, timestampFromMs, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import {
  LeaseRequestSchema,
  type LeaseRef,
  type LeaseRequest,
  type LeaseResponse,
  type RegisterResponse,
  type WorkerService,
} from "../../gen/ts/tether/v1/worker_service_pb.js";
import { AsyncQueue, Backoff, describe, log, monotonicMs, sleep, within } from "./worker_util.js";

/** What a LeaseRequest says (its oneof), as `send()` takes it. */
export type LeaseRequestKind = MessageInitShape<typeof LeaseRequestSchema>["kind"];

/** Protocol features this worker implements, announced in RegisterRequest.features. */
export const FEATURES = [
  "lease_renew", "resume", "snapshot", "interrupt", "drain", "release",
  "liveness", "drain_started", "restore_only", "release_reason", "snapshot_after_turn",
];

/** Without a liveness timeout from the server, the stream is deaf after this many heartbeats. */
const LIVENESS_FALLBACK_INTERVALS = 3;

/** The timings the server set in its RegisterResponse (the server is the authority). */
export interface Timings {
  heartbeatMs: number;
  leaseTtlMs: number;
  offerTimeoutMs: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  maxEventsPerMessage: number;
  livenessMs: number;
  workerDeadGraceMs: number;
}

/** Used until the first RegisterResponse says otherwise. */
export const DEFAULT_TIMINGS: Timings = {
  heartbeatMs: 5000,
  leaseTtlMs: 30_000,
  offerTimeoutMs: 5000,
  backoffInitialMs: 200,
  backoffMaxMs: 5000,
  maxEventsPerMessage: 500,
  livenessMs: LIVENESS_FALLBACK_INTERVALS * 5000,
  workerDeadGraceMs: 0,
};

function timingsFrom(response: RegisterResponse, fallback: Timings): Timings {
  const ms = (d: Duration | undefined, dflt: number) => {
    const value = d === undefined ? 0 : durationMs(d);
    return value > 0 ? value : dflt;
  };
  const heartbeatMs = ms(response.heartbeatInterval, fallback.heartbeatMs);
  const leaseTtlMs = ms(response.leaseTtl, fallback.leaseTtlMs);
  return {
    heartbeatMs,
    leaseTtlMs,
    offerTimeoutMs: ms(response.offerTimeout, fallback.offerTimeoutMs),
    backoffInitialMs: ms(response.reconnectBackoffInitial, fallback.backoffInitialMs),
    // Well inside the lease TTL: a restarted control plane gives each lease it loads one TTL.
    backoffMaxMs: Math.min(ms(response.reconnectBackoffMax, fallback.backoffMaxMs), leaseTtlMs / 4),
    maxEventsPerMessage: response.maxEventsPerMessage > 0 ? response.maxEventsPerMessage : fallback.maxEventsPerMessage,
    // Unset means 3 heartbeats of this response, not what an earlier registration said.
    livenessMs: ms(response.livenessTimeout, LIVENESS_FALLBACK_INTERVALS * heartbeatMs),
    workerDeadGraceMs: ms(response.workerDeadGrace, 0),
  };
}

/** What the Lease loop asks of the worker. */
export interface LeaseHandler {
  heldLeases(): LeaseRef[];
  runningTurns(): number;
  onLostLeases(lost: LeaseRef[], why: string): void;
  /** Must not block: the reader calls it for every message in order. */
  onLeaseMessage(message: LeaseResponse): void;
  onHeartbeat(): void;
  /** The stream ended (or never opened); `deaf` when the loop gave up on a silent one or on an
   * unanswered Register: the connection under it is presumed dead. */
  onDisconnected(deaf: boolean): void;
}

export interface LeaseSettings {
  controlPlane: string;
  workerId: string;
  name: string;
  runtimes: string[];
  slots: number;
  labels: Record<string, string>;
  version: string;
  rpcTimeoutMs: number;
}

interface OpenStream {
  queue: AsyncQueue<LeaseRequest>;
  abort: AbortController;
  ended: Promise<void>;
  drainAnnounced: boolean;
}

export class LeaseClient {
  timings: Timings = { ...DEFAULT_TIMINGS };
  registrationId = "";
  private stream: OpenStream | null = null;
  private stopping = false;
  private readonly stopSignal = new AbortController();
  /** Wall-clock deadline (ms since the epoch) announced in DrainStarted; null until draining. */
  private drainDeadlineMs: number | null = null;

  constructor(
    private readonly client: () => Client<typeof WorkerService>,
    private readonly settings: LeaseSettings,
    private readonly handler: LeaseHandler,
  ) {}

  get connected(): boolean {
    return this.stream !== null;
  }

  newBackoff(): Backoff {
    return new Backoff(this.timings.backoffInitialMs, this.timings.backoffMaxMs);
  }

  /** Write one message on the open stream; false when there is none (the message is lost, as
   * on a broken stream: the server re-offers, and releases fall back to lease expiry). */
  send(kind: LeaseRequestKind): boolean {
    const stream = this.stream;
    if (stream === null) return false;
    return stream.queue.push(create(LeaseRequestSchema, { kind }));
  }

  /** Tell the server the worker drains until `deadlineMs` (wall clock): now on the open stream,
   * and first thing on every stream opened from now on. */
  announceDrain(deadlineMs: number): void {
    this.drainDeadlineMs = deadlineMs;
    this.sendDrainStarted();
  }

  private sendDrainStarted(): void {
    const stream = this.stream;
    if (stream === null || this.drainDeadlineMs === null || stream.drainAnnounced) return;
    stream.drainAnnounced = true;
    if (this.send({ case: "draining", value: { deadline: timestampFromMs(Math.round(this.drainDeadlineMs)) } })) {
      log("INFO", "told the control plane this worker is draining");
    }
  }

  /** Make `run()` end and drop the stream now. */
  stop(): void {
    this.stopping = true;
    this.stopSignal.abort();
    this.stream?.abort.abort();
  }

  /** Half-close the stream (the worker has said everything: a drain's releases) and wait for the
   * server to end it, bounded: closing any sooner could lose the last releases. The loop does
   * not reconnect afterwards. */
  async finish(): Promise<void> {
    this.stopping = true;
    const stream = this.stream;
    if (stream === null) return;
    stream.queue.close();
    if ((await within(stream.ended.then(() => true), this.settings.rpcTimeoutMs)) === undefined) {
      log("WARNING", `the control plane did not end the lease stream within ${this.settings.rpcTimeoutMs}ms`);
    }
  }

  /** Register, hold the stream, reconnect with jittered backoff; never gives up. */
  async run(): Promise<void> {
    let backoff = this.newBackoff();
    while (!this.stopping) {
      let opened = false;
      try {
        opened = await this.connectOnce();
      } catch (error) {
        if (!this.stopping) log("WARNING", `control plane ${this.settings.controlPlane}: ${describe(error)}`);
      }
      if (this.stopping) return;
      // A stream that was up counts as success: the next backoff starts from the server's
      // current hints rather than where a past outage left it.
      if (opened) backoff = this.newBackoff();
      const delay = backoff.nextDelayMs();
      log("INFO", `reconnecting to ${this.settings.controlPlane} in ${(delay / 1000).toFixed(2)}s`);
      await sleep(delay, this.stopSignal.signal);
    }
  }

  private async connectOnce(): Promise<boolean> {
    const s = this.settings;
    const client = this.client();
    let response: RegisterResponse;
    try {
      response = await client.register(
        {
          workerId: s.workerId,
          name: s.name,
          runtimes: s.runtimes,
          slots: s.slots,
          labels: s.labels,
          version: s.version,
          features: FEATURES,
        },
        { timeoutMs: s.rpcTimeoutMs, signal: this.stopSignal.signal },
      );
    } catch (error) {
      // No answer at all: the connection (or its TCP handshake) is hanging, and every call
      // would queue behind it. Let the worker replace it, as for a deaf stream.
      if (error instanceof ConnectError && error.code === Code.DeadlineExceeded) this.handler.onDisconnected(true);
      throw error;
    }
    this.timings = timingsFrom(response, this.timings);
    this.registrationId = response.registrationId;

    const queue = new AsyncQueue<LeaseRequest>();
    const abort = new AbortController();
    const held = this.handler.heldLeases();
    queue.push(
      create(LeaseRequestSchema, {
        kind: { case: "open", value: { workerId: s.workerId, registrationId: this.registrationId, leases: held } },
      }),
    );
    const responses = client.lease(queue, { signal: abort.signal })[Symbol.asyncIterator]();
    let endStream!: () => void;
    const stream: OpenStream = { queue, abort, ended: new Promise((r) => (endStream = r)), drainAnnounced: false };
    let deaf = false;
    let heartbeat: NodeJS.Timeout | undefined;
    let liveness: NodeJS.Timeout | undefined;
    try {
      const first = await within(responses.next(), s.rpcTimeoutMs);
      if (first === undefined) {
        log("WARNING", "no answer to LeaseOpen; reconnecting");
        deaf = true;
        return false;
      }
      if (first.done) {
        log("WARNING", "control plane closed the lease stream before opening it");
        return false;
      }
      if (first.value.kind.case !== "opened") {
        log("WARNING", `lease stream: expected 'opened', got '${first.value.kind.case}'; reconnecting`);
        return false;
      }
      const t = this.timings;
      log(
        "INFO",
        `registered as ${s.workerId} (registration ${this.registrationId}, heartbeat ${t.heartbeatMs / 1000}s, ` +
          `liveness ${t.livenessMs / 1000}s, ${held.length} leases held)`,
      );
      if (first.value.kind.value.lostLeases.length > 0) {
        this.handler.onLostLeases(first.value.kind.value.lostLeases, "lost while disconnected");
      }
      this.stream = stream;
      // Before anything else the worker says on this stream.
      this.sendDrainStarted();
      let lastHeard = monotonicMs();
      heartbeat = setInterval(() => {
        this.handler.onHeartbeat();
        this.send({
          case: "renew",
          value: { leases: this.handler.heldLeases(), runningTurns: this.handler.runningTurns() },
        });
      }, t.heartbeatMs);
      liveness = setInterval(() => {
        const silence = monotonicMs() - lastHeard;
        if (silence >= t.livenessMs && !deaf) {
          log("WARNING", `lease stream silent for ${(silence / 1000).toFixed(2)}s (liveness timeout ${t.livenessMs / 1000}s); dropping it as deaf`);
          deaf = true;
          abort.abort();
        }
      }, Math.max(50, Math.min(250, t.livenessMs / 4)));
      for (;;) {
        const next = await responses.next();
        if (next.done) {
          if (!this.stopping) log("WARNING", "control plane closed the lease stream");
          break;
        }
        lastHeard = monotonicMs();
        this.handler.onLeaseMessage(next.value);
      }
      return true;
    } catch (error) {
      if (!deaf && !this.stopping) log("WARNING", `lease stream failed: ${describe(error)}`);
      return this.stream === stream;
    } finally {
      clearInterval(heartbeat);
      clearInterval(liveness);
      const wasOpen = this.stream === stream;
      if (wasOpen) this.stream = null;
      queue.close();
      abort.abort();
      endStream();
      if (wasOpen || deaf) this.handler.onDisconnected(deaf);
    }
  }
}
