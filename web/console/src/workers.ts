/** Workers (connected, slots in use, labels, draining) with a drain button, and pairing codes. */

import type { WorkerStatus } from "../../../gen/ts/tether/v1/admin_service_pb.js";
import { client } from "./api.js";
import { h, type View, when } from "./dom.js";
import { clearError, showError } from "./notify.js";

const REFRESH_MS = 2_000;

function row(worker: WorkerStatus, drain: (workerId: string) => void): HTMLTableRowElement {
  const labels = Object.entries(worker.labels).map(([k, v]) => `${k}=${v}`);
  return h(
    "tr",
    { "data-worker-id": worker.workerId },
    h("td", {}, worker.name || "-"),
    h("td", { class: "mono" }, worker.workerId),
    h("td", { "data-col": "connected" }, worker.connected ? "yes" : "no"),
    h("td", { "data-col": "slots" }, `${worker.runningTurns} / ${worker.slots}`),
    h("td", {}, String(worker.heldSessions)),
    h("td", {}, worker.runtimes.join(", ")),
    h("td", { class: "mono" }, labels.join(" ") || "-"),
    h("td", { "data-col": "draining" }, worker.draining ? "draining" : "-"),
    h("td", {}, when(worker.registerTime)),
    h(
      "td",
      {},
      h("button", { "data-testid": "drain", disabled: worker.draining || !worker.connected, onclick: () => drain(worker.workerId) }, "Drain"),
    ),
  );
}

export function workersView(): View {
  const body = h("tbody");
  const pairing = h("div", { class: "pairing", "data-testid": "pairing-code" });
  let stopped = false;
  const refresh = async (): Promise<void> => {
    try {
      const workers = await client().listWorkers();
      if (!stopped) body.replaceChildren(...workers.map((w) => row(w, (id) => void drain(id))));
      clearError("list workers");
    } catch (error) {
      showError("list workers", error);
    }
  };
  const drain = async (workerId: string): Promise<void> => {
    if (!confirm(`Drain ${workerId}? It takes no new turns; its sessions move once their turns end.`)) return;
    try {
      await client().drainWorker(workerId);
      clearError();
      await refresh();
    } catch (error) {
      showError("drain", error);
    }
  };
  const pair = async (): Promise<void> => {
    try {
      const code = await client().createPairingCode();
      pairing.replaceChildren(
        h("code", { "data-testid": "code" }, code.code),
        ` for owner ${code.owner}, valid until ${when(code.expireTime)}: `,
        h("code", {}, `tether worker --workdir ./w --runtime shell --pairing-code ${code.code}`),
      );
      clearError();
    } catch (error) {
      showError("create pairing code", error);
    }
  };
  const heads = ["Name", "Id", "Connected", "Slots in use", "Sessions", "Runtimes", "Labels", "Draining", "Registered", ""];
  const el = h(
    "section",
    { class: "workers" },
    h("div", { class: "toolbar" }, h("h2", {}, "Workers"), h("button", { "data-testid": "create-pairing-code", onclick: () => void pair() }, "Create pairing code")),
    pairing,
    h("table", { "data-testid": "workers" }, h("thead", {}, h("tr", {}, ...heads.map((t) => h("th", {}, t)))), body),
  );
  void refresh();
  const timer = setInterval(() => void refresh(), REFRESH_MS);
  return {
    el,
    dispose: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
