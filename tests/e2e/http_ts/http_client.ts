/**
 * A browser's view of Tether: the TypeScript client `make gen` produces (gen/ts) over the HTTP
 * port, through the transports a web page uses (@connectrpc/connect-web over fetch), plus
 * connect-node's HTTP/2 transports for comparison. Used by tests/e2e/test_http_browser_client.py
 * and bench/http.py.
 *
 *   node .../http_client.js turn  --base-url URL --transport KIND [--input TEXT]
 *   node .../http_client.js bench --base-url URL --transport KIND --session ID --input TEXT
 *   node .../http_client.js subscribe --base-url URL --transport KIND --session ID[,ID...] --per-session N
 *
 * KIND: connect-web (Connect with JSON over fetch, connect-web's default), connect-web-proto (the
 * same with binary protobuf), grpc-web (gRPC-Web over fetch), connect-h2 (Connect over HTTP/2),
 * grpc (gRPC over HTTP/2).
 *
 * `turn` prints one JSON line per step: the error a missing session gets (code and reason),
 * the session created, the turn sent, every event read up to the turn's end, and the end.
 * `bench` reads a line on stdin per sample: SendInput, then the time to the turn's first
 * event after input_received on an event stream held open, as one JSON line {turn_id, ms, end}.
 * `subscribe` opens N streams on each session (all at once), prints {"ready": count} once every
 * one has read its first batch, and holds them open until stdin closes.
 */

import { setMaxListeners } from "node:events";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { parseArgs } from "node:util";

import { ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport as nodeConnect, createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-web";

import { errorInfo } from "../../../examples/typescript/rpc_errors.js";
import { SessionService } from "../../../gen/ts/tether/v1/session_service_pb.js";

type Sessions = Client<typeof SessionService>;

const TERMINAL = new Set(["turnCompleted", "turnFailed", "turnInterrupted"]);
const CALL_TIMEOUT_MS = 10_000;

function transport(kind: string, baseUrl: string): Transport {
  switch (kind) {
    case "connect-web":
      return createConnectTransport({ baseUrl });
    case "connect-web-proto":
      return createConnectTransport({ baseUrl, useBinaryFormat: true });
    case "grpc-web":
      return createGrpcWebTransport({ baseUrl });
    case "connect-h2":
      return nodeConnect({ baseUrl, httpVersion: "2" });
    case "grpc":
      return createGrpcTransport({ baseUrl });
    default:
      throw new Error(`unknown transport ${kind}`);
  }
}

function print(line: object): void {
  process.stdout.write(JSON.stringify(line, (_, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n");
}

async function turn(sessions: Sessions, input: string): Promise<number> {
  try {
    await sessions.getSession({ sessionId: "ses_missing" }, { timeoutMs: CALL_TIMEOUT_MS });
    print({ step: "missing", code: "ok" });
  } catch (err) {
    const e = ConnectError.from(err);
    print({ step: "missing", code: e.code, reason: errorInfo(e)?.reason ?? "" });
  }
  const { session } = await sessions.createSession({ runtime: "shell" }, { timeoutMs: CALL_TIMEOUT_MS });
  const sessionId = session?.sessionId ?? "";
  print({ step: "created", sessionId });
  const sent = await sessions.sendInput({ sessionId, input }, { timeoutMs: CALL_TIMEOUT_MS });
  const turnId = sent.turn?.turnId ?? "";
  print({ step: "sent", turnId });
  for await (const batch of sessions.streamSessionEvents({ sessionId, afterSeq: 0n })) {
    for (const event of batch.events) {
      const body = event.body?.kind;
      const text = body?.case === "output" ? body.value.text : "";
      print({ step: "event", seq: event.seq, turnId: event.turnId, kind: body?.case ?? "", text });
      if (event.turnId === turnId && body && TERMINAL.has(body.case ?? "")) {
        const exitCode = body.case === "turnCompleted" ? body.value.exitCode : -1;
        print({ step: "end", kind: body.case, exitCode });
        return 0;
      }
    }
  }
  print({ step: "stream-ended-early" });
  return 1;
}

async function bench(sessions: Sessions, sessionId: string, input: string): Promise<number> {
  const { session } = await sessions.getSession({ sessionId }, { timeoutMs: CALL_TIMEOUT_MS });
  const firstAt = new Map<string, number>();
  const ends = new Map<string, (kind: string) => void>();
  const ended = new Map<string, string>();
  const stop = new AbortController();
  const follow = (async () => {
    const stream = sessions.streamSessionEvents(
      { sessionId, afterSeq: session?.lastSeq ?? 0n },
      { signal: stop.signal },
    );
    for await (const batch of stream) {
      for (const event of batch.events) {
        const now = performance.now();
        const kind = event.body?.kind.case ?? "";
        if (kind !== "inputReceived" && !firstAt.has(event.turnId)) firstAt.set(event.turnId, now);
        if (TERMINAL.has(kind)) {
          ended.set(event.turnId, kind);
          ends.get(event.turnId)?.(kind);
        }
      }
    }
    if (!stop.signal.aborted) throw new Error("the event stream ended while samples were being taken");
  })().catch((err) => {
    if (stop.signal.aborted) return;
    const e = ConnectError.from(err);
    process.stderr.write(`bench: the event stream broke: [${e.code}] ${e.rawMessage}\n`);
    process.exit(3);
  });
  const lines = createInterface({ input: process.stdin });
  for await (const _ of lines) {
    const t0 = performance.now();
    const sent = await sessions.sendInput({ sessionId, input }, { timeoutMs: CALL_TIMEOUT_MS });
    const turnId = sent.turn?.turnId ?? "";
    const end =
      ended.get(turnId) ??
      (await new Promise<string>((resolve, reject) => {
        ends.set(turnId, resolve);
        setTimeout(() => reject(new Error(`turn ${turnId} did not end within 20 s on the stream`)), 20_000).unref();
      }));
    print({ turn_id: turnId, ms: (firstAt.get(turnId) ?? NaN) - t0, end });
  }
  stop.abort();
  // fetch ends an aborted stream's body when it next reads; the samples are taken, so do not
  // wait on it for long.
  await Promise.race([follow, new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
  return 0;
}

async function subscribe(sessions: Sessions, sessionIds: string[], perSession: number): Promise<number> {
  const stop = new AbortController();
  setMaxListeners(0, stop.signal); // one signal ends every stream
  let ready = 0;
  const total = sessionIds.length * perSession;
  const streams: Promise<void>[] = [];
  for (const sessionId of sessionIds) {
    for (let i = 0; i < perSession; i++) {
      streams.push(
        (async () => {
          let first = true;
          for await (const _ of sessions.streamSessionEvents({ sessionId, afterSeq: 0n }, { signal: stop.signal })) {
            if (first) {
              first = false;
              if (++ready === total) print({ ready });
            }
          }
        })().catch((err) => {
          if (!stop.signal.aborted) throw err;
        }),
      );
    }
  }
  for await (const _ of createInterface({ input: process.stdin })) {
    // held open until stdin closes
  }
  stop.abort();
  // As in bench: an aborted fetch body ends when it is next read; do not wait on them for long.
  await Promise.race([Promise.all(streams), new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
  return ready === total ? 0 : 1;
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      "base-url": { type: "string" },
      transport: { type: "string", default: "connect-web" },
      input: { type: "string", default: "echo hello" },
      session: { type: "string", default: "" },
      "per-session": { type: "string", default: "1" },
    },
  });
  const sessions = createClient(SessionService, transport(values.transport, values["base-url"] ?? ""));
  if (positionals[0] === "bench") return bench(sessions, values.session, values.input);
  if (positionals[0] === "subscribe") {
    return subscribe(sessions, values.session.split(","), Number(values["per-session"]));
  }
  return turn(sessions, values.input);
}

main().then(
  (status) => process.exit(status),
  (err) => {
    const e = ConnectError.from(err);
    process.stderr.write(`failed: [${e.code}] ${e.rawMessage} ${errorInfo(e)?.reason ?? ""}\n`);
    process.exit(2);
  },
);
