/**
 * @tether/client: the Tether control plane from a browser, without a framework.
 *
 * - TetherClient: SessionService and AdminService over Connect, with credentials and deadlines.
 * - followSession / TetherClient.follow: a session's log from a cursor, reconnecting after a
 *   break with no gap and no duplicate.
 * - Transcript: events folded into entries (agent messages and command output grown by their
 *   deltas, output blocks, requests with their state).
 * - SessionFollower: the two together, the core of a live session view.
 * - approvalDecisions, questions, approvalAnswer, questionsAnswer: answering pending requests.
 */

export { Backoff } from "./backoff.js";
export {
  TetherClient,
  credentials,
  type TetherClientOptions,
  createTetherTransport,
  describeError,
  errorReason,
} from "./client.js";
export {
  DEFAULT_RECONNECT,
  type FollowOptions,
  type FollowState,
  type ReconnectPolicy,
  followSession,
  isStreamBreak,
} from "./follow.js";
export {
  APPROVAL_DECISIONS,
  type ApprovalDecision,
  type Question,
  answerText,
  approvalAnswer,
  approvalDecisions,
  isApproval,
  questions,
  questionsAnswer,
} from "./requests.js";
export { SessionFollower, type SessionFollowerOptions } from "./session.js";
export { type Entry, Transcript } from "./transcript.js";
