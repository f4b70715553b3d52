/** followSession against an in-memory server: cursors, reconnects, overlap, giving up. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { TetherClient } from "../src/client.js";
import type { FollowState } from "../src/follow.js";
import { fakeTransport, outputEvent, SESSION } from "./fake_server.js";

const FAST = { initialMs: 1, maxMs: 4, giveUpMs: 1_000 };

function events(from: number, to: number) {
  return Array.from({ length: to - from + 1 }, (_, i) => outputEvent(from + i, `line ${from + i}\n`));
}

async function take(iterable: AsyncIterable<{ seq: bigint }>, count: number): Promise<bigint[]> {
  const seen: bigint[] = [];
  for await (const e of iterable) {
    seen.push(e.seq);
    if (seen.length === count) break;
  }
  return seen;
}

test("a broken stream is reopened after the last seq seen; the replayed overlap is dropped", async () => {
  const { transport, recorded } = fakeTransport([
    { batches: [events(1, 2), events(3, 4)], then: new ConnectError("control plane restarting", Code.Unavailable) },
    // The server replays from before the cursor (3, 4 again), then goes on.
    { batches: [events(3, 7)], then: new ConnectError("network error", Code.Unknown) },
    { batches: [events(8, 10)], then: "hang" },
  ]);
  const client = new TetherClient({ transport });
  const states: FollowState["kind"][] = [];
  const seen = await take(
    client.follow(SESSION, { afterSeq: 0n, reconnect: FAST, onState: (s) => states.push(s.kind) }),
    10,
  );
  assert.deepEqual(seen, [1n, 2n, 3n, 4n, 5n, 6n, 7n, 8n, 9n, 10n]);
  assert.deepEqual(recorded.cursors, [0n, 4n, 7n]);
  assert.deepEqual(states.filter((s) => s === "reconnecting").length, 2);
  assert.equal(states[0], "connecting");
});

test("following starts after the cursor it is given", async () => {
  const { transport, recorded } = fakeTransport([{ batches: [events(6, 8)], then: "hang" }]);
  const seen = await take(new TetherClient({ transport }).follow(SESSION, { afterSeq: 5n }), 3);
  assert.deepEqual(seen, [6n, 7n, 8n]);
  assert.deepEqual(recorded.cursors, [5n]);
});

test("a live stream that ends cleanly is reopened; stopAtEnd ends with the stored events", async () => {
  const reopened = fakeTransport([
    { batches: [events(1, 2)], then: "end" },
    { batches: [events(3, 3)], then: "hang" },
  ]);
  const seen = await take(new TetherClient({ transport: reopened.transport }).follow(SESSION, { reconnect: FAST }), 3);
  assert.deepEqual(seen, [1n, 2n, 3n]);
  assert.deepEqual(reopened.recorded.cursors, [0n, 2n]);

  const stored = fakeTransport([{ batches: [events(1, 2)], then: "end" }]);
  const all: bigint[] = [];
  for await (const e of new TetherClient({ transport: stored.transport }).follow(SESSION, { stopAtEnd: true })) all.push(e.seq);
  assert.deepEqual(all, [1n, 2n]);
  assert.deepEqual(stored.recorded.cursors, [0n]);
});

test("an error that is an answer (NOT_FOUND, UNAUTHENTICATED) is thrown, not retried", async () => {
  const { transport, recorded } = fakeTransport([
    { batches: [events(1, 1)], then: new ConnectError("session deleted", Code.NotFound) },
  ]);
  const seen: bigint[] = [];
  await assert.rejects(
    (async () => {
      for await (const e of new TetherClient({ transport }).follow(SESSION, { reconnect: FAST })) seen.push(e.seq);
    })(),
    (error: unknown) => error instanceof ConnectError && error.code === Code.NotFound,
  );
  assert.deepEqual(seen, [1n]);
  assert.deepEqual(recorded.cursors, [0n]);
});

test("reconnect: false throws at the first break", async () => {
  const { transport, recorded } = fakeTransport([
    { batches: [events(1, 1)], then: new ConnectError("gone", Code.Unavailable) },
  ]);
  await assert.rejects(take(new TetherClient({ transport }).follow(SESSION, { reconnect: false }), 5), /gone/);
  assert.deepEqual(recorded.cursors, [0n]);
});

test("it gives up once the server has stayed unreachable past giveUpMs", async () => {
  const { transport, recorded } = fakeTransport([
    { batches: [events(1, 1)], then: new ConnectError("down", Code.Unavailable) },
    { batches: [], then: new ConnectError("still down", Code.Unavailable) },
  ]);
  const started = Date.now();
  await assert.rejects(
    take(new TetherClient({ transport }).follow(SESSION, { reconnect: { initialMs: 5, maxMs: 20, giveUpMs: 150 } }), 5),
    /still down/,
  );
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 100 && elapsed < 2_000, `gave up after ${elapsed} ms`);
  assert.ok(recorded.cursors.length >= 3, `reopened ${recorded.cursors.length - 1} times`);
  assert.ok(recorded.cursors.every((c, i) => c === (i === 0 ? 0n : 1n)));
});

test("aborting the signal ends the iteration quietly and cancels the stream", async () => {
  const { transport } = fakeTransport([{ batches: [events(1, 1)], then: "hang" }]);
  const abort = new AbortController();
  const seen: bigint[] = [];
  for await (const e of new TetherClient({ transport }).follow(SESSION, { signal: abort.signal })) {
    seen.push(e.seq);
    setTimeout(() => abort.abort(), 10);
  }
  assert.deepEqual(seen, [1n]);
});
