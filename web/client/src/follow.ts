/**
 * Following a session's durable log from a cursor, across broken connections.
 *
 * The log is numbered 1, 2, 3, ... by the control plane with no gaps, so a stream that breaks
 * loses nothing: it is reopened with `after_seq` = the last seq handed to the caller, and any
 * overlap the server replays is dropped, so the caller sees every event once, in order. This
 * mirrors `tether.sdk.AsyncClient.stream_events`.
 */

import { Code, ConnectError, type Client } from "@connectrpc/connect";

import type { Event } from "../../../gen/ts/tether/v1/resources_pb.js";
import type { SessionService } from "../../../gen/ts/tether/v1/session_service_pb.js";
import { Backoff, sleep } from "./backoff.js";

/** Where a follower stands: opening its first stream, receiving, or waiting to reopen one. */
export type FollowState =
  | { kind: "connecting"; afterSeq: bigint }
  | { kind: "live"; afterSeq: bigint }
  | { kind: "reconnecting"; afterSeq: bigint; delayMs: number; error: ConnectError };

export interface ReconnectPolicy {
  /** First delay before reopening a broken stream (default 100 ms). */
  initialMs: number;
  /** Largest delay (default 5 s). */
  maxMs: number;
  /** Give up, throwing the last error, once the server has been unreachable this long (default 5 min). */
  giveUpMs: number;
}

export const DEFAULT_RECONNECT: ReconnectPolicy = { initialMs: 100, maxMs: 5_000, giveUpMs: 300_000 };

export interface FollowOptions {
  /** Yield events with seq greater than this (default 0: the whole log). */
  afterSeq?: bigint;
  /** End after the events stored when the stream opens instead of following live ones. */
  stopAtEnd?: boolean;
  /** Stops following: the iteration ends quietly. */
  signal?: AbortSignal;
  /** Reopen broken streams (default: DEFAULT_RECONNECT); `false` throws at the first break. */
  reconnect?: Partial<ReconnectPolicy> | false;
  /** Told whenever the follower's state changes. */
  onState?: (state: FollowState) => void;
}

/**
 * Errors after which the stream is reopened: the server is unreachable or went away
 * (UNAVAILABLE), or the connection broke mid-stream (a fetch failure or a cut body surfaces as
 * UNKNOWN, or as a "protocol error" about a truncated envelope). Anything else (NOT_FOUND,
 * UNAUTHENTICATED, CURSOR_EXPIRED, ...) is the answer and is thrown.
 */
export function isStreamBreak(error: ConnectError): boolean {
  if (error.code === Code.Unavailable || error.code === Code.Unknown || error.code === Code.Aborted) return true;
  return error.code === Code.InvalidArgument && error.rawMessage.startsWith("protocol error");
}

/**
 * The session's events with seq > `afterSeq`, then live ones as they are stored, for as long as
 * the caller iterates (or until `signal` aborts). A stream that was once open and then breaks is
 * reopened after the last event yielded, with jittered backoff; a first stream that cannot open
 * (a wrong address, a wrong key) throws at once, as any other call would.
 */
export async function* followSession(
  sessions: Client<typeof SessionService>,
  sessionId: string,
  options: FollowOptions = {},
): AsyncGenerator<Event, void, undefined> {
  const policy = options.reconnect === false ? undefined : { ...DEFAULT_RECONNECT, ...options.reconnect };
  const backoff = new Backoff(policy?.initialMs ?? 0, policy?.maxMs ?? 0);
  const outer = options.signal;
  let cursor = options.afterSeq ?? 0n;
  let established = false;
  let downSince: number | undefined;
  options.onState?.({ kind: "connecting", afterSeq: cursor });
  while (!outer?.aborted) {
    // One controller per stream: leaving the loop (break, return, an error) cancels the call.
    const call = new AbortController();
    const abortCall = (): void => call.abort();
    outer?.addEventListener("abort", abortCall, { once: true });
    let failure: ConnectError;
    const openedAt = Date.now();
    try {
      const stream = sessions.streamSessionEvents(
        { sessionId, afterSeq: cursor, stopAtEnd: options.stopAtEnd ?? false },
        {
          signal: call.signal,
          // Headers say the stream opened, not that it is healthy: a server may answer an
          // error right after them, so only events (or a long quiet stream) end an outage.
          onHeader: () => {
            established = true;
            options.onState?.({ kind: "live", afterSeq: cursor });
          },
        },
      );
      for await (const response of stream) {
        established = true; // also when the server sends its headers with the first answer
        downSince = undefined;
        backoff.reset();
        for (const event of response.events) {
          if (event.seq <= cursor) continue; // a replay overlapping what was yielded: never twice
          cursor = event.seq;
          yield event;
        }
      }
      if (options.stopAtEnd) return;
      // A live stream never ends by itself: something between (a proxy's timeout, a restart
      // behind a load balancer) cut it cleanly. Reopen it like any other break.
      failure = new ConnectError("the event stream ended", Code.Unavailable);
    } catch (error) {
      if (outer?.aborted) return;
      failure = ConnectError.from(error);
      if (policy === undefined || !established || !isStreamBreak(failure)) throw failure;
    } finally {
      outer?.removeEventListener("abort", abortCall);
      call.abort();
    }
    if (policy === undefined) throw failure;
    const now = Date.now();
    if (now - openedAt > policy.maxMs) {
      // The stream was up (if quiet) until now: this is a new outage.
      backoff.reset();
      downSince = undefined;
    }
    downSince ??= now;
    const delayMs = backoff.nextDelayMs();
    if (now + delayMs - downSince > policy.giveUpMs) throw failure;
    options.onState?.({ kind: "reconnecting", afterSeq: cursor, delayMs, error: failure });
    await sleep(delayMs, outer);
  }
}
