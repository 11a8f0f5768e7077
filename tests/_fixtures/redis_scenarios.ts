// Multi-process scenarios for tests/transport/redis.test.ts.
// Usage: redis_scenarios <name> <optionsJSON>; options hold redisPort and more. The job comes from
// DITASK_JOB. Results are printed as lines the tests look for.
import { Parallel, type ParallelOptions, task } from "../../mod.ts";
import { RedisTransport } from "../../lib/transport/redis/mod.ts";
import { runtimeKey } from "../../lib/runtime.ts";

const [name = "", json = "{}"] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? process.argv.slice(2);
const options = JSON.parse(json) as Partial<ParallelOptions> & { count?: number; peer?: number; nodeId?: number; job?: string };
const id = () => task.router.nodeId!;
const say = (s: string) => console.log(s);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

const mains: Record<string, () => Promise<void>> = {
  // Three senders each emit `count` events to node 3; every event must arrive once, in order.
  async load() {
    const count = options.count ?? 10_000;
    await task.start({}, async () => {
      if (id() === 3) {
        const next = new Map<number, number>();
        let total = 0;
        let bad = 0;
        await new Promise<void>((resolve) => {
          task.on("n", (from, i) => {
            if (task.sender !== from || (next.get(from as number) ?? 0) !== i) bad++;
            next.set(from as number, (i as number) + 1);
            if (++total === 3 * count) resolve();
          });
        });
        await delay(200); // anything late (a duplicate) would show in the count
        say(`node 3 got ${total} events, ${bad} bad, per sender ${[0, 1, 2].map((s) => next.get(s)).join(",")}`);
      } else {
        for (let i = 0; i < count; i++) {
          task.emitRemote("n", id(), i);
          if (i % 500 === 499) await delay(0);
        }
      }
    });
  },

  // One node of a Node + Deno job: greet the peer with a Float32Array once it is present.
  async mixed() {
    const peer = options.peer!;
    await task.start({}, async () => {
      const got = task.waitFor("hello", { timeout: 30_000 });
      while (!task.router.peers.includes(peer)) await delay(5);
      const arr = new Float32Array(1 << 16).map((_, i) => i * 0.5 - 7);
      task.emitRemote("hello", runtimeKey, id(), arr);
      const [rt, from, a] = await got;
      const b = a as Float32Array;
      const intact = b instanceof Float32Array && b.length === arr.length && b.every((v, i) => v === arr[i]);
      say(`node ${id()} (${runtimeKey}) got hello from ${rt} node ${from} intact=${intact}`);
    });
  },
};

if (name === "node") {
  // A bare transport that joins the job and stays until killed (or, with "exit", closes at once).
  const t = new RedisTransport({
    nodeId: options.nodeId ?? 9,
    redisPort: options.redisPort!,
    labels: ["fixture"],
    heartbeatInterval: 100,
    peerTimeout: 1000,
  });
  await t.open();
  say("ready");
  if (options.count === 0) {
    await t.close();
    await t.close();
    say("closed");
  } else {
    setInterval(() => {}, 1000);
  }
} else {
  const main = mains[name];
  if (!main) throw new Error(`Unknown scenario ${JSON.stringify(name)}`);
  await Parallel.runner({ nParallelWorkers: 2, mqType: "redis", ...options } as ParallelOptions)(main);
  say("launcher done");
}
