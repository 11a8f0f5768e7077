// Multi-process scenarios for tests/parallel.test.ts. Usage: scenarios <name> [optionsJSON]
// The launcher runs Parallel.runner(options)(main); workers re-run this script with the same
// arguments and so pick the same main. Results are printed as lines the tests look for.
import { readFileSync } from "node:fs";
import { Context, Parallel, PEER_LEFT, task, WorkerExitError } from "../../mod.ts";

const [name = "", json = "{}"] = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? process.argv.slice(2);
// Options too long for a command line (a TLS bundle) come from a file: "@/path/to/options.json".
const options = { nParallelWorkers: 2, ...JSON.parse(json.startsWith("@") ? readFileSync(json.slice(1), "utf8") : json) };
const id = () => task.router.nodeId!;
const say = (s: string) => console.log(s);
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Wait until the router has at least `n` peers. */
function peersAtLeast(n: number): Promise<void> {
  return new Promise((resolve) => {
    const check = () => (task.router.peers.length >= n ? resolve() : setTimeout(check, 5));
    check();
  });
}

const mains: Record<string, () => Promise<void>> = {
  // The seed's third example.
  async greet() {
    await task.start({}, async () => {
      if (id() === 0) {
        task.on("greeting", (msg) => say(`Get msg: ${msg}`));
        await task.waitFor("greeting", { timeout: 10_000 });
      } else task.emit("greeting", "Hi");
    });
  },

  // DI-engine test_parallel_pipeline: each node emits "count" only remotely for 10 steps.
  async pipeline() {
    let received = 0;
    await task.start({}, async () => {
      task.on("count", () => void received++);
      task.use(() => task.emitRemote("count", id()));
      // Each node also waits for its peer's first count, so both see at least one.
      const first = task.waitFor("count", { timeout: 10_000 });
      await task.run(10);
      await first;
    });
    say(`node ${id()} received ${received > 0 ? "some" : "none"}`);
  },

  // DI-engine test_emit_remote: node 1 emits 20 times only remotely; it hears none itself.
  async emit_remote() {
    let received = 0;
    await task.start({}, async () => {
      task.on("Greeting", () => void received++);
      if (id() === 0) {
        await new Promise<void>((resolve) =>
          task.on("Greeting", () => {
            if (received === 20) resolve();
          })
        );
      } else {
        task.use(() => task.emitRemote("Greeting", "Hi"));
        await task.run(20);
      }
    });
    say(`node ${id()} received ${received}`);
  },

  // DI-engine test_wait_for, in async mode: each step node 1 greets and waits for an ack; node 0
  // waits for the greeting and acks. (A waitFor registered after its event arrived misses it, as
  // in DI-engine: a stream that must not miss an event keeps a task.on listener instead.)
  async wait_for() {
    let ok = 0;
    await task.start({ asyncMode: true }, async () => {
      task.use(async () => {
        if (id() === 1) {
          const ack = task.waitFor("Ack", { timeout: 10_000 });
          task.emitRemote("Greeting", "Hi");
          await ack;
          ok++;
        } else {
          const [msg] = await task.waitFor("Greeting", { timeout: 10_000 });
          if (msg === "Hi") ok++;
          task.emitRemote("Ack");
        }
      });
      await task.run(10);
    });
    say(`node ${id()} waited ${ok}`);
  },

  // DI-engine test_early_stop: node 1 stops after 2 steps; its finish ends node 0's run early.
  async early_stop() {
    await task.start({}, async () => {
      task.use(() => delay(50));
      await task.run(id() === 0 ? 200 : 2);
      say(`node ${id()} totalStep ${task.ctx.totalStep}`);
    });
  },

  // DI-engine test_broadcast_finish: node 1 sets finish (at step 1 at the earliest, once node 0
  // reported both peers connected, so no node is still starting); every node of both launches ends.
  async broadcast_finish() {
    await task.start({}, async () => {
      let nodeZeroPeers = 0;
      task.on("peers", (n) => void (nodeZeroPeers = n as number));
      task.use((ctx) => {
        if (id() === 0) task.emitRemote("peers", task.router.peers.length);
        if (id() === 1 && ctx.totalStep >= 1 && nodeZeroPeers === 2) task.finish = true;
        return delay(50);
      });
      await task.run(400);
      say(`node ${id()} finished at step ${task.ctx.totalStep}`);
    });
  },

  // DI-engine test_parallel_run: router topics, un-prefixed.
  async parallel_run() {
    await task.start({}, async () => {
      const got = new Promise<unknown>((resolve) => task.router.once("test_callback", resolve));
      task.router.emit("test_callback", "ping");
      say(`node ${id()} got ${await got}`);
    });
  },

  // DI-engine test_uncaught_exception.
  async uncaught() {
    if (id() === 0) throw new Error("uncaught exception");
    await task.start({}, () => task.waitFor("never", { timeout: 20_000 }));
  },

  // DI-engine test_disconnected: node 0 leaves after one greeting; node 1 keeps emitting, no error.
  async disconnected() {
    await task.start({}, async () => {
      if (id() === 0) {
        await task.waitFor("greeting", { timeout: 10_000 });
        return;
      }
      const left = new Promise((resolve) => task.router.once(PEER_LEFT, resolve));
      task.emit("greeting", 0);
      await left;
      for (let i = 1; i <= 10; i++) task.emit("greeting", i);
      say(`node 1 emitted 10 after disconnect, peers [${task.router.peers}]`);
    });
  },

  // DI-engine test_auto_recover: node 1 fails once; on retry it reaches node 0 and hears node 2.
  async auto_recover() {
    await task.start({}, async () => {
      if (id() === 1) {
        if (task.router.retries === 0) throw new Error("P1 Error");
        const fromP2 = task.waitFor("p2_msg", { timeout: 10_000 });
        task.emit("recovered_p1", task.router.retries);
        await fromP2;
        say(`node 1 recovered after ${task.router.retries} retries and heard node 2`);
      } else if (id() === 0) {
        const [retries] = await task.waitFor("recovered_p1", { timeout: 10_000 });
        say(`node 0 heard recovered_p1 (${retries})`);
      } else {
        await task.waitFor("recovered_p1", { timeout: 10_000 });
        task.emit("p2_msg"); // sent before this node closes its links, so node 1 gets it
      }
    });
  },

  // Which peers each node is connected to when main starts.
  async topology() {
    await task.start({}, async () => {
      say(`node ${id()} peers [${[...task.router.peers].sort((a, b) => a - b)}]`);
      // Stay until every peer has printed, so no link closes before the others look.
      const peers = task.router.peers.length;
      let n = 0;
      await new Promise<void>((resolve) => {
        if (peers === 0) resolve();
        task.on("printed", () => {
          if (++n === peers) resolve();
        });
        task.emitRemote("printed");
      });
    });
  },

  // No loss under load: workers 1..3 each emit `count` events to worker 0 as fast as they can.
  async load() {
    const count = options.count ?? 20_000;
    await task.start({}, async () => {
      if (id() === 0) {
        const next = new Map<number, number>();
        let total = 0;
        let bad = 0;
        const senders = options.nParallelWorkers - 1;
        await new Promise<void>((resolve) => {
          task.on("n", (i) => {
            const from = task.sender!;
            const want = next.get(from) ?? 0;
            if (i !== want) bad++;
            next.set(from, (i as number) + 1);
            if (++total === count * senders) resolve();
          });
        });
        say(`node 0 got ${total} events, ${bad} out of order, per sender ${[...next.values()].join(",")}`);
      } else {
        for (let i = 0; i < count; i++) {
          task.emitRemote("n", i);
          if (i % 5000 === 4999) await delay(0);
        }
      }
    });
  },

  // Every payload type of SPEC §3 crosses the process boundary with its type.
  async payloads() {
    await task.start({}, async () => {
      if (id() === 1) {
        const f = new Float32Array(1_000_000);
        for (let i = 0; i < f.length; i++) f[i] = i / 2;
        task.emit("types", 1.5, "s", [1, [2]], { a: { b: null } }, new Map([["k", 1]]), new Date(42), new Uint8Array([7]), f, 2n ** 64n, null, undefined, new Int16Array([-3]));
        return;
      }
      const a = await task.waitFor("types", { timeout: 10_000 });
      const f = a[7] as Float32Array;
      const checks = [
        a[0] === 1.5,
        a[1] === "s",
        JSON.stringify(a[2]) === "[1,[2]]",
        JSON.stringify(a[3]) === '{"a":{"b":null}}',
        a[4] instanceof Map && (a[4] as Map<string, number>).get("k") === 1,
        a[5] instanceof Date && (a[5] as Date).getTime() === 42,
        a[6] instanceof Uint8Array && a[6].constructor === Uint8Array && (a[6] as Uint8Array)[0] === 7,
        f instanceof Float32Array && f.length === 1_000_000 && f[999_999] === 999_999 / 2,
        a[8] === 2n ** 64n,
        a[9] === null,
        a[10] === undefined && a.length === 12,
        a[11] instanceof Int16Array && (a[11] as Int16Array)[0] === -3,
      ];
      say(`payload checks ${checks.map((c) => (c ? "1" : "0")).join("")}`);
    });
  },

  // One node of a mixed Node/Deno job: exchange events both ways with the other launch.
  async mixed() {
    const runtime = (globalThis as { Deno?: unknown }).Deno ? "deno" : "node";
    await task.start({}, async () => {
      const got = task.waitFor("hello", { timeout: 20_000 });
      await peersAtLeast(1);
      const f = new Float32Array(1_000_000).fill(id() + 0.5);
      f[999_999] = 7.25;
      // Half precision where the runtime has Float16Array (Deno); Node 20 receives it as float32.
      const Half = (globalThis as { Float16Array?: Float32ArrayConstructor }).Float16Array ?? Float32Array;
      task.emitRemote("hello", runtime, f, new Half([1.5, -2, 65504]));
      const [from, arr, half] = await got;
      const a = arr as Float32Array;
      const intact = a instanceof Float32Array && a.length === 1_000_000 && a[0] === 1 - id() + 0.5 && a[999_999] === 7.25;
      const h = half as Float32Array;
      say(`node ${id()} (${runtime}) got hello from ${from} intact=${intact} half=${h.constructor.name}:${[...h]}`);
      // Stay until the peer has also received ours.
      const bye = task.waitFor("bye", { timeout: 20_000 });
      task.emitRemote("bye");
      await bye;
    });
  },

  // Worker restart: node 1's first process dies by SIGKILL; the launcher restarts it (autoRecover)
  // and the new process rejoins with the same node id.
  async crash_restart() {
    await task.start({}, async () => {
      if (id() === 1) {
        if (task.router.retries === 0) process.kill(process.pid, "SIGKILL");
        const welcome = task.waitFor("welcome", { timeout: 20_000 });
        task.emit("back", task.router.retries);
        await welcome;
        say(`node 1 (retries ${task.router.retries}) was welcomed back`);
      } else {
        const [retries] = await task.waitFor("back", { timeout: 20_000 });
        task.emit("welcome");
        say(`node 0 saw node 1 back after ${retries} restart(s)`);
        // Stay until node 1 got the welcome (it leaves right after).
        await new Promise((resolve) => task.router.once(PEER_LEFT, resolve));
      }
    });
  },

  // Workers that wait until killed: for the signal tests.
  async big_env() {
    say(`node ${id()} started`);
  },

  // Workers that print a line every 20 ms (for at most 30 s): for the closed-output test.
  async chatter() {
    const env = (globalThis as { Deno?: { env: { get(k: string): string | undefined } } }).Deno?.env.get("DITASK_WORKER") ??
      process.env.DITASK_WORKER;
    say(`node ${id()} pid ${process.pid} dir ${JSON.parse(env ?? "{}").runDir}`);
    for (let i = 0; i < 1500; i++) {
      say(`node ${id()} line ${i}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  },

  async hang() {
    // The launcher's run directory, from the plan it gave this worker (the test checks it is removed).
    const env = (globalThis as { Deno?: { env: { get(k: string): string | undefined } } }).Deno?.env.get("DITASK_WORKER") ??
      process.env.DITASK_WORKER;
    say(`node ${id()} pid ${process.pid} dir ${JSON.parse(env ?? "{}").runDir}`);
    await task.start({}, () => task.waitFor("never", { timeout: 60_000 }));
  },
};

if (name === "two_launches") {
  // One script, two launches one after the other, each with its own main.
  for (const which of ["first", "second"]) {
    await Parallel.runner(options)(async () => say(`${which} main on node ${id()}`));
    say(`launch ${which} done`);
  }
  process.exit(0);
}

if (name === "args") {
  // main's arguments: random in each run of the script, and a class instance.
  const seed = Math.random();
  if (process.env.DITASK_WORKER === undefined) say(`launcher seed ${seed}`);
  await Parallel.runner(options)(
    async (s: number, cfg: { when: Date; arr: Float32Array }) => say(`node ${id()} seed ${s} when ${cfg.when instanceof Date} arr ${cfg.arr.constructor.name} ${cfg.arr[1]}`),
    seed,
    { when: new Date(0), arr: new Float32Array([1.5, 2.5]) },
  );
  class Cfg {
    readonly v: number;
    constructor(v: number) {
      this.v = v;
    }
    twice(): number {
      return this.v * 2;
    }
  }
  await Parallel.runner(options)(async (c: Cfg) => say(`node ${id()} cfg twice ${c.twice()}`), new Cfg(21));
  process.exit(0);
}

const main = mains[name];
if (!main) {
  console.error(`unknown scenario "${name}"`);
  process.exit(2);
}
// big_env: the launcher's environment is larger than the kernel takes for a new process (E2BIG).
if (name === "big_env" && process.env.DITASK_WORKER === undefined) process.env.DITASK_TEST_BIG = "x".repeat(200_000);
try {
  await Parallel.runner(options)(main);
  say("launcher done");
} catch (err) {
  const e = err as WorkerExitError;
  say(`launcher error ${e.name} node=${e.nodeId} code=${e.code}: ${e.message}`);
  process.exitCode = 3;
}
void Context;
