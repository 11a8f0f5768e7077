// The main of tests/multihost.ts: one `ditask --platform k8s --topology mesh` per host (network
// namespace), with DI_NODES and DI_RANK as a DIJob sets them. Every node waits until it is
// connected to every other, greets each of them, and reports who greeted it. Then the finisher
// (node MULTIHOST_FINISHER, default 1) returns from main: its `task.stop()` broadcasts `finish`,
// which must end the run loops of the others.
import { task } from "../../../mod.ts";

const FINISHER = Number(process.env["MULTIHOST_FINISHER"] ?? "1");
const STEP_MS = 20;

/** Resolve when `check()` holds (polled), reject after `ms`. */
function until(check: () => boolean, what: string, ms = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (check()) return resolve();
    const poll = setInterval(() => {
      if (!check()) return;
      clearInterval(poll);
      clearTimeout(timer);
      resolve();
    }, 10);
    const timer = setTimeout(() => {
      clearInterval(poll);
      reject(new Error(`Timed out after ${ms} ms waiting for ${what}`));
    }, ms);
  });
}

/** Run as one node of the three-host mesh. */
export async function main(): Promise<void> {
  const id = task.router.nodeId!;
  const n = (process.env["DI_NODES"] ?? "").split(",").length;
  const others = Array.from({ length: n }, (_v, i) => i).filter((i) => i !== id);
  // Every host waits for every other before main runs (not only for the lower ranks it dials).
  console.log(`node ${id}: peers at start ${[...task.router.peers].sort((a, b) => a - b).join(",")}`);
  await task.start({}, async () => {
    const hellos = new Map<number, number | null>();
    const done = new Set<number>();
    let finishFrom: number | null | undefined;
    task.on("hello", (from) => void hellos.set(from as number, task.sender));
    task.on("done", (from) => void done.add(from as number));
    task.on("finish", () => void (finishFrom ??= task.sender));

    await until(() => others.every((p) => task.router.peers.includes(p)), `peers ${others.join(", ")}`);
    console.log(`node ${id}: peers ${[...task.router.peers].sort((a, b) => a - b).join(",")}`);
    task.emitRemote("hello", id);
    await until(() => others.every((p) => hellos.has(p)), "a hello from every peer");
    for (const p of others) console.log(`node ${id} got hello from node ${p} (sender ${hellos.get(p)})`);
    task.emitRemote("done", id);

    if (id === FINISHER) {
      await until(() => others.every((p) => done.has(p)), "every peer done");
      console.log(`node ${id}: every node greeted every other; finishing`);
      return; // leaving task.start() stops the task, which broadcasts finish
    }
    task.use(() => new Promise<void>((resolve) => setTimeout(resolve, STEP_MS)));
    const limit = Math.ceil(60_000 / STEP_MS);
    await task.run(limit);
    if (finishFrom === undefined) throw new Error(`No finish arrived within ${limit} steps`);
    console.log(`node ${id}: stopped by finish from node ${finishFrom}`);
  });
}
