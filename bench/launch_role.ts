// Start-up: Parallel.runner with n workers (the default ipc mesh), timed from just before the
// runner call until node 0 has heard from every worker that its `main` runs. The workers re-run
// this same entry script (bench.ts --role launch ...); their stdout is this process's stdout.
// ditask comes in as a user's code gets it, `from "ditask"`: on Node the npm package's entry (the
// bundle, see scripts/bundle.js, through the package's self-reference), on Deno mod.ts (deno.json).
import process from "node:process";
import { Parallel, task } from "ditask";
import { report, rssMiB } from "./control.ts";

/** The launch test's parameters. */
export interface LaunchSpec {
  n: number;
  /** How long the workers stay idle before their RSS is read, in ms. */
  idleMs: number;
  timeoutMs: number;
}

/** When this worker's steps happened (wall clock, ms since the epoch). */
interface Up {
  id: number;
  pid: number;
  /** The runtime's time origin (process start). */
  origin: number;
  /** bench.ts began to run. */
  script: number;
  /** ditask (mod.ts) was loaded. */
  loaded: number;
  /** `main` was called: the mesh is connected. */
  main: number;
}

/**
 * @param tScript When bench.ts began to run.
 * @param tLoaded When this module (and so ditask) was loaded.
 */
export async function runLaunch(spec: LaunchSpec, tScript: number, tLoaded: number): Promise<void> {
  const worker = process.env.DITASK_WORKER !== undefined;
  if (!worker) report({ type: "t0", t: Date.now(), pid: process.pid });
  await Parallel.runner({ nParallelWorkers: spec.n })(workerMain(spec, tScript, tLoaded));
  report({ type: "launcher-done", t: Date.now() });
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function workerMain(spec: LaunchSpec, tScript: number, tLoaded: number): () => Promise<void> {
  return async () => {
    const tMain = Date.now();
    const id = task.router.nodeId!;
    report({ type: "pid", pid: process.pid, id });
    const up: Up = { id, pid: process.pid, origin: performance.timeOrigin, script: tScript, loaded: tLoaded, main: tMain };
    await task.start({}, async () => {
      if (id !== 0) {
        task.on("bench.rss?", () => task.emit("bench.rss", id, rssMiB()));
        task.emit("bench.up", up);
        await task.waitFor("bench.done", { timeout: spec.timeoutMs });
        return;
      }
      // Node 0 collects one "up" per worker (events sent before it listened are held for it).
      const ups = new Map<number, Up>([[0, up]]);
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${ups.size} of ${spec.n} workers came up`)), spec.timeoutMs);
        task.on("bench.up", (u) => {
          const w = u as Up;
          ups.set(w.id, w);
          if (ups.size === spec.n) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      const allUp = Date.now();
      report({ type: "all-up", t: allUp, workers: [...ups.values()].sort((a, b) => a.id - b.id) });
      await sleep(spec.idleMs);
      const rss = new Map<number, number>([[0, rssMiB()]]);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, spec.timeoutMs);
        task.on("bench.rss", (wid, mb) => {
          rss.set(wid as number, mb as number);
          if (rss.size === spec.n) {
            clearTimeout(timer);
            resolve();
          }
        });
        task.emit("bench.rss?");
      });
      report({ type: "worker-rss", rss: [...rss.entries()].sort((a, b) => a[0] - b[0]).map(([, mb]) => mb) });
      task.emit("bench.done");
    });
  };
}
