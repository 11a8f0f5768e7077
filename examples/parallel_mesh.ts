// Four processes in a full mesh: node 0 is the learner, nodes 1-3 are collectors. Every step each
// collector sends a trajectory (a Float32Array) to the learner, which answers with new weights.
//   deno run -A examples/parallel_mesh.ts    node dist/examples/parallel_mesh.js
import { Context, Parallel, PEER_JOINED, Role, task } from "../mod.ts";

const STEPS = 3;
const COLLECTORS = 3;

async function main() {
  const id = task.router.nodeId!;
  await task.start({ ctx: new Context() }, async () => {
    task.addRole(id === 0 ? Role.LEARNER : Role.COLLECTOR);
    console.log(`node ${id}: ${task.hasRole(Role.LEARNER) ? "learner" : "collector"}, peers [${task.router.peers.sort()}]`);
    task.router.on(PEER_JOINED, (peer) => console.log(`node ${id}: peer ${peer} joined late`));

    if (task.hasRole(Role.LEARNER)) {
      const got = new Map<number, number>();
      task.on("trajectory", (step, traj) => {
        const n = (got.get(step as number) ?? 0) + 1;
        got.set(step as number, n);
        const t = traj as Float32Array;
        console.log(`node 0: step ${step}: trajectory of ${t.length} floats from node ${task.sender} (first ${t[0]})`);
        if (n === COLLECTORS) task.emit("model", step, new Float32Array(4).fill((step as number) + 1));
      });
      await task.waitFor("done", { timeout: 30_000 });
    } else {
      task.use(async (ctx) => {
        const model = task.waitFor("model", { timeout: 30_000 });
        task.emit("trajectory", ctx.totalStep, new Float32Array(1000).fill(id * 100 + ctx.totalStep));
        const [step, weights] = await model;
        console.log(`node ${id}: step ${step}: got weights ${Array.from(weights as Float32Array)}`);
      });
      await task.run(STEPS);
      if (id === 1) task.emitRemote("done");
    }
  });
}

await Parallel.runner({ nParallelWorkers: 1 + COLLECTORS, topology: "mesh" })(main);
console.log("all workers finished");
