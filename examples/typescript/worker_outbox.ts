// The per-session event outbox: numbers one leased session's events (per session and lease
// epoch) and delivers them on a StreamEvents stream until the control plane acknowledges them.
//
// Delivery is at-least-once with stable numbers: an event gets its worker_seq when emitted and
// keeps it across reconnects, so the server drops the duplicates a resend produces. Batching
// comes from the transport pulling: whatever is pending when it asks for the next message goes
// out in one request, so an idle session sends an event at once and a busy one sends batches.

import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import type { Client } from "@connectrpc/connect";
import type { EventBodySchema } from "../../gen/ts/tether/v1/resources_pb.js";
import {
  StreamEventsRequestSchema,
  WorkerEventSchema,
  type StreamEventsRequest,
  type StreamEventsResponse,
  type WorkerEvent,
  type WorkerService,
} from "../../gen/ts/tether/v1/worker_service_pb.js";
import { Backoff, Notifier, describe, isLeaseLost, log, monotonicMs, sleep } from "./worker_util.js";

/** Byte budget of one StreamEventsRequest: the server's default receive limit is 4 MiB, and a
 * single output chunk can be large. */
const MAX_BATCH_BYTES = 1024 * 1024;

/** An idle stream (everything acknowledged, nothing new) is half-closed after this long, so a
 * worker holding many quiet sessions does not pin a server stream for each. */
const IDLE_CLOSE_MS = 30_000;

export interface OutboxOptions {
  client: () => Client<typeof WorkerService>;
  workerId: string;
  sessionId: string;
  leaseEpoch: bigint;
  /** The server's limit, from the latest RegisterResponse. */
  maxEventsPerMessage: () => number;
  newBackoff: () => Backoff;
  /** Sent events unacknowledged this long mean the stream is deaf: it is dropped and resent. */
  ackTimeoutMs: () => number;
  /** Called once when a write is refused with LEASE_LOST; the outbox has already discarded
   * everything and stopped. */
  onLeaseLost: () => void;
}

export class EventOutbox {
  readonly sessionId: string;
  readonly leaseEpoch: bigint;
  private readonly opts: OutboxOptions;
  // Unacknowledged events; pending[0].workerSeq === acked + 1.
  private pending: WorkerEvent[] = [];
  private sizes: number[] = []; // serialized size of each pending event
  private emitted = 0n;
  private acked = 0n;
  private lastSeqAcked = 0n;
  private closed = false;
  private readonly changed = new Notifier();
  private readonly stop = new AbortController();
  private call: AbortController | null = null;
  private readonly loop: Promise<void>;

  constructor(opts: OutboxOptions) {
    this.opts = opts;
    this.sessionId = opts.sessionId;
    this.leaseEpoch = opts.leaseEpoch;
    this.loop = this.run();
  }

  /** Queue one event; returns its worker_seq (0 once the outbox is closed: the lease is gone and
   * nothing may be written for this epoch again). Never blocks, never fails. */
  emit(turnId: string, body: MessageInitShape<typeof EventBodySchema>): bigint {
    if (this.closed) return 0n;
    this.emitted += 1n;
    const event = create(WorkerEventSchema, { workerSeq: this.emitted, turnId, body });
    this.pending.push(event);
    this.sizes.push(toBinary(WorkerEventSchema, event).length);
    this.changed.notify();
    return this.emitted;
  }

  get allAcked(): boolean {
    return this.acked >= this.emitted;
  }

  /** The session's last stored seq as of the latest acknowledgement: the watermark a snapshot
   * may claim once everything is acknowledged. */
  get lastSeq(): bigint {
    return this.lastSeqAcked;
  }

  /** Wait until every event emitted so far is acknowledged. False on timeout, or when the outbox
   * closes first (lease lost, session dropped). */
  async waitAcked(timeoutMs: number): Promise<boolean> {
    const target = this.emitted;
    const deadline = monotonicMs() + timeoutMs;
    while (this.acked < target) {
      const remaining = deadline - monotonicMs();
      if (this.closed || remaining <= 0) return false;
      await this.changed.wait(remaining);
    }
    return true;
  }

  /** Stop sending and discard whatever is unacknowledged. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    this.pending = [];
    this.sizes = [];
    this.stop.abort();
    this.call?.abort();
    this.changed.notify();
    await this.loop;
  }

  /** Drop the current stream (it is probably dead: the Lease stream just broke) and resend
   * what is unacknowledged on a new one. */
  kick(): void {
    this.call?.abort();
  }

  // -- sender -------------------------------------------------------------------------------

  private onAck(response: StreamEventsResponse): void {
    if (response.lastSeq > this.lastSeqAcked) this.lastSeqAcked = response.lastSeq;
    const acked = response.ackedWorkerSeq < this.emitted ? response.ackedWorkerSeq : this.emitted;
    if (acked > this.acked) {
      this.pending.splice(0, Number(acked - this.acked));
      this.sizes.splice(0, Number(acked - this.acked));
      this.acked = acked;
    }
    this.changed.notify();
  }

  private async run(): Promise<void> {
    let backoff = this.opts.newBackoff();
    while (!this.closed) {
      if (this.acked >= this.emitted) {
        await this.changed.wait(IDLE_CLOSE_MS, this.stop.signal);
        continue;
      }
      const call = new AbortController();
      this.call = call;
      const acksBefore = this.acked;
      try {
        await this.pump(call);
      } catch (error) {
        if (this.closed) return;
        if (isLeaseLost(error)) {
          // Fenced off: never write for this epoch again, and drop what was not stored.
          log("WARNING", `session ${this.sessionId} lost its lease (epoch ${this.leaseEpoch}) while sending events; stopping it`);
          this.closed = true;
          this.pending = [];
          this.sizes = [];
          this.changed.notify();
          this.opts.onLeaseLost();
          return;
        }
        if (this.acked < this.emitted) {
          log("WARNING", `event stream of session ${this.sessionId} broke: ${describe(error)}`);
        }
      } finally {
        call.abort();
        this.call = null;
      }
      if (this.acked > acksBefore) backoff = this.opts.newBackoff();
      if (this.closed || this.acked >= this.emitted) continue; // idle: reconnect when needed
      const delay = backoff.nextDelayMs();
      log("INFO", `event stream of session ${this.sessionId} reconnecting in ${(delay / 1000).toFixed(2)}s`);
      await sleep(delay, this.stop.signal);
    }
  }

  /** One StreamEvents call: resend from the first unacknowledged event, then follow new ones.
   * Returns when the server ends the call (after an idle half-close); throws on failure. */
  private async pump(call: AbortController): Promise<void> {
    let next = this.acked + 1n; // next worker_seq to send on this call
    let lastHeard = monotonicMs();
    const requests = async function* (this: EventOutbox): AsyncGenerator<StreamEventsRequest> {
      let headerSent = false;
      while (!call.signal.aborted) {
        if (next <= this.acked) next = this.acked + 1n; // acked past what this call sent
        if (next > this.emitted) {
          const idleSince = monotonicMs();
          while (next > this.emitted && !call.signal.aborted) {
            if (this.acked >= this.emitted && monotonicMs() - idleSince >= IDLE_CLOSE_MS) return;
            await this.changed.wait(IDLE_CLOSE_MS, call.signal);
          }
          continue;
        }
        const start = Number(next - this.acked - 1n);
        let end = Math.min(this.pending.length, start + Math.max(1, this.opts.maxEventsPerMessage()));
        let budget = MAX_BATCH_BYTES;
        for (let i = start; i < end; i++) {
          budget -= this.sizes[i] ?? 0;
          if (budget < 0 && i > start) {
            end = i;
            break;
          }
        }
        const batch = this.pending.slice(start, end);
        if (batch.length === 0) continue;
        // The ack clock starts when something becomes outstanding, not at every send: a stream
        // that keeps taking events but never acknowledges one is deaf too.
        if (next - 1n <= this.acked) lastHeard = monotonicMs();
        next += BigInt(batch.length);
        yield create(StreamEventsRequestSchema, {
          ...(headerSent
            ? {}
            : { workerId: this.opts.workerId, sessionId: this.sessionId, leaseEpoch: this.leaseEpoch }),
          events: batch,
        });
        headerSent = true;
      }
    }.call(this);

    // A stream on which sent events stay unacknowledged for the ack timeout is deaf (a
    // half-dead connection): drop it, so the resend happens on a fresh one.
    const watchdog = setInterval(() => {
      const waiting = next - 1n > this.acked;
      if (waiting && monotonicMs() - lastHeard > this.opts.ackTimeoutMs()) {
        log("WARNING", `event stream of session ${this.sessionId}: no acknowledgement for ${this.opts.ackTimeoutMs()}ms; dropping it`);
        call.abort();
      }
    }, 250);
    try {
      for await (const response of this.opts.client().streamEvents(requests, { signal: call.signal })) {
        lastHeard = monotonicMs();
        this.onAck(response);
      }
    } finally {
      clearInterval(watchdog);
    }
  }
}
