import { exec } from "uvu";
import { exitProcess, runtimeKey } from "../lib/runtime.ts";

type Result = [errs: string | true, ran: number, skipped: number, total: number];

/**
 * Run every queued uvu suite, print `<runtime>: N passed, N failed` and end the process with a
 * non-zero code on any failure. A watchdog ends a run that hangs.
 */
export async function runQueued(limitMs = 20 * 60_000): Promise<never> {
  const queue = (globalThis as unknown as { UVU_QUEUE: Array<Array<unknown>> }).UVU_QUEUE;
  let passed = 0;
  let failed = 0;
  for (const group of queue) {
    for (let i = 1; i < group.length; i++) {
      const run = group[i] as () => Promise<Result>;
      group[i] = async () => {
        const r = await run();
        passed += r[1];
        failed += r[3] - r[1];
        return r;
      };
    }
  }
  const watchdog = setTimeout(() => {
    console.error(`${runtimeKey}: test run exceeded ${limitMs} ms; giving up`);
    console.log(`${runtimeKey}: ${passed} passed, ${failed + 1} failed`);
    exitProcess(1);
  }, limitMs);
  await exec();
  clearTimeout(watchdog);
  console.log(`${runtimeKey}: ${passed} passed, ${failed} failed`);
  return exitProcess(failed > 0 ? 1 : 0);
}
