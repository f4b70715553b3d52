// A Tether execution worker in TypeScript: a second implementation of the WorkerService contract
// (proto/tether/v1/worker_service.proto), written from the contract and the Python worker
// (execution_worker/) to show the contract is all a worker in another language needs. It offers
// the `script` runtime of docs/conformance.md and passes `tether conformance`.
//
//   node_modules/.bin/tsc -p examples/typescript
//   TETHER_CONTROL_PLANE=127.0.0.1:7670 TETHER_RUNTIME=script \
//     node examples/typescript/dist/examples/typescript/worker.js
//
// Layout: worker_lease.ts holds the Lease stream (register, heartbeat, liveness, reconnect),
// worker_outbox.ts a session's numbered events and their resend (StreamEvents), worker_script.ts
// the runtime, worker_util.ts the small helpers, worker_settings.ts the CLI arguments and the
// worker id, worker_session.ts a session's state and Resume material into history,
// worker_base.ts the connection, Resume/rehydration, snapshots and fencing (LEASE_LOST), and
// worker_offers.ts the Worker: offers and turns, the Lease stream's messages and drain. This
// file is main: it parses the arguments, runs the Worker and drains on SIGTERM/SIGINT.
//
// Sessions are forgotten on exactly four paths, as in the Python worker: lease lost (revoked,
// lost in a renewal or an open, LEASE_LOST on a write), released (end of a drain, failed
// restore), retired by a newer epoch of the same session, or the worker closing. Forgetting a
// session stops its turn, drops its unsent events and cancels its calls: nothing is ever written
// for that epoch again.

import { Worker } from "./worker_offers.js";
import { USAGE, UsageError, parseSettings } from "./worker_settings.js";
import { log, setLogLevel } from "./worker_util.js";

export { Worker } from "./worker_offers.js";
export { historyFromResume, resumeWatermark } from "./worker_session.js";

// -- main -------------------------------------------------------------------------------------

async function main(): Promise<number> {
  let settings: ReturnType<typeof parseSettings>;
  try {
    settings = parseSettings(process.argv.slice(2), process.env);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`${USAGE}\n\nerror: ${error.message}\n`);
    return 2;
  }
  setLogLevel(settings.logLevel);
  const worker = new Worker(settings);
  // First SIGTERM or SIGINT drains (exit 0 once drained); a second one stops at once.
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (!worker.draining) {
        log("INFO", `${signal} received; draining (send it again to stop at once)`);
        worker.requestDrain();
      } else {
        log("WARNING", `${signal} received again; stopping now`);
        process.exit(128 + (signal === "SIGTERM" ? 15 : 2));
      }
    });
  }
  // A bug in a background task is logged; it must not take the worker and its sessions down.
  process.on("unhandledRejection", (reason) => {
    log("ERROR", `unhandled rejection: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`);
  });
  await worker.run();
  return 0;
}

// Exit explicitly: idle HTTP/2 sessions and timers would otherwise keep the process alive.
main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    log("ERROR", `worker failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    process.exit(1);
  },
);
