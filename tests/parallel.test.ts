import { Buffer } from "node:buffer";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { makeLaunchDir, Parallel, normalizeOptions, padParam, planWorkers, sendableArgs } from "../lib/parallel.ts";
import { DitaskError } from "../lib/errors.ts";
import { IPC_PATH_MAX } from "../lib/transport/ws/protocol.ts";
import { redisTransportOptions } from "../lib/transport/mod.ts";
import { alive, freePorts, killAll, runScript, runtimeKey, selfSignedCert, testPath, until, withTimeout } from "./_helpers.ts";

const scenarios = testPath("_fixtures/scenarios");
const run = (name: string, options: object = {}, timeoutMs = 60_000, env?: Record<string, string>) =>
  runScript(scenarios, [name, JSON.stringify(options)], env ? { timeoutMs, env } : { timeoutMs });

/** A fresh directory whose path is one byte too long for a Unix socket path; removed by `done`. */
function deepDir(): { deep: string; root: string; done: () => void } {
  const root = mkdtempSync(join(tmpdir(), "ditask-deep-test-"));
  const deep = join(root, "d".repeat(IPC_PATH_MAX - Buffer.byteLength(root)));
  mkdirSync(deep);
  return { deep, root, done: () => rmSync(root, { recursive: true, force: true }) };
}
const lines = (s: string) => s.split("\n").filter(Boolean);

const Plan = suite("Parallel options and plans");

Plan("padParam() follows DI-engine's padding_param", () => {
  assert.equal(padParam(10, 3, 0), [10, 11, 12]);
  assert.equal(padParam([50515], 3, 0), [50515, 50516, 50517]);
  assert.equal(padParam(undefined, 2, 50515), [50515, 50516]);
  assert.equal(padParam([3, 1], 2, 0), [3, 1]);
});

Plan("mesh: worker i dials workers 0..i-1 plus attachTo and waits for all others", () => {
  const o = normalizeOptions({ nParallelWorkers: 3, protocol: "tcp", ports: 6000, attachTo: ["tcp://h:1"], nodeIds: 10 });
  const p = planWorkers(o, { dir: "/tmp/x" });
  assert.equal(p.map((w) => w.nodeId), [10, 11, 12]);
  assert.equal(p.map((w) => w.listen), ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "tcp://127.0.0.1:6002"]);
  assert.equal(p[2]!.dial, ["tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "tcp://h:1"]);
  assert.equal(p[0]!.dial, ["tcp://h:1"]);
  assert.equal(p[1]!.expect, [10, 12]);
});

Plan("expectPeers: every worker also waits for these nodes of other hosts; bad ids are refused", () => {
  const o = normalizeOptions({ nParallelWorkers: 2, protocol: "tcp", ports: 6000, nodeIds: 2, expectPeers: [0, 1, 4] });
  const p = planWorkers(o, { dir: "/d" });
  assert.equal(p.map((w) => w.expect), [[3, 0, 1, 4], [2, 0, 1, 4]]);
  assert.throws(() => normalizeOptions({ nParallelWorkers: 2, nodeIds: 2, expectPeers: [3] }), /expectPeers: node id 3 is one of this launch's workers/);
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, expectPeers: [-1] }), (e: unknown) => e instanceof RangeError);
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, expectPeers: 5 as unknown as number[] }), (e: unknown) => e instanceof TypeError);
});

Plan("star: workers dial worker 0 only; alone: only attachTo; ipc: socket files in the launch dir", () => {
  const star = planWorkers(normalizeOptions({ nParallelWorkers: 3, topology: "star" }), { dir: "/tmp/d" });
  assert.equal(star.map((w) => w.dial), [[], ["ipc:///tmp/d/node_0.ipc"], ["ipc:///tmp/d/node_0.ipc"]]);
  assert.equal(star.map((w) => w.expect), [[1, 2], [0], [0]]);
  // Each worker is told the launch dir, to remove it if the launcher dies first.
  assert.equal(star.map((w) => w.runDir), ["/tmp/d", "/tmp/d", "/tmp/d"]);
  // A lone tcp worker (run in the launcher's process) gets no directory; ipc cannot do without.
  const lone = planWorkers(normalizeOptions({ nParallelWorkers: 1, protocol: "tcp" }), { ports: [5000] });
  assert.is(lone[0]!.runDir, undefined);
  assert.throws(() => planWorkers(normalizeOptions({ nParallelWorkers: 1, protocol: "ipc" }), {}), /ipc needs a directory/);
  const alone = planWorkers(normalizeOptions({ nParallelWorkers: 2, topology: "alone", attachTo: ["ipc:///s"] }), { dir: "/d" });
  assert.equal(alone.map((w) => [w.dial, w.expect]), [[["ipc:///s"], []], [["ipc:///s"], []]]);
});

Plan("a redis plan's liveness options reach the Redis transport in its terms", () => {
  const o = normalizeOptions({ nParallelWorkers: 1, mqType: "redis", redisPort: 6390, heartbeatInterval: 300, heartbeatTimeout: 4000, connectTimeout: 900 });
  const [plan] = planWorkers(o, { dir: "/d" });
  assert.equal(redisTransportOptions(plan!), {
    nodeId: 0,
    expect: [],
    labels: [],
    redisPort: 6390,
    connectTimeout: 900,
    heartbeatInterval: 300,
    peerTimeout: 4000,
  });
});

Plan("security and heartbeat options reach every plan; tls makes local dials wss; the secret defaults to DITASK_SECRET", async () => {
  const { setEnv } = await import("../lib/runtime.ts");
  const tls = { cert: "CERT", key: "KEY", ca: "CA" };
  const o = normalizeOptions({ nParallelWorkers: 2, protocol: "tcp", ports: 7000, tls, heartbeatTimeout: 900, startupInterval: 1 });
  const p = planWorkers(o, { dir: "/d" });
  assert.equal(p[1]!.dial, ["wss://127.0.0.1:7000"]);
  assert.equal([p[1]!.tls, p[1]!.heartbeatTimeout], [tls, 900]);
  assert.is(p[0]!.secret, undefined);
  setEnv("DITASK_SECRET", "from-env");
  try {
    assert.is(planWorkers(normalizeOptions({ nParallelWorkers: 1 }), { dir: "/d" })[0]!.secret, "from-env");
    assert.is(normalizeOptions({ nParallelWorkers: 1, secret: "explicit" }).secret, "explicit");
  } finally {
    setEnv("DITASK_SECRET", undefined);
  }
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, tls }), (e: unknown) => e instanceof TypeError && /tls needs protocol "tcp"/.test((e as Error).message));
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, startupInterval: -1 }), (e: unknown) => e instanceof RangeError);
});

Plan("mqType redis refuses secret and tls instead of ignoring them, and leaves DITASK_SECRET unused", async () => {
  const { setEnv } = await import("../lib/runtime.ts");
  const refused = (k: string) => (e: unknown) =>
    e instanceof TypeError && new RegExp(`${k} secures the ws mesh and does nothing with mqType "redis".*redisUrl`).test((e as Error).message);
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, mqType: "redis", secret: "s" }), refused("secret"));
  assert.throws(() => normalizeOptions({ nParallelWorkers: 1, mqType: "redis", protocol: "tcp", tls: { cert: "C", key: "K" } }), refused("tls"));
  setEnv("DITASK_SECRET", "from-env");
  try {
    const plans = planWorkers(normalizeOptions({ nParallelWorkers: 2, mqType: "redis" }), { dir: "/d" });
    assert.equal(plans.map((w) => w.secret), [undefined, undefined]);
    // The same environment still secures a ws mesh.
    assert.is(normalizeOptions({ nParallelWorkers: 1 }).secret, "from-env");
  } finally {
    setEnv("DITASK_SECRET", undefined);
  }
});

Plan("bad options throw at once with errors naming the problem", () => {
  const bad: Array<[object, new (...a: never[]) => Error, RegExp]> = [
    [{ nParallelWorkers: 0 }, RangeError, /nParallelWorkers/],
    [{ nParallelWorkers: 1.5 }, RangeError, /nParallelWorkers/],
    [{ nParallelWorkers: 1e9 }, RangeError, /nParallelWorkers 1000000000: one launch starts at most 4096/],
    [{ nParallelWorkers: 4097 }, RangeError, /at most 4096/],
    [{ nParallelWorkers: 2, labels: "collector" }, TypeError, /Invalid labels "collector": expected a list of strings, such as \["collector"\]/],
    [{ nParallelWorkers: 2, labels: ["a", 1] }, TypeError, /Invalid labels: 1 is not a string/],
    [{ nParallelWorkers: 2, topology: "ring" }, TypeError, /topology "ring"/],
    [{ nParallelWorkers: 2, protocol: "udp" }, TypeError, /protocol "udp"/],
    [{ nParallelWorkers: 2, mqType: "zmq" }, TypeError, /mqType "zmq"/],
    [{ nParallelWorkers: 2, nodeIds: [1, 1] }, RangeError, /repeat/],
    [{ nParallelWorkers: 3, protocol: "tcp", ports: [1, 2] }, RangeError, /2 ports for 3 workers/],
    [{ nParallelWorkers: 2, ports: 70000 }, RangeError, /port/],
    [{ nParallelWorkers: 2, protocol: "tcp", ports: [50515, 50515] }, RangeError, /Invalid ports \[50515,50515\]: ports repeat/],
    [{ nParallelWorkers: 2, attachTo: ["nowhere"] }, TypeError, /"nowhere"/],
    [{ nParallelWorkers: 2, maxRetries: -1 }, RangeError, /maxRetries/],
  ];
  for (const [o, cls, re] of bad) {
    assert.throws(() => Parallel.runner(o as never), (e: unknown) => e instanceof cls && re.test((e as Error).message), JSON.stringify(o));
  }
  assert.ok(normalizeOptions({ nParallelWorkers: 1, mqType: "nng" }));
  assert.is(normalizeOptions({ nParallelWorkers: 4096 }).nodeIds.length, 4096);
});

Plan("bad attachTo, limits and heartbeat settings stop the runner before any worker starts", () => {
  const refused = (o: object, re: RegExp) =>
    assert.throws(() => Parallel.runner({ nParallelWorkers: 2, ...o }), (e: unknown) => e instanceof TypeError && re.test((e as Error).message));
  refused({ attachTo: "tcp://h:1" }, /Invalid attachTo "tcp:\/\/h:1": expected an array of addresses/);
  refused({ maxPayload: -5 }, /Invalid maxPayload -5: expected a number > 0/);
  refused({ connectTimeout: "5" }, /Invalid connectTimeout "5"/);
  refused({ maxOutboxBytes: NaN }, /Invalid maxOutboxBytes/);
  refused({ heartbeatInterval: 100, heartbeatTimeout: 10 }, /heartbeatInterval 100: it must be shorter than heartbeatTimeout \(10 ms\)/);
  refused({ heartbeatInterval: 20_000 }, /shorter than heartbeatTimeout \(15000 ms\)/);
  // Longer than a timer takes: it would fire after 1 ms (with Infinity, a peer whose link dropped
  // was reported as left at once instead of never).
  refused({ heartbeatTimeout: Infinity }, /Invalid heartbeatTimeout Infinity: expected at most 2147483647 ms/);
  refused({ connectTimeout: 3e9 }, /Invalid connectTimeout 3000000000: expected at most 2147483647 ms/);
  Parallel.runner({ nParallelWorkers: 2, heartbeatTimeout: 2_147_483_647, connectTimeout: 2_147_483_647 });
  // A short timeout alone is fine: the interval follows it.
  Parallel.runner({ nParallelWorkers: 2, heartbeatTimeout: 400 });
});

Plan("makeLaunchDir: a temp dir too deep for the ipc sockets is passed over for a shorter one; with none, ERR_DITASK_IPC_PATH", () => {
  const { deep, root, done } = deepDir();
  try {
    const d = makeLaunchDir([0, 1, 12], [deep, join(root, "missing"), root]);
    assert.ok(d.startsWith(`${root}/ditask-`), d);
    assert.ok(Buffer.byteLength(join(d, "node_12.ipc")) <= IPC_PATH_MAX, d);
    // No ipc socket to place (tcp): the temp directory, however deep.
    assert.ok(makeLaunchDir([], [deep, root]).startsWith(`${deep}/ditask-`));
    assert.throws(
      () => makeLaunchDir([0], [deep, join(root, "missing")]),
      (e: unknown) => e instanceof DitaskError && e.code === "ERR_DITASK_IPC_PATH" && e.message.includes(deep),
    );
  } finally {
    done();
  }
});

const P = suite("Parallel (multi-process)");
P.after.each(() => killAll());

P("the seed's third example prints Get msg: Hi, 20 runs in 20", async () => {
  let ok = 0;
  for (let i = 0; i < 20; i++) {
    const r = await run("greet");
    if (r.code === 0 && lines(r.stdout).includes("Get msg: Hi") && lines(r.stdout).includes("launcher done")) ok++;
    else console.error(r);
  }
  assert.is(ok, 20);
});

P("the seed's example over tcp with free ports", async () => {
  const r = await run("greet", { protocol: "tcp" });
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("Get msg: Hi"));
});

P("test_parallel_pipeline: both nodes receive counts", async () => {
  const r = await run("pipeline");
  assert.is(r.code, 0, r.stderr);
  assert.equal(lines(r.stdout).sort(), ["launcher done", "node 0 received some", "node 1 received some"]);
});

P("test_emit_remote: node 0 receives all 20, node 1 none", async () => {
  const r = await run("emit_remote");
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 0 received 20"), r.stdout);
  assert.ok(lines(r.stdout).includes("node 1 received 0"), r.stdout);
});

P("test_wait_for: every step's waitFor gets the peer's greeting", async () => {
  const r = await run("wait_for");
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 0 waited 10"), r.stdout);
  assert.ok(lines(r.stdout).includes("node 1 waited 10"), r.stdout);
});

P("test_early_stop: a peer's stop() ends node 0's run early", async () => {
  const r = await run("early_stop");
  assert.is(r.code, 0, r.stderr);
  const m = /node 0 totalStep (\d+)/.exec(r.stdout);
  assert.ok(m, r.stdout);
  assert.ok(Number(m![1]) < 20, `node 0 ran ${m![1]} steps`);
  assert.ok(lines(r.stdout).includes("node 1 totalStep 1"));
});

P("test_broadcast_finish: two launches joined by attachTo all end when node 1 finishes", async () => {
  const [pa, pb, pc] = await freePorts(3);
  const a = run("broadcast_finish", { nParallelWorkers: 1, protocol: "tcp", ports: pa, topology: "mesh" }, 20_000);
  const b = run("broadcast_finish", {
    nParallelWorkers: 2,
    protocol: "tcp",
    topology: "alone",
    ports: [pb, pc],
    attachTo: [`tcp://127.0.0.1:${pa}`],
    nodeIds: [1, 2],
  }, 20_000);
  const [ra, rb] = await Promise.all([a, b]);
  assert.is(ra.code, 0, ra.stderr);
  assert.is(rb.code, 0, rb.stderr);
  const steps = [...(ra.stdout + rb.stdout).matchAll(/node (\d) finished at step (\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  assert.equal(steps.map((s) => s[0]).sort(), [0, 1, 2]);
  for (const [node, step] of steps) assert.ok(step! < 100, `node ${node} ran ${step} steps`);
});

P("test_parallel_run: router topics over ipc and over tcp", async () => {
  for (const protocol of ["ipc", "tcp"]) {
    const r = await run("parallel_run", { protocol });
    assert.is(r.code, 0, r.stderr);
    assert.equal(lines(r.stdout).sort(), ["launcher done", "node 0 got ping", "node 1 got ping"], protocol);
  }
});

P("ipc with a TMPDIR too deep for socket paths: the launch puts its sockets in /tmp and works", async () => {
  // Before: each socket path was cut short by the kernel to the same name, so node 1 dialed itself.
  const { deep, done } = deepDir();
  try {
    const r = await run("parallel_run", { protocol: "ipc" }, 60_000, { TMPDIR: deep });
    assert.is(r.code, 0, r.stderr);
    assert.equal(lines(r.stdout).sort(), ["launcher done", "node 0 got ping", "node 1 got ping"]);
    assert.equal(readdirSync(deep), []);
  } finally {
    done();
  }
});

P("a plan too long for one environment variable (a TLS CA bundle over 128 KiB) reaches the workers through a file", async () => {
  // Before: spawning the workers failed with a bare "spawn E2BIG".
  const { cert, key } = selfSignedCert();
  const tls = { cert, key, ca: cert.repeat(Math.ceil(140_000 / cert.length)) };
  const dir = mkdtempSync(join(tmpdir(), "ditask-bigplan-test-"));
  try {
    const file = join(dir, "options.json");
    writeFileSync(file, JSON.stringify({ protocol: "tcp", tls }));
    const r = await runScript(scenarios, ["parallel_run", `@${file}`], { timeoutMs: 60_000 });
    assert.is(r.code, 0, r.stderr + r.stdout);
    assert.equal(lines(r.stdout).sort(), ["launcher done", "node 0 got ping", "node 1 got ping"]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

P("a worker that cannot be started (its environment is too large: E2BIG) fails the launch at once, naming it and why", async () => {
  const r = await run("big_env");
  assert.is(r.code, 3, r.stderr);
  assert.match(r.stdout, /launcher error WorkerExitError node=\d code=ERR_DITASK_WORKER_EXIT: Cannot start worker \d: \S/);
  assert.not.match(r.stdout, /started/);
});

P("a DITASK_WORKER that is no worker plan (left in a shell, or a plan file gone) fails with a clear error", async () => {
  const gone = `/tmp/ditask-test-no-such-plan-${process.pid}-${Date.now()}.json`;
  const cases: Array<[string, RegExp]> = [
    ["null", /not a JSON object/],
    ["[]", /not a JSON object/],
    ["{}", /Invalid nodeId undefined: expected an integer >= 0/],
    ['{"nodeId":0,"localId":0}', /mqType undefined is not ws, nng or redis/],
    ['{"nodeId":0,"localId":0,"mqType":"ws","listen":"tcp://127.0.0.1:0","dial":"x","expect":[],"labels":[]}', /Invalid dial "x": expected a list of strings/],
    ['{"nodeId":0,"localId":0,"mqType":"ws","listen":"tcp://127.0.0.1:0","dial":[],"expect":["1"],"labels":[]}', /Invalid expect \["1"\]/],
    ["{nope", /not JSON/],
    [`@${gone}`, new RegExp(`Cannot read the worker plan ${gone}`)],
  ];
  for (const [value, re] of cases) {
    const r = await run("payloads", { nParallelWorkers: 2 }, 30_000, { DITASK_WORKER: value });
    assert.is(r.code, 3, `${value}: ${r.stderr}`);
    const line = lines(r.stdout).find((l) => l.startsWith("launcher error")) ?? "";
    assert.match(line, /^launcher error DitaskError node=undefined code=ERR_DITASK_WORKER_ENV: /, value);
    assert.match(line, re, value);
    assert.not.match(r.stdout, /payload checks/, `${value}: main must not run`);
  }
});

P("a script that launches twice: each launch's workers run that launch's main", async () => {
  // Before: the workers of the second launch ran the first main (the first runner call they met).
  const r = await run("two_launches");
  assert.is(r.code, 0, r.stderr);
  const out = lines(r.stdout);
  const firstDone = out.indexOf("launch first done");
  assert.equal(out.slice(0, firstDone).sort(), ["first main on node 0", "first main on node 1"], r.stdout);
  // The second launch's workers re-ran the script: its first runner call returned at once there.
  assert.equal(out.filter((l) => l.includes(" main on ")).sort(), [
    "first main on node 0",
    "first main on node 1",
    "second main on node 0",
    "second main on node 1",
  ]);
  assert.is(out.at(-1), "launch second done");
});

P("main's arguments come from the launcher when CBOR carries them as they are; else each worker's own", async () => {
  // Before: each worker computed its own (here a different random seed in every process).
  const r = await run("args");
  assert.is(r.code, 0, r.stderr);
  const out = lines(r.stdout);
  const seed = out.find((l) => l.startsWith("launcher seed "))!.slice("launcher seed ".length);
  assert.equal(out.filter((l) => l.includes(" seed ") && l.startsWith("node")).sort(), [
    `node 0 seed ${seed} when true arr Float32Array 2.5`,
    `node 1 seed ${seed} when true arr Float32Array 2.5`,
  ]);
  // A class instance cannot be sent as it is: the workers use their own, methods and all.
  assert.equal(out.filter((l) => l.includes(" cfg ")).sort(), ["node 0 cfg twice 42", "node 1 cfg twice 42"]);
});

Plan("sendableArgs: what CBOR carries as it is", () => {
  const yes = [1, "s", null, undefined, 2n, NaN, [1, [2]], { a: { b: [new Date(0)] } }, new Map([[1, "x"]]), new Set([1]), new Float32Array(2), Object.create(null)];
  yes.forEach((v, i) => assert.ok(sendableArgs([v]), `yes[${i}]`));
  const shared = { x: 1 };
  const cyc: Record<string, unknown> = {};
  cyc.self = cyc;
  class K {}
  const no = [-0, () => 1, Symbol("s"), new K(), new DataView(new ArrayBuffer(1)), new ArrayBuffer(1), cyc, [shared, shared], { [Symbol("k")]: 1 }, new Error("e")];
  no.forEach((v, i) => assert.not.ok(sendableArgs([v]), `no[${i}]`));
});

/** A port p such that p, p+1 and p+2 are free on 127.0.0.1 (checked by binding them). */
async function threeFreePorts(): Promise<number> {
  const { createServer } = await import("node:net");
  const bindable = (port: number) =>
    new Promise<boolean>((resolve) => {
      const srv = createServer();
      srv.once("error", () => resolve(false));
      srv.listen(port, "127.0.0.1", () => srv.close(() => resolve(true)));
    });
  for (let i = 0; i < 20; i++) {
    const [p] = await freePorts(1);
    if (p! < 65000 && (await bindable(p! + 1)) && (await bindable(p! + 2))) return p!;
  }
  throw new Error("no three consecutive free ports");
}

if (runtimeKey === "node") {
  P("node --inspect on the launcher (flag or NODE_OPTIONS): each worker's inspector takes the next port", async () => {
    const { spawn } = await import("node:child_process");
    for (const via of ["flag", "NODE_OPTIONS"]) {
      const port = await threeFreePorts();
      const inspect = `--inspect=127.0.0.1:${port}`;
      const env: Record<string, string> = {};
      for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("DITASK_")) env[k] = v;
      if (via === "NODE_OPTIONS") env.NODE_OPTIONS = inspect;
      const argv = [...(via === "flag" ? [inspect] : []), scenarios, "parallel_run", JSON.stringify({ protocol: "tcp" })];
      const child = spawn(process.execPath, argv, { env });
      let out = "";
      let err = "";
      child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
      child.stderr.setEncoding("utf8").on("data", (d: string) => (err += d));
      try {
        const code = await withTimeout(new Promise<number | null>((r) => child.on("close", r)), 30_000, "launcher exit");
        assert.is(code, 0, err);
        assert.equal(lines(out).sort(), ["launcher done", "node 0 got ping", "node 1 got ping"], via);
        const listening = [...err.matchAll(/Debugger listening on ws:\/\/127\.0\.0\.1:(\d+)\//g)].map((m) => Number(m[1])).sort();
        assert.equal(listening, [port, port + 1, port + 2], `${via}: ${err}`);
        assert.not.match(err, /address already in use/, via);
      } finally {
        child.kill("SIGKILL");
      }
    }
  });
}

P("test_uncaught_exception: the runner rejects naming the node and the message; others stop", async () => {
  const t0 = Date.now();
  const r = await run("uncaught");
  assert.is(r.code, 3, r.stderr);
  assert.match(r.stdout, /launcher error WorkerExitError node=0 code=ERR_DITASK_WORKER_EXIT: Worker 0 failed: uncaught exception/);
  assert.ok(Date.now() - t0 < 15_000, "the waiting worker was stopped, not waited for");
});

P("test_disconnected: emits to a peer that left succeed without error", async () => {
  const r = await run("disconnected");
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 1 emitted 10 after disconnect, peers []"), r.stdout);
});

P("test_auto_recover: node 1 fails once, is re-run and talks to both peers", async () => {
  const r = await run("auto_recover", { nParallelWorkers: 3, autoRecover: true, maxRetries: 1 });
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 1 recovered after 1 retries and heard node 2"), r.stdout);
  assert.ok(lines(r.stdout).includes("node 0 heard recovered_p1 (1)"), r.stdout);
  const r0 = await run("auto_recover", { nParallelWorkers: 3, autoRecover: true, maxRetries: 0 });
  assert.is(r0.code, 3);
  assert.match(r0.stdout, /node=1 .*P1 Error/);
});

P("autoRecover restarts a worker process that died; it rejoins with the same node id", async () => {
  const r = await run("crash_restart", { autoRecover: true, maxRetries: 1 });
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 1 (retries 1) was welcomed back"), r.stdout);
  assert.ok(lines(r.stdout).includes("node 0 saw node 1 back after 1 restart(s)"), r.stdout);
});

P("without autoRecover a worker killed by a signal makes the runner reject naming node and signal", async () => {
  const r = await run("crash_restart");
  assert.is(r.code, 3);
  assert.match(r.stdout, /launcher error WorkerExitError node=1 code=ERR_DITASK_WORKER_EXIT: Worker 1 was killed by SIGKILL/);
});

P("topologies connect exactly the pairs they should", async () => {
  const mesh = await run("topology", { nParallelWorkers: 4, topology: "mesh" });
  assert.equal(lines(mesh.stdout).filter((l) => l.includes("peers")).sort(), [
    "node 0 peers [1,2,3]",
    "node 1 peers [0,2,3]",
    "node 2 peers [0,1,3]",
    "node 3 peers [0,1,2]",
  ]);
  const star = await run("topology", { nParallelWorkers: 4, topology: "star" });
  assert.equal(lines(star.stdout).filter((l) => l.includes("peers")).sort(), [
    "node 0 peers [1,2,3]",
    "node 1 peers [0]",
    "node 2 peers [0]",
    "node 3 peers [0]",
  ]);
  const alone = await run("topology", { nParallelWorkers: 2, topology: "alone" });
  assert.equal(lines(alone.stdout).filter((l) => l.includes("peers")).sort(), ["node 0 peers []", "node 1 peers []"]);
});

P("no loss under load: 3 workers x 20,000 events to a 4th arrive once and in order", async () => {
  const r = await run("load", { nParallelWorkers: 4, count: 20_000 }, 90_000);
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("node 0 got 60000 events, 0 out of order, per sender 20000,20000,20000"), r.stdout);
});

P("every SPEC payload type arrives with its type and values", async () => {
  const r = await run("payloads");
  assert.is(r.code, 0, r.stderr);
  assert.ok(lines(r.stdout).includes("payload checks 111111111111"), r.stdout);
});

/**
 * A Node launch and a Deno launch joined by attachTo: `dialer` is the runtime whose worker dials
 * the other's (node 1 dials node 0), over plain tcp or over wss. The two runtimes run different
 * WebSocket implementations (ws on Node, ditask's own on Deno), so both directions are checked.
 */
async function mixedRuntimes(dialer: "node" | "deno", tls: boolean): Promise<void> {
  const [p0, p1] = await freePorts(2);
  const scriptOf = {
    node: runtimeKey === "node" ? scenarios : scenarios.replace(/\.ts$/, ".js").replace("/tests/", "/.test-dist/tests/"),
    deno: runtimeKey === "deno" ? scenarios : scenarios.replace(/\.js$/, ".ts").replace("/.test-dist/tests/", "/tests/"),
  };
  const acceptor = dialer === "node" ? "deno" : "node";
  const tlsOptions = tls ? (({ cert, key }) => ({ tls: { cert, key, ca: cert } }))(selfSignedCert()) : {};
  const a = runScript(scriptOf[acceptor], ["mixed", JSON.stringify({ nParallelWorkers: 1, protocol: "tcp", ports: p0, nodeIds: 0, ...tlsOptions })], {
    runtime: acceptor,
    timeoutMs: 60_000,
  });
  const b = runScript(scriptOf[dialer], ["mixed", JSON.stringify({
    nParallelWorkers: 1,
    protocol: "tcp",
    ports: p1,
    nodeIds: 1,
    attachTo: [`${tls ? "wss" : "tcp"}://127.0.0.1:${p0}`],
    ...tlsOptions,
  })], { runtime: dialer, timeoutMs: 60_000 });
  const [ra, rb] = await Promise.all([a, b]);
  assert.is(ra.code, 0, ra.stderr);
  assert.is(rb.code, 0, rb.stderr);
  // Deno sends a Float16Array, which Node 20 (no such class) receives as a Float32Array; Node 20
  // sends a Float32Array. (Node 24 has Float16Array.)
  const got = (id: number, self: string, from: string) =>
    new RegExp(`^node ${id} \\(${self}\\) got hello from ${from} intact=true half=Float(32|16)Array:1.5,-2,65504$`);
  assert.ok(lines(ra.stdout).some((l) => got(0, acceptor, dialer).test(l)), ra.stdout);
  assert.ok(lines(rb.stdout).some((l) => got(1, dialer, acceptor).test(l)), rb.stdout);
}

P("mixed runtimes: a Deno worker dials a Node worker; a 1M Float32Array both ways, and a Float16Array from Deno", () => mixedRuntimes("deno", false));

P("mixed runtimes over wss: a Node worker dials a Deno worker (rustls serving, ws dialing)", () => mixedRuntimes("node", true));

/** Start the "hang" scenario (two workers that wait); resolves once both printed their PIDs. */
async function startHang() {
  const { spawnScript } = await import("../lib/runtime.ts");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("DITASK_")) env[k] = v;
  const child = spawnScript(scenarios, ["hang", JSON.stringify({ nParallelWorkers: 2 })], { env, stdio: "pipe" });
  let out = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  const pids = () => [...out.matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
  try {
    await until(() => pids().length === 2, "workers up", 20_000);
  } catch (err) {
    child.kill("SIGKILL");
    throw err;
  }
  const dirs = [...new Set([...out.matchAll(/ dir (\S+)/g)].map((m) => m[1]!))];
  assert.is(dirs.length, 1, out);
  assert.ok(existsSync(dirs[0]!), `the run directory ${dirs[0]} exists while the workers run`);
  return { child, exited, pids: pids(), dir: dirs[0]! };
}

P("SIGTERM on the launcher ends every worker and removes the run directory", async () => {
  const { child, exited, pids, dir } = await startHang();
  try {
    child.kill("SIGTERM");
    const code = await withTimeout(exited, 10_000, "launcher exit");
    // Deno's child_process reports a child that handled SIGTERM and exited 143 as (null, SIGTERM).
    if (runtimeKey === "node") assert.is(code, 143);
    await until(() => pids.every((p) => !alive(p)), "workers gone", 10_000);
    assert.not.ok(existsSync(dir), `the run directory ${dir} is left behind`);
  } finally {
    child.kill("SIGKILL");
  }
});

P("a launcher whose output loses its reader (ditask ... | head) stops its workers, removes its run directory and exits 141", async () => {
  const { spawnScript } = await import("../lib/runtime.ts");
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("DITASK_")) env[k] = v;
  const child = spawnScript(scenarios, ["chatter", JSON.stringify({ nParallelWorkers: 2, outputPrefix: true })], { env, stdio: "pipe" });
  let out = "";
  let err = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  const pids = () => [...out.matchAll(/pid (\d+)/g)].map((m) => Number(m[1]));
  try {
    await until(() => pids().length === 2, "workers up", 20_000);
    const ps = pids();
    const dir = /dir (\S+)/.exec(out)![1]!;
    // The reader goes away, as head does once it has its lines; the workers keep printing.
    child.stdout!.destroy();
    const code = await withTimeout(exited, 15_000, "launcher exit");
    assert.is(code, 141, err);
    assert.not.match(err, /Unhandled|Uncaught|EPIPE\n\s+at /, err);
    assert.match(err, /the output has no reader any more \(EPIPE\): all workers stopped/);
    await until(() => ps.every((p) => !alive(p)), "workers gone", 10_000);
    assert.not.ok(existsSync(dir), `the run directory ${dir} is left behind`);
  } finally {
    child.kill("SIGKILL");
    for (const p of pids()) if (alive(p)) process.kill(p, "SIGKILL");
  }
});

P("SIGKILL on the launcher: the workers notice, remove its run directory and exit", async () => {
  const { child, pids, dir } = await startHang();
  try {
    child.kill("SIGKILL");
    await until(() => pids.every((p) => !alive(p)), "workers gone", 10_000);
    assert.not.ok(existsSync(dir), `the run directory ${dir} (ipc sockets, error files) is left behind`);
  } finally {
    for (const p of pids) if (alive(p)) process.kill(p, "SIGKILL");
  }
});

P("a lone tcp worker runs in the launcher's process and makes no run directory", async () => {
  const { spawnScript } = await import("../lib/runtime.ts");
  const tmp = mkdtempSync(join(tmpdir(), "ditask-lone-test-"));
  const env: Record<string, string> = { TMPDIR: tmp };
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("DITASK_") && k !== "TMPDIR") env[k] = v;
  const child = spawnScript(scenarios, ["hang", JSON.stringify({ nParallelWorkers: 1, protocol: "tcp" })], { env, stdio: "pipe" });
  let out = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (out += d));
  try {
    await until(() => /pid \d+/.test(out), "worker up", 20_000);
    // Nothing a SIGKILL could leave behind.
    assert.equal(readdirSync(tmp).filter((f) => f.startsWith("ditask-")), [], out);
  } finally {
    child.kill("SIGKILL");
    rmSync(tmp, { recursive: true, force: true });
  }
});

Plan.run();
P.run();
