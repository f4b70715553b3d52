// CLI arguments and environment of the TypeScript worker (worker.ts): its Settings, the usage
// text, and the stable worker id kept under the workdir.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";

export const VERSION = "0.1.0-ts";
/** The runtimes this worker can run. */
export const RUNTIMES = ["script"];

// -- settings ---------------------------------------------------------------------------------

export interface Settings {
  controlPlane: string;
  workdir: string;
  runtimes: string[];
  slots: number;
  name: string;
  workerId: string | null;
  labels: Record<string, string>;
  drainGraceMs: number;
  /** Deadline of unary calls and of waiting for LeaseOpened. */
  rpcTimeoutMs: number;
  /** Deadline of a whole Resume download (retries included) and of a Snapshot upload. */
  resumeTimeoutMs: number;
  snapshotTimeoutMs: number;
  /** How long a drain waits for the control plane to acknowledge the last events. */
  flushTimeoutMs: number;
  /** An after-turn snapshot waits for the session to be idle this long (a turn that starts
   * meanwhile takes the snapshot over at its own end). */
  snapshotIdleMs: number;
}

export const USAGE = `usage: worker.js [--control-plane HOST:PORT] [--workdir DIR] [--runtime NAME] [--slots N]
                 [--name NAME] [--worker-id ID] [--label KEY=VALUE] [--drain-grace-s S] [--log-level L]
Each flag falls back to its environment variable: TETHER_CONTROL_PLANE, TETHER_WORKDIR,
TETHER_RUNTIME, TETHER_SLOTS, TETHER_WORKER_NAME, TETHER_WORKER_ID, TETHER_LABELS,
TETHER_DRAIN_GRACE_S, TETHER_LOG_LEVEL. Runtimes available: ${RUNTIMES.join(", ")}.`;

export class UsageError extends Error {}

export function parseSettings(argv: string[], env: NodeJS.ProcessEnv): Settings & { logLevel: string } {
  const flags = new Map<string, string[]>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--help" || arg === "-h") {
      process.stdout.write(USAGE + "\n");
      process.exit(0);
    }
    const match = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (match === null) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const name = match[1] ?? "";
    let value = match[2];
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
    }
    flags.set(name, [...(flags.get(name) ?? []), value]);
  }
  const known = ["control-plane", "workdir", "runtime", "slots", "name", "worker-id", "label", "drain-grace-s", "log-level"];
  for (const name of flags.keys()) {
    if (!known.includes(name)) throw new UsageError(`unknown option --${name}`);
  }
  const one = (flag: string, envName: string, dflt: string): string => flags.get(flag)?.at(-1) ?? env[envName] ?? dflt;
  const list = (flag: string, envName: string): string[] =>
    (flags.get(flag) ?? [env[envName] ?? ""]).flatMap((v) => v.split(/[\s,]+/)).filter((v) => v !== "");

  const runtimes = [...new Set(list("runtime", "TETHER_RUNTIME"))];
  if (runtimes.length === 0) runtimes.push("script");
  const unknown = runtimes.filter((r) => !RUNTIMES.includes(r));
  if (unknown.length > 0) throw new UsageError(`unknown runtime ${unknown.join(", ")}; available: ${RUNTIMES.join(", ")}`);
  const slots = Number(one("slots", "TETHER_SLOTS", "4"));
  if (!Number.isInteger(slots) || slots < 1 || slots > 1024) throw new UsageError("slots must be an integer from 1 to 1024");
  const drainGrace = Number(one("drain-grace-s", "TETHER_DRAIN_GRACE_S", "30"));
  if (!(drainGrace >= 0)) throw new UsageError("drain grace must be 0 or more seconds");
  const workerId = one("worker-id", "TETHER_WORKER_ID", "") || null;
  if (workerId !== null && !WORKER_ID.test(workerId)) throw new UsageError("worker id must be 1-128 characters of [A-Za-z0-9._-]");
  const labels: Record<string, string> = {};
  for (const item of list("label", "TETHER_LABELS")) {
    const eq = item.indexOf("=");
    if (eq <= 0) throw new UsageError(`label ${JSON.stringify(item)} is not of the form key=value`);
    labels[item.slice(0, eq)] = item.slice(eq + 1);
  }
  return {
    controlPlane: one("control-plane", "TETHER_CONTROL_PLANE", "127.0.0.1:7670"),
    workdir: one("workdir", "TETHER_WORKDIR", "./tether-worker"),
    runtimes,
    slots,
    name: one("name", "TETHER_WORKER_NAME", hostname()),
    workerId,
    labels,
    drainGraceMs: drainGrace * 1000,
    rpcTimeoutMs: 10_000,
    resumeTimeoutMs: 60_000,
    snapshotTimeoutMs: 60_000,
    flushTimeoutMs: 10_000,
    snapshotIdleMs: 50,
    logLevel: one("log-level", "TETHER_LOG_LEVEL", "INFO"),
  };
}

const WORKER_ID = /^[A-Za-z0-9._-]{1,128}$/;

/** The worker's stable id: the one stored under the workdir (created on first start, the same
 * file the Python worker uses), so a restarted worker comes back as itself and keeps its
 * sticky sessions. */
export function resolveWorkerId(workdir: string, override: string | null): string {
  if (override !== null) return override;
  const path = join(workdir, ".tether", "worker_id");
  try {
    const stored = readFileSync(path, "utf8").trim();
    if (WORKER_ID.test(stored)) return stored;
  } catch {
    // first start
  }
  const workerId = "wkr_" + randomBytes(8).toString("hex");
  mkdirSync(join(workdir, ".tether"), { recursive: true });
  writeFileSync(path + ".tmp", workerId + "\n");
  renameSync(path + ".tmp", path); // atomic: a crash never leaves a half-written id behind
  return workerId;
}
