/** Transcript folding, request answers, and the client's calls and credentials. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Code, ConnectError } from "@connectrpc/connect";

import { DeltaKind, ItemKind, RequestKind, RequestState } from "../../../gen/ts/tether/v1/resources_pb.js";
import { describeError, TetherClient } from "../src/client.js";
import { answerText, approvalDecisions, questions, questionsAnswer } from "../src/requests.js";
import { SessionFollower } from "../src/session.js";
import { type Entry, Transcript } from "../src/transcript.js";
import { event, fakeTransport, outputEvent, SESSION } from "./fake_server.js";

function agentTurn() {
  const item = (itemId: string, kind: ItemKind, extra = {}) => ({ itemId, kind, ...extra });
  return [
    event(1, "trn_1", { case: "inputReceived", value: { input: "fix the build" } }),
    event(2, "trn_1", { case: "turnStarted", value: { workerId: "wrk_a" } }),
    event(3, "trn_1", { case: "itemStarted", value: { item: item("m1", ItemKind.AGENT_MESSAGE) } }),
    event(4, "trn_1", { case: "itemDelta", value: { itemId: "m1", kind: DeltaKind.AGENT_MESSAGE, delta: "Run" } }),
    event(5, "trn_1", { case: "itemDelta", value: { itemId: "m1", kind: DeltaKind.AGENT_MESSAGE, delta: "ning make" } }),
    event(6, "trn_1", { case: "itemStarted", value: { item: item("c1", ItemKind.COMMAND_EXECUTION, { command: "make" }) } }),
    event(7, "trn_1", {
      case: "requestOpened",
      value: {
        request: {
          requestId: "req_1",
          sessionId: SESSION,
          turnId: "trn_1",
          kind: RequestKind.COMMAND_APPROVAL,
          summary: "make",
          state: RequestState.PENDING,
          availableDecisions: ["accept", "acceptWithExecpolicyAmendment", "decline"],
        },
      },
    }),
    event(8, "trn_1", {
      case: "requestResolved",
      value: { requestId: "req_1", state: RequestState.RESOLVED, responseJson: '{"decision":"accept"}' },
    }),
    event(9, "trn_1", { case: "itemDelta", value: { itemId: "c1", kind: DeltaKind.COMMAND_OUTPUT, delta: "cc -o app\n" } }),
    event(10, "trn_1", { case: "itemDelta", value: { itemId: "c1", kind: DeltaKind.COMMAND_OUTPUT, delta: "ok\n" } }),
    event(11, "trn_1", {
      case: "itemCompleted",
      value: { item: item("c1", ItemKind.COMMAND_EXECUTION, { command: "make", exitCode: 0, status: "completed", aggregatedOutput: "cc -o app\nok\n" }) },
    }),
    event(12, "trn_1", { case: "itemCompleted", value: { item: item("m1", ItemKind.AGENT_MESSAGE, { text: "Running make" }) } }),
    event(13, "trn_1", { case: "historyItem", value: { role: 2, text: "Running make", turnId: "trn_1" } }),
    event(14, "trn_1", { case: "turnCompleted", value: { exitCode: 0 } }),
  ];
}

test("deltas fold into their items; requests keep their state; replays change nothing", () => {
  const transcript = new Transcript();
  const changed: (Entry | undefined)[] = agentTurn().map((e) => transcript.apply(e));
  assert.equal(changed[12], undefined, "history items show nothing");
  const view = transcript.entries.map((e) => {
    switch (e.type) {
      case "message":
        return ["message", e.text, e.done];
      case "command":
        return ["command", e.command, e.output, e.exitCode, e.done];
      case "request":
        return ["request", e.request.requestId, e.request.state, e.request.responseJson];
      case "turn_end":
        return ["end", e.outcome, e.exitCode];
      default:
        return [e.type, "text" in e ? e.text : ""];
    }
  });
  assert.deepEqual(view, [
    ["input", "fix the build"],
    ["notice", "turn started on worker wrk_a"],
    ["message", "Running make", true],
    ["command", "make", "cc -o app\nok\n", 0, true],
    ["request", "req_1", RequestState.RESOLVED, '{"decision":"accept"}'],
    ["end", "completed", 0],
  ]);
  assert.equal(transcript.lastSeq, 14n);
  assert.equal(transcript.workerId, "wrk_a");
  assert.equal(transcript.runningTurnId, "");
  assert.deepEqual(transcript.pendingRequests(), []);
  // The same events again (a replay): nothing is added or changed.
  assert.ok(agentTurn().every((e) => transcript.apply(e) === undefined));
  assert.equal(transcript.entries.length, 6);
});

test("the message grows with each delta as it arrives", () => {
  const transcript = new Transcript();
  const texts: string[] = [];
  for (const e of agentTurn().slice(0, 5)) {
    const entry = transcript.apply(e);
    if (entry?.type === "message") texts.push(entry.text);
  }
  assert.deepEqual(texts, ["", "Run", "Running make"]);
});

test("output chunks of a turn join into one block per stream; a pending request is listed", () => {
  const transcript = new Transcript();
  transcript.apply(event(1, "trn_1", { case: "turnStarted", value: { workerId: "wrk_a" } }));
  transcript.apply(outputEvent(2, "one\n"));
  transcript.apply(outputEvent(3, "two\n"));
  transcript.apply(event(4, "trn_1", { case: "output", value: { stream: 2, text: "warn\n" } }));
  transcript.apply(outputEvent(5, "three\n"));
  transcript.apply(
    event(6, "trn_1", {
      case: "requestOpened",
      value: { request: { requestId: "req_9", kind: RequestKind.USER_INPUT, state: RequestState.PENDING } },
    }),
  );
  const outputs = transcript.entries.filter((e) => e.type === "output").map((e) => [e.stream, e.text]);
  assert.deepEqual(outputs, [
    ["stdout", "one\ntwo\n"],
    ["stderr", "warn\n"],
    ["stdout", "three\n"],
  ]);
  assert.equal(transcript.runningTurnId, "trn_1");
  assert.deepEqual(transcript.pendingRequests().map((r) => r.requestId), ["req_9"]);
});

test("request helpers: offered decisions, questions, answers", () => {
  const base = { $typeName: "tether.v1.PendingRequest" as const };
  const approval = { ...base, kind: RequestKind.COMMAND_APPROVAL, availableDecisions: ["accept", "acceptWithExecpolicyAmendment", "decline"] };
  assert.deepEqual(approvalDecisions(approval as never), ["accept", "decline"]);
  assert.deepEqual(approvalDecisions({ ...base, availableDecisions: [] } as never), ["accept", "decline"]);
  const params = { questions: [{ id: "q1", question: "Which env?", options: [{ label: "staging" }, { label: "prod" }] }, { header: "no id" }] };
  assert.deepEqual(questions({ ...base, paramsJson: JSON.stringify(params) } as never), [
    { id: "q1", text: "Which env?", options: ["staging", "prod"] },
  ]);
  assert.deepEqual(questions({ ...base, paramsJson: "not json" } as never), []);
  assert.deepEqual(JSON.parse(questionsAnswer({ q1: "staging" })), { answers: { q1: { answers: ["staging"] } } });
  assert.equal(answerText('{"decision":"decline"}'), "decline");
  assert.equal(answerText('{"answers":{}}'), '{"answers":{}}');
});

test("the client's calls carry the key and owner, and send what the contract says", async () => {
  const { transport, recorded } = fakeTransport([{ batches: [], then: "end" }], { apiKey: "tk_secret", owner: "acme" });
  const client = new TetherClient({ transport });
  await client.approve(SESSION, "req_1", "accept");
  await client.answerQuestions(SESSION, "req_2", { q1: ["a", "b"] });
  await client.interrupt(SESSION);
  const turn = await client.sendInput(SESSION, "echo hi", "key-1");
  await client.drainWorker("wrk_a", 1500);
  assert.equal(turn.turnId, "trn_2");
  const sent = recorded.calls.map(([method, request, auth]) => {
    const r = request as Record<string, unknown>;
    const fields = { sessionId: r.sessionId, requestId: r.requestId, responseJson: r.responseJson, turnId: r.turnId, input: r.input, idempotencyKey: r.idempotencyKey, workerId: r.workerId };
    return [method, Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)), auth];
  });
  assert.deepEqual(sent, [
    ["respondToRequest", { sessionId: SESSION, requestId: "req_1", responseJson: '{"decision":"accept"}' }, "Bearer tk_secret"],
    ["respondToRequest", { sessionId: SESSION, requestId: "req_2", responseJson: '{"answers":{"q1":{"answers":["a","b"]}}}' }, "Bearer tk_secret"],
    ["interruptTurn", { sessionId: SESSION, turnId: "" }, "Bearer tk_secret"],
    ["sendInput", { sessionId: SESSION, input: "echo hi", idempotencyKey: "key-1" }, "Bearer tk_secret"],
    ["drainWorker", { workerId: "wrk_a" }, "Bearer tk_secret"],
  ]);
  const drain = recorded.calls[4]?.[1] as { grace?: { seconds: bigint; nanos: number } };
  assert.deepEqual([drain.grace?.seconds, drain.grace?.nanos], [1n, 500_000_000]);
});

test("errors read as code, reason and message", async () => {
  const { transport } = fakeTransport([{ batches: [], then: "end" }]);
  await assert.rejects(new TetherClient({ transport }).getSession("ses_gone"), (error: unknown) => {
    assert.equal(describeError(error), "NotFound: session ses_gone not found");
    return error instanceof ConnectError && error.code === Code.NotFound;
  });
});

test("SessionFollower keeps a transcript current and stops on request", async () => {
  const { transport } = fakeTransport([{ batches: [agentTurn().slice(0, 5)], then: "hang" }]);
  const texts: string[] = [];
  let follower: SessionFollower | undefined;
  follower = new SessionFollower(new TetherClient({ transport }), SESSION, {
    onEntry: (entry, e) => {
      if (entry.type === "message") texts.push(entry.text);
      if (e.seq === 5n) follower?.stop();
    },
  });
  await follower.start();
  assert.deepEqual(texts, ["", "Run", "Running make"]);
  assert.equal(follower.transcript.lastSeq, 5n);
});
