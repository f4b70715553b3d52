/**
 * Pending requests (approvals and questions a runtime asked mid-turn): what they ask and the
 * answers RespondToRequest takes, as RequestKind documents them in the contract.
 */

import { type PendingRequest, RequestKind } from "../../../gen/ts/tether/v1/resources_pb.js";

/** The decisions every approval takes; a runtime may offer fewer (`availableDecisions`). */
export const APPROVAL_DECISIONS = ["accept", "acceptForSession", "decline", "cancel"] as const;
export type ApprovalDecision = (typeof APPROVAL_DECISIONS)[number];

/** One question of a user-input request. */
export interface Question {
  id: string;
  /** The question's text (or its header when it has no text). */
  text: string;
  /** The options offered, when the runtime listed some. */
  options: string[];
}

/** Whether the request asks to approve a command or a file change. */
export function isApproval(request: PendingRequest): boolean {
  return request.kind === RequestKind.COMMAND_APPROVAL || request.kind === RequestKind.FILE_CHANGE_APPROVAL;
}

/** The decisions to offer for an approval: those the runtime listed that take no more than a
 * name, or accept and decline when it listed none. */
export function approvalDecisions(request: PendingRequest): ApprovalDecision[] {
  const offered = request.availableDecisions.length ? request.availableDecisions : ["accept", "decline"];
  return offered.filter((d): d is ApprovalDecision => (APPROVAL_DECISIONS as readonly string[]).includes(d));
}

/** The questions of a user-input request, read from its params_json. */
export function questions(request: PendingRequest): Question[] {
  let params: unknown;
  try {
    params = JSON.parse(request.paramsJson || "{}");
  } catch {
    return [];
  }
  const list = (params as { questions?: unknown })?.questions;
  if (!Array.isArray(list)) return [];
  const found: Question[] = [];
  for (const q of list as Array<Record<string, unknown>>) {
    if (typeof q !== "object" || q === null || !q.id) continue;
    const options = Array.isArray(q.options)
      ? (q.options as Array<Record<string, unknown>>).filter((o) => o && o.label).map((o) => String(o.label))
      : [];
    found.push({ id: String(q.id), text: String(q.question ?? q.header ?? ""), options });
  }
  return found;
}

/** The answer to an approval: {"decision": ...}. */
export function approvalAnswer(decision: ApprovalDecision): string {
  return JSON.stringify({ decision });
}

/** The answer to a user-input request: {"answers": {"<question id>": {"answers": [...]}}}. */
export function questionsAnswer(answers: Record<string, string | string[]>): string {
  const shaped: Record<string, { answers: string[] }> = {};
  for (const [id, value] of Object.entries(answers)) shaped[id] = { answers: Array.isArray(value) ? value : [value] };
  return JSON.stringify({ answers: shaped });
}

/** The one-line form of an answer: the decision of an approval, else the JSON. */
export function answerText(responseJson: string): string {
  try {
    const answer = JSON.parse(responseJson) as unknown;
    if (answer && typeof answer === "object" && !Array.isArray(answer)) {
      const keys = Object.keys(answer);
      const decision = (answer as { decision?: unknown }).decision;
      if (keys.length === 1 && typeof decision === "string") return decision;
    }
  } catch {
    // not JSON: show it as it is
  }
  return responseJson;
}
