// The seed's third example over Redis: two processes, node 0 listens, node 1 greets.
// Usage: redis_greet <redisHost> <redisPort>   (the job comes from DITASK_JOB, if set)
import { OnlineRLContext, Parallel, task } from "../../mod.ts";

const [redisHost = "127.0.0.1", port = "6379"] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ??
  process.argv.slice(2);

async function main() {
  await task.start({ asyncMode: false, ctx: new OnlineRLContext() }, async () => {
    if (task.router.nodeId === 0) {
      task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
      await task.waitFor("greeting", { timeout: 10_000 });
    } else {
      task.emit("greeting", "Hi");
    }
  });
}

await Parallel.runner({ nParallelWorkers: 2, mqType: "redis", redisHost, redisPort: Number(port) })(main);
console.log("launcher done");
