// The TypeScript worker (worker.ts) itself: offers and turns, the Lease stream's messages,
// interrupts and answers, and drain. Session state, Resume, snapshots and dropping sessions are
// WorkerBase's (worker_base.ts).

import { timestampMs } from "@bufbuild/protobuf/wkt";
import {
  type InterruptRequested,
  type LeaseResponse,
  type Offer,
  type OfferGranted,
  type RequestAnswered,
} from "../../gen/ts/tether/v1/worker_service_pb.js";
import { WorkerBase } from "./worker_base.js";
import { EventOutbox } from "./worker_outbox.js";
import { isTerminal, type ScriptRuntime, type TerminalEvent } from "./worker_script.js";
import { LeaseLostError, Session, describeTerminal, eventBody } from "./worker_session.js";
import { describe, log, monotonicMs, within } from "./worker_util.js";

/** ReleaseLease.reason at the end of a drain, and the prefix after a failed restore. */
const RELEASE_DRAINED = "worker drained";
const RELEASE_REHYDRATION_FAILED = "rehydration failed";
/** After the drain grace, interrupted turns get this long to end. */
const INTERRUPT_GRACE_MS = 5000;

// -- the worker -------------------------------------------------------------------------------

export class Worker extends WorkerBase {
  get draining(): boolean {
    return this.isDraining;
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

  protected onDisconnected(deaf: boolean): void {
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

  protected onLeaseMessage(message: LeaseResponse): void {
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

  protected purgeExpiredReservations(): void {
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
}
