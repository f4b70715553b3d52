/**
 * An in-memory SessionService and AdminService for the library's tests: Connect's router
 * transport runs these handlers in the same process, through the real client stack
 * (serialization, interceptors, errors), with no network.
 */

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter, createRouterTransport, type HandlerContext } from "@connectrpc/connect";

import { AdminService } from "../../../gen/ts/tether/v1/admin_service_pb.js";
import { type Event, type EventBodySchema, EventSchema, TurnSchema } from "../../../gen/ts/tether/v1/resources_pb.js";
import { SessionService, type StreamSessionEventsResponse } from "../../../gen/ts/tether/v1/session_service_pb.js";
import { credentials } from "../src/client.js";

export const SESSION = "ses_test";

/** An event of SESSION at `seq` with the given body. */
export function event(seq: number, turnId: string, kind: MessageInitShape<typeof EventBodySchema>["kind"]): Event {
  return create(EventSchema, { sessionId: SESSION, seq: BigInt(seq), turnId, body: { kind } });
}

export function outputEvent(seq: number, text: string): Event {
  return event(seq, "trn_1", { case: "output", value: { stream: 1, text } });
}

/** What a stream call does: yield batches, then end, fail, or wait until cancelled. */
export interface StreamPlan {
  batches: Event[][];
  then: "end" | "hang" | ConnectError;
}

export interface Recorded {
  /** after_seq of every StreamSessionEvents call, in order. */
  cursors: bigint[];
  /** Every unary request, as [method, request, authorization header]. */
  calls: Array<[string, unknown, string | null]>;
}

/**
 * A transport whose StreamSessionEvents follows `plans` (one per call; the last repeats) and
 * whose unary methods record their requests and answer plausibly.
 */
export function fakeTransport(plans: StreamPlan[], credentialsFor?: { apiKey: string; owner?: string }) {
  const recorded: Recorded = { cursors: [], calls: [] };
  const record = (method: string, request: unknown, context: HandlerContext): void => {
    recorded.calls.push([method, request, context.requestHeader.get("authorization")]);
  };
  const routes = (router: ConnectRouter): void => {
    router.service(SessionService, {
      async *streamSessionEvents(request, context): AsyncGenerator<StreamSessionEventsResponse> {
        const plan = plans[Math.min(recorded.cursors.length, plans.length - 1)];
        recorded.cursors.push(request.afterSeq);
        if (!plan) throw new ConnectError("no plan", Code.Internal);
        for (const events of plan.batches) yield { $typeName: "tether.v1.StreamSessionEventsResponse", events };
        if (plan.then === "hang") {
          await new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve()));
        } else if (plan.then !== "end") {
          throw plan.then;
        }
      },
      sendInput(request, context) {
        record("sendInput", request, context);
        return { turn: create(TurnSchema, { turnId: "trn_2", sessionId: request.sessionId, input: request.input }) };
      },
      interruptTurn(request, context) {
        record("interruptTurn", request, context);
        return { turn: create(TurnSchema, { turnId: "trn_1", sessionId: request.sessionId }) };
      },
      respondToRequest(request, context) {
        record("respondToRequest", request, context);
        return { request: { requestId: request.requestId, sessionId: request.sessionId, responseJson: request.responseJson } };
      },
      getSession(request, context) {
        record("getSession", request, context);
        throw new ConnectError(`session ${request.sessionId} not found`, Code.NotFound);
      },
    });
    router.service(AdminService, {
      drainWorker(request, context) {
        record("drainWorker", request, context);
        return { worker: { workerId: request.workerId, draining: true } };
      },
    });
  };
  const transport = createRouterTransport(routes, {
    transport: credentialsFor ? { interceptors: [credentials(credentialsFor.apiKey, credentialsFor.owner)] } : {},
  });
  return { transport, recorded };
}
