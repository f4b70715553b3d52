/**
 * SessionFollower: a session's transcript kept current from its live log. It is the
 * framework-free core of a "use session" hook: start it, render `transcript.entries` whenever
 * `onEntry` fires, and stop it when the view goes away.
 */

import type { Event } from "../../../gen/ts/tether/v1/resources_pb.js";
import type { TetherClient } from "./client.js";
import type { FollowState, ReconnectPolicy } from "./follow.js";
import { type Entry, Transcript } from "./transcript.js";

export interface SessionFollowerOptions {
  /** Follow from this cursor (default 0: the transcript starts at the first event). */
  afterSeq?: bigint;
  /** Told about every entry an event added or changed, after it is folded. */
  onEntry?: (entry: Entry, event: Event) => void;
  /** Told about every event, including those that show nothing. */
  onEvent?: (event: Event) => void;
  /** Told when the stream opens, goes live or waits to reopen. */
  onState?: (state: FollowState) => void;
  /** Reconnect policy (see followSession). */
  reconnect?: Partial<ReconnectPolicy> | false;
}

export class SessionFollower {
  readonly transcript = new Transcript();
  private readonly abort = new AbortController();
  private running: Promise<void> | undefined;

  constructor(
    private readonly client: TetherClient,
    readonly sessionId: string,
    private readonly options: SessionFollowerOptions = {},
  ) {}

  /**
   * Starts following; the promise resolves when `stop()` ends it and rejects with the
   * ConnectError that ended it otherwise (the session does not exist, the key is refused, the
   * server stayed unreachable past the reconnect policy).
   */
  start(): Promise<void> {
    this.running ??= this.run();
    return this.running;
  }

  /** Stops following (idempotent); the open stream is cancelled. */
  stop(): void {
    this.abort.abort();
  }

  private async run(): Promise<void> {
    const events = this.client.follow(this.sessionId, {
      afterSeq: this.options.afterSeq ?? this.transcript.lastSeq,
      signal: this.abort.signal,
      reconnect: this.options.reconnect,
      onState: this.options.onState,
    });
    for await (const event of events) {
      const entry = this.transcript.apply(event);
      this.options.onEvent?.(event);
      if (entry) this.options.onEntry?.(entry, event);
    }
  }
}

