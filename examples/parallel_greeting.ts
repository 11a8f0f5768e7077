// The seed's third example: two processes, node 0 listens, node 1 greets.
//   deno run -A examples/parallel_greeting.ts    node dist/examples/parallel_greeting.js
import { OnlineRLContext, Parallel, task } from "../mod.ts";

async function main() {
  await task.start({ asyncMode: false, ctx: new OnlineRLContext() }, async () => {
    if (task.router.nodeId === 0) { // 1: task.router tells which node this process is
      task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
      // 3: leaving the block removes the handlers; instead of DI-engine's sleep(10), stay
      // exactly until the greeting came (ditask loses no event emitted at start-up).
      await task.waitFor("greeting", { timeout: 10_000 });
    } else {
      task.emit("greeting", "Hi"); // 2: emitLocal / emitRemote choose one side
    }
  });
}

await Parallel.runner({ nParallelWorkers: 2 })(main); // 4: see ParallelOptions for more modes
// >>> Get msg: Hi
