// Small helpers the TypeScript worker shares: logging, backoff, waiting, and reading the control
// plane's errors. Nothing here knows about sessions or leases.

import { Code, ConnectError } from "@connectrpc/connect";
import { errorInfo } from "./rpc_errors.js";

// -- logging ----------------------------------------------------------------------------------

export type Level = "DEBUG" | "INFO" | "WARNING" | "ERROR";
const LEVELS: Record<Level, number> = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40 };
let threshold = LEVELS.INFO;

export function setLogLevel(level: string): void {
  const value = LEVELS[level.toUpperCase() as Level];
  if (value !== undefined) threshold = value;
}

/** One readable line on stderr, in the Python worker's format (time, level, logger, message). */
export function log(level: Level, message: string): void {
  if (LEVELS[level] < threshold) return;
  process.stderr.write(`${new Date().toISOString()} ${level} ts_worker: ${message}\n`);
}

// -- time -------------------------------------------------------------------------------------

/** Milliseconds on a clock that never jumps (wall-clock changes must not move deadlines). */
export function monotonicMs(): number {
  return performance.now();
}

/** Resolve after `ms`, or at once (without throwing) when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** `promise`'s value, or `undefined` once `ms` pass first (the promise keeps running). */
export async function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), Math.max(0, ms));
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A level-triggered wake-up, like asyncio.Event used as "something changed": waiters are woken
 * by the next `notify()`. Waiting is always bounded by the caller, so a missed notification
 * costs at most one timeout, never a hang.
 */
export class Notifier {
  private waiters: Array<() => void> = [];

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves at the next notify(), after `ms`, or when `signal` aborts. */
  wait(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      let timer: NodeJS.Timeout | undefined;
      const wake = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", wake);
        // Woken by the timer or the signal: leave the list, so waits that time out do not pile up.
        const i = this.waiters.indexOf(wake);
        if (i >= 0) this.waiters.splice(i, 1);
        resolve();
      };
      this.waiters.push(wake);
      timer = setTimeout(wake, Math.max(0, ms));
      signal?.addEventListener("abort", wake, { once: true });
    });
  }
}

// -- backoff ----------------------------------------------------------------------------------

/**
 * Delays that double from `initialMs` up to `maxMs`, each drawn uniformly from the upper half of
 * the current step: a fleet that lost the same control plane does not come back in lockstep,
 * and no delay collapses to zero (which would spin). Same policy as the Python worker.
 */
export class Backoff {
  private attempt = 0;
  private readonly initialMs: number;
  private readonly maxMs: number;

  constructor(initialMs: number, maxMs: number) {
    this.initialMs = Math.max(initialMs, 1);
    this.maxMs = Math.max(maxMs, this.initialMs);
  }

  nextDelayMs(): number {
    const step = Math.min(this.maxMs, this.initialMs * 2 ** this.attempt);
    if (step < this.maxMs) this.attempt += 1;
    return step / 2 + Math.random() * (step / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}

// -- a push-based async iterable for request streams ------------------------------------------

/**
 * Messages to send on a client or bidi stream: `push()` never blocks, `close()` half-closes the
 * stream once what was pushed is consumed. Connect pulls from it as the transport writes.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private waiter: ((result: IteratorResult<T>) => void) | null = null;
  private closed = false;

  push(item: T): boolean {
    if (this.closed) return false;
    const waiter = this.waiter;
    if (waiter !== null) {
      this.waiter = null;
      waiter({ value: item, done: false });
    } else {
      this.items.push(item);
    }
    return true;
  }

  close(): void {
    this.closed = true;
    const waiter = this.waiter;
    if (waiter !== null && this.items.length === 0) {
      this.waiter = null;
      waiter({ value: undefined, done: true });
    }
  }

  private abandon(): Promise<IteratorResult<T>> {
    this.items = [];
    this.close();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: (): Promise<IteratorResult<T>> => {
        const item = this.items.shift();
        if (item !== undefined) return Promise.resolve({ value: item, done: false });
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
        });
      },
      // Connect ends the request side with return() or throw() when the call ends first.
      return: (): Promise<IteratorResult<T>> => this.abandon(),
      throw: (): Promise<IteratorResult<T>> => this.abandon(),
    };
  }
}

// -- the control plane's errors ---------------------------------------------------------------

export const LEASE_LOST = "LEASE_LOST";
export const WORKER_NOT_REGISTERED = "WORKER_NOT_REGISTERED";

/** The google.rpc.ErrorInfo reason of a failed call, or "" when there is none. The worker acts
 * on this stable reason, never on the message text. */
export function errorReason(error: unknown): string {
  return errorInfo(error)?.reason ?? "";
}

/** FAILED_PRECONDITION with reason LEASE_LOST: the session is no longer this worker's. */
export function isLeaseLost(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.FailedPrecondition && errorReason(error) === LEASE_LOST;
}

/** One log-friendly line for an RPC (or any) failure. */
export function describe(error: unknown): string {
  if (error instanceof ConnectError) {
    const reason = errorReason(error);
    return `${Code[error.code] ?? error.code}: ${error.rawMessage}${reason ? ` [${reason}]` : ""}`;
  }
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}
