/**
 * TetherClient: the control plane's SessionService and AdminService from a browser, over the
 * Connect protocol that `tether serve --http-port` speaks, with the same credentials as the
 * gRPC port (`authorization: Bearer <key>`, `x-tether-owner` for backend keys).
 */

import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { durationFromMs } from "@bufbuild/protobuf/wkt";

import { type ErrorInfo, ErrorInfoSchema } from "../../../gen/ts/google/rpc/error_details_pb.js";
import {
  AdminService,
  type CreatePairingCodeResponse,
  type WorkerStatus,
} from "../../../gen/ts/tether/v1/admin_service_pb.js";
import {
  type Event,
  type PendingRequest,
  RequestState,
  type Session,
  type SessionState,
  type Turn,
} from "../../../gen/ts/tether/v1/resources_pb.js";
import { SessionService } from "../../../gen/ts/tether/v1/session_service_pb.js";
import { type FollowOptions, followSession } from "./follow.js";
import { type ApprovalDecision, approvalAnswer, questionsAnswer } from "./requests.js";

export interface TetherClientOptions {
  /** Where `tether serve --http-port` listens, e.g. "https://tether.example.com" (or the page's origin). */
  baseUrl?: string;
  /** An API key, sent as `authorization: Bearer <key>`; none for a `--dev` control plane. */
  apiKey?: string;
  /** The owner a backend key acts for (`x-tether-owner`). */
  owner?: string;
  /** Use this transport instead (tests, gRPC-Web, a custom fetch); baseUrl and credentials are then ignored. */
  transport?: Transport;
  /** Deadline of each unary call (default 10 s); the event stream has none. */
  timeoutMs?: number;
}

/** The credentials interceptor: every call carries the key (and owner) it was built with. */
export function credentials(apiKey: string | undefined, owner: string | undefined): Interceptor {
  return (next) => (request) => {
    if (apiKey) request.header.set("authorization", `Bearer ${apiKey}`);
    if (owner) request.header.set("x-tether-owner", owner);
    return next(request);
  };
}

/** A Connect transport to `baseUrl` that sends the given credentials. */
export function createTetherTransport(options: Pick<TetherClientOptions, "baseUrl" | "apiKey" | "owner">): Transport {
  return createConnectTransport({
    baseUrl: options.baseUrl ?? globalThis.location?.origin ?? "http://127.0.0.1",
    useBinaryFormat: true,
    interceptors: [credentials(options.apiKey, options.owner)],
  });
}

/** The stable reason the server put in the error's google.rpc.ErrorInfo ("SESSION_NOT_FOUND", ...), or "". */
export function errorReason(error: unknown): string {
  if (!(error instanceof ConnectError)) return "";
  const [info] = error.findDetails(ErrorInfoSchema) as ErrorInfo[];
  return info?.reason ?? "";
}

/** A line a person can read about a failed call: the code, the reason and the message. */
export function describeError(error: unknown): string {
  if (!(error instanceof ConnectError)) return String(error);
  const reason = errorReason(error);
  return `${Code[error.code] ?? error.code}${reason ? ` ${reason}` : ""}: ${error.rawMessage}`;
}

function randomKey(): string {
  return globalThis.crypto.randomUUID();
}

/** The calls an application (or the console) makes, each with a deadline. */
export class TetherClient {
  readonly sessions: Client<typeof SessionService>;
  readonly admin: Client<typeof AdminService>;
  private readonly timeoutMs: number;

  constructor(options: TetherClientOptions = {}) {
    const transport = options.transport ?? createTetherTransport(options);
    this.sessions = createClient(SessionService, transport);
    this.admin = createClient(AdminService, transport);
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  private get call(): { timeoutMs: number } {
    return { timeoutMs: this.timeoutMs };
  }

  // -- sessions ------------------------------------------------------------------------------

  async createSession(runtime: string, labels: Record<string, string> = {}): Promise<Session> {
    return required((await this.sessions.createSession({ runtime, labels }, this.call)).session);
  }

  async getSession(sessionId: string): Promise<Session> {
    return required((await this.sessions.getSession({ sessionId }, this.call)).session);
  }

  /** One page of the caller's sessions, most recently active first unless `orderBy` says otherwise. */
  async listSessions(
    options: { pageSize?: number; pageToken?: string; state?: SessionState; orderBy?: string } = {},
  ): Promise<{ sessions: Session[]; nextPageToken: string }> {
    const { sessions, nextPageToken } = await this.sessions.listSessions(
      { pageSize: options.pageSize ?? 100, pageToken: options.pageToken ?? "", state: options.state, orderBy: options.orderBy ?? "" },
      this.call,
    );
    return { sessions, nextPageToken };
  }

  /** Starts a turn. The idempotency key (random by default) makes a retried call return the first turn. */
  async sendInput(sessionId: string, input: string, idempotencyKey: string = randomKey()): Promise<Turn> {
    return required((await this.sessions.sendInput({ sessionId, input, idempotencyKey }, this.call)).turn);
  }

  /** Asks the turn (default: the session's active one) to stop; see InterruptTurnResponse. */
  async interrupt(sessionId: string, turnId = "", reason = "interrupted by request"): Promise<Turn> {
    return required((await this.sessions.interruptTurn({ sessionId, turnId, reason }, this.call)).turn);
  }

  /** Moves the session to another worker (default: any eligible one) and rehydrates it there. */
  async restore(sessionId: string, workerId = ""): Promise<Session> {
    return required((await this.sessions.restoreSession({ sessionId, workerId }, this.call)).session);
  }

  /** A new session with the history up to `turnId` (default: the last completed turn). */
  async fork(sessionId: string, turnId = ""): Promise<Session> {
    return required((await this.sessions.forkSession({ sessionId, turnId }, this.call)).session);
  }

  /** Follows the session's log from a cursor, reconnecting after breaks; see followSession. */
  follow(sessionId: string, options: FollowOptions = {}): AsyncGenerator<Event, void, undefined> {
    return followSession(this.sessions, sessionId, options);
  }

  // -- pending requests ----------------------------------------------------------------------

  /** The session's requests, oldest first; only pending ones unless `all`. */
  async listRequests(sessionId: string, all = false): Promise<PendingRequest[]> {
    const state = all ? RequestState.UNSPECIFIED : RequestState.PENDING;
    return (await this.sessions.listRequests({ sessionId, state }, this.call)).requests;
  }

  /** Answers a request with a JSON answer (see RequestKind for each kind's shape). */
  async respond(sessionId: string, requestId: string, responseJson: string): Promise<PendingRequest> {
    const { request } = await this.sessions.respondToRequest({ sessionId, requestId, responseJson }, this.call);
    return required(request);
  }

  approve(sessionId: string, requestId: string, decision: ApprovalDecision): Promise<PendingRequest> {
    return this.respond(sessionId, requestId, approvalAnswer(decision));
  }

  answerQuestions(sessionId: string, requestId: string, answers: Record<string, string | string[]>): Promise<PendingRequest> {
    return this.respond(sessionId, requestId, questionsAnswer(answers));
  }

  // -- workers and pairing (AdminService) ----------------------------------------------------

  async listWorkers(): Promise<WorkerStatus[]> {
    return (await this.admin.listWorkers({}, this.call)).workers;
  }

  /** Stops offering the worker new turns; its sessions move once their turns end (or after `graceMs`). */
  async drainWorker(workerId: string, graceMs?: number): Promise<WorkerStatus> {
    const grace = graceMs === undefined ? undefined : durationFromMs(graceMs);
    return required((await this.admin.drainWorker({ workerId, grace }, this.call)).worker);
  }

  /** A one-time code a new worker pairs with (`tether worker --pairing-code`). */
  createPairingCode(ttlMs?: number): Promise<CreatePairingCodeResponse> {
    const ttl = ttlMs === undefined ? undefined : durationFromMs(ttlMs);
    return this.admin.createPairingCode({ ttl }, this.call);
  }
}

function required<T>(value: T | undefined): T {
  if (value === undefined) throw new ConnectError("the server's answer lacks its result", Code.Internal);
  return value;
}
