// The benchmark's conductor: starts the child processes of each test (same runtime, or both with
// --both), waits until they are connected, starts the measurement, collects the numbers, stops
// every child, and hands the results to report.ts.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import process from "node:process";
import { MARK, type Report, repoRoot, type StreamSpec } from "./control.ts";
import type { BareSpec } from "./bare_roles.ts";
import type { MeshSpec } from "./mesh_roles.ts";
import type { LaunchSpec } from "./launch_role.ts";
import { buildMetrics, type Metric, printReport, type RunResult, type Results, writeResults } from "./report.ts";

export type RuntimeName = "node" | "deno";

interface Runtime {
  name: RuntimeName;
  cmd: string;
  /** Arguments before `--role`. */
  args: string[];
}

interface Options {
  quick: boolean;
  json: string | undefined;
  both: boolean;
  only: Set<string> | undefined;
  cpuProf: string | undefined;
  verbose: boolean;
  waitQuiet: number;
  /** Fresh-process repetitions of each stream, round-trip and 4-node measurement (median kept). */
  repeat: number | undefined;
}

const ALL_TESTS = ["s64", "s1k", "s64k", "s4m", "rtt", "mesh4", "launch", "slow"];
const ROOT = repoRoot();
const current: RuntimeName = (globalThis as { Deno?: unknown }).Deno ? "deno" : "node";

// ------------------------------------------------------------------ child processes

/** Every process id a child told us about (its own, Parallel workers): killed at the end if alive. */
const knownPids = new Set<number>();
const live = new Set<Child>();
/** Where the children write CPU profiles (--cpu-prof), with processes.txt naming each PID, if anywhere. */
let profDir: string | undefined;

/** Whether `pid` is alive and (where /proc tells) still one of ours: a process running bench. */
function aliveAndOurs(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("bench");
  } catch {
    return true; // no /proc: trust the pid
  }
}

/** Busy and total CPU ticks of the whole machine (Linux /proc/stat), or null elsewhere. */
function machineTicks(): { busy: number; total: number } | null {
  try {
    const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
    const busy = user + nice + system + irq + softirq + steal;
    return { busy, total: busy + idle + iowait };
  } catch {
    return null;
  }
}

/** CPU ticks (user + system) a live process has used (Linux /proc/<pid>/stat), or 0. */
function pidTicks(pid: number): number {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
    return Number(f[11]) + Number(f[12]);
  } catch {
    return 0;
  }
}

/** The share of the machine's CPU (0-1) that other processes used during the last test. */
let lastBackground: number | null = null;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

class Child {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  #queue: Report[] = [];
  #waiters: Array<{ type: string; resolve: (r: Report) => void; reject: (e: Error) => void }> = [];
  #tail: string[] = [];
  #exit: number | null | undefined = undefined;
  #failure: Error | undefined;

  constructor(rt: Runtime, name: string, role: string, spec: unknown, verbose: boolean) {
    this.name = `${rt.name}:${name}`;
    this.proc = spawn(rt.cmd, [...rt.args, "--role", role, JSON.stringify(spec)], {
      cwd: ROOT,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, DITASK_LOG: process.env.DITASK_LOG ?? "error" },
    });
    if (this.proc.pid !== undefined) knownPids.add(this.proc.pid);
    if (profDir) appendFileSync(join(profDir, "processes.txt"), `${this.proc.pid} ${this.name} ${JSON.stringify(spec)}\n`);
    live.add(this);
    this.proc.stdin!.on("error", () => {});
    const keep = (line: string) => {
      this.#tail.push(line);
      if (this.#tail.length > 40) this.#tail.shift();
      if (verbose) process.stderr.write(`[${this.name}] ${line}\n`);
    };
    let rest = "";
    this.proc.stdout!.setEncoding("utf8");
    this.proc.stdout!.on("data", (chunk: string) => {
      const lines = (rest + chunk).split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        const at = line.indexOf(MARK);
        if (at < 0) {
          if (line !== "") keep(line);
          continue;
        }
        let r: Report;
        try {
          r = JSON.parse(line.slice(at + MARK.length)) as Report;
        } catch {
          keep(line);
          continue;
        }
        this.#onReport(r);
      }
    });
    let errRest = "";
    this.proc.stderr!.setEncoding("utf8");
    this.proc.stderr!.on("data", (chunk: string) => {
      const lines = (errRest + chunk).split("\n");
      errRest = lines.pop()!;
      for (const l of lines) if (l !== "") keep(l);
    });
    this.exited = new Promise((resolve) => {
      this.proc.once("error", (err) => {
        this.#fail(new Error(`${this.name}: cannot start ${rt.cmd}: ${err.message}`));
        this.#exit = null;
        live.delete(this);
        resolve(null);
      });
      this.proc.once("exit", (code, signal) => {
        this.#exit = code;
        live.delete(this);
        this.#fail(new Error(`${this.name} exited (${signal ?? code}) before reporting${this.#describeTail()}`));
        resolve(code);
      });
    });
  }

  #describeTail(): string {
    return this.#tail.length ? `; its last output:\n    ${this.#tail.slice(-12).join("\n    ")}` : "";
  }

  #onReport(r: Report): void {
    if (r.type === "pid" && typeof r.pid === "number") knownPids.add(r.pid);
    if (r.type === "error") {
      this.#fail(new Error(`${this.name} failed: ${String(r.message)}`));
      return;
    }
    const i = this.#waiters.findIndex((w) => w.type === r.type);
    if (i >= 0) this.#waiters.splice(i, 1)[0]!.resolve(r);
    else this.#queue.push(r);
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }

  /** The next report of `type` (queued or future). */
  next(type: string, ms = 30_000): Promise<Report> {
    const i = this.#queue.findIndex((r) => r.type === type);
    if (i >= 0) return Promise.resolve(this.#queue.splice(i, 1)[0]!);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      const w = {
        type,
        resolve: (r: Report) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const at = this.#waiters.indexOf(w);
        if (at >= 0) this.#waiters.splice(at, 1);
        reject(new Error(`${this.name}: no "${type}" report within ${ms} ms${this.#describeTail()}`));
      }, ms);
      this.#waiters.push(w);
    });
  }

  send(cmd: Record<string, unknown>): void {
    if (this.#exit === undefined) this.proc.stdin!.write(JSON.stringify(cmd) + "\n");
  }

  /** Ask the child to quit; kill it (by pid) if it has not exited after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.#exit !== undefined) return;
    this.send({ cmd: "quit" });
    await Promise.race([this.exited, sleep(graceMs)]);
    if (this.#exit === undefined && this.proc.pid !== undefined) {
      try {
        process.kill(this.proc.pid, "SIGKILL");
      } catch {
        // gone already
      }
      await Promise.race([this.exited, sleep(1000)]);
    }
  }
}

/** Kill (SIGKILL, by pid) every process we started or were told about that is still alive. */
export async function killAll(): Promise<number> {
  await Promise.all([...live].map((c) => c.stop(500)));
  let killed = 0;
  for (const pid of knownPids) {
    if (pid !== process.pid && aliveAndOurs(pid)) {
      try {
        process.kill(pid, "SIGKILL");
        killed++;
      } catch {
        // gone
      }
    }
  }
  return killed;
}

/** Run `fn` with a spawner; every child it spawned is stopped afterwards, whatever happens. */
async function withChildren<T>(
  rt: Runtime,
  opts: Options,
  fn: (spawnChild: (name: string, role: string, spec: unknown) => Child) => Promise<T>,
): Promise<T> {
  const kids: Child[] = [];
  const t0 = machineTicks();
  const self0 = pidTicks(process.pid);
  let ours = 0;
  try {
    return await fn((name, role, spec) => {
      const c = new Child(rt, name, role, spec, opts.verbose);
      kids.push(c);
      return c;
    });
  } finally {
    // Our children's CPU time, read while they are alive (plus Parallel workers still running).
    for (const pid of new Set([...kids.map((k) => k.proc.pid ?? 0), ...knownPids])) if (pid && pid !== process.pid) ours += pidTicks(pid);
    ours += pidTicks(process.pid) - self0;
    const t1 = machineTicks();
    await Promise.all(kids.map((k) => k.stop()));
    lastBackground = t0 && t1 && t1.total > t0.total ? Math.max(0, (t1.busy - t0.busy - ours) / (t1.total - t0.total)) : null;
  }
}

// ------------------------------------------------------------------ test parameters

interface Plan {
  /** How often each stream, round-trip and 4-node measurement runs, each time in fresh processes. */
  repeat: number;
  streams: Array<{ id: string; label: string; spec: StreamSpec }>;
  rtt: { size: number; warm: number; count: number; ms: number };
  /** `ms`: the senders' own time limit; the orchestrator measures `measureMs` after `warmMs`. */
  mesh4: { size: number; ms: number; warmMs: number; measureMs: number; window: number; ackEvery: number };
  launch: { n: number; repeat: number; idleMs: number };
  slow: { size: number; total: number; slowMs: number };
  idleMs: number;
}

function plan(quick: boolean, repeat: number | undefined): Plan {
  const ms = quick ? 400 : 3000;
  const s = (kind: "bytes" | "f32", size: number, warm: number, qwarm: number, window: number, ackEvery: number): StreamSpec => ({
    kind,
    size,
    count: quick ? 200_000_000 / Math.max(size, 256) : 4_000_000_000 / Math.max(size, 1024),
    ms,
    warm: quick ? qwarm : warm,
    window,
    ackEvery,
  });
  return {
    repeat: repeat ?? (quick ? 1 : 5),
    streams: [
      { id: "s64", label: "64 B events", spec: s("bytes", 64, 30_000, 5_000, 65_536, 8_192) },
      { id: "s1k", label: "1 KiB events", spec: s("bytes", 1024, 20_000, 3_000, 16_384, 2_048) },
      { id: "s64k", label: "64 KiB events", spec: s("bytes", 65_536, 1_000, 100, 256, 32) },
      { id: "s4m", label: "4 MiB Float32Array", spec: s("f32", 4 * 1048576, 10, 3, 6, 1) },
    ],
    rtt: { size: 64, warm: quick ? 300 : 2_000, count: quick ? 3_000 : 30_000, ms: quick ? 400 : 2_500 },
    mesh4: quick
      ? { size: 64, ms: 15_000, warmMs: 300, measureMs: 500, window: 16_384, ackEvery: 2_048 }
      : { size: 64, ms: 20_000, warmMs: 700, measureMs: 3_000, window: 16_384, ackEvery: 2_048 },
    launch: { n: 8, repeat: quick ? 1 : 3, idleMs: quick ? 200 : 500 },
    slow: { size: 4 * 1048576, total: quick ? 12 : 40, slowMs: 40 },
    idleMs: quick ? 200 : 500,
  };
}

// ------------------------------------------------------------------ tests

type Side = "bare" | "mesh";

export interface StreamOut {
  perSec: number | null;
  mbPerSec: number | null;
  received: number;
  sent: number;
  measured: number;
  ms: number;
  bad: number;
  rssPeakSend: number | null;
  rssPeakRecv: number | null;
  /** CPU time per event after the warm-up, in µs, of the sending and the receiving process. */
  cpuSend: number | null;
  cpuRecv: number | null;
  idleRss?: { send: number; recv: number };
  /** With repetitions: every run's events/s, in order (this object is the median run). */
  samples?: number[];
}

async function streamTest(rt: Runtime, opts: Options, side: Side, s: StreamSpec, idleMs: number): Promise<StreamOut> {
  return withChildren(rt, opts, async (spawnChild) => {
    let recv: Child;
    let send: Child;
    if (side === "bare") {
      recv = spawnChild("bare-recv", "bare", { role: "server", mode: "stream", stream: s } satisfies BareSpec);
      const { port } = await recv.next("listening");
      send = spawnChild("bare-send", "bare", { role: "client", port: port as number, mode: "stream", stream: s } satisfies BareSpec);
    } else {
      recv = spawnChild("mesh-recv", "mesh", { id: 0, dial: [], expect: [1], mode: "recv", stream: s } satisfies MeshSpec);
      const { address } = await recv.next("bound");
      send = spawnChild("mesh-send", "mesh", { id: 1, dial: [address as string], expect: [0], mode: "send", stream: s } satisfies MeshSpec);
    }
    await Promise.all([recv.next("ready"), send.next("ready")]);
    let idleRss: StreamOut["idleRss"];
    if (idleMs > 0) {
      await sleep(idleMs);
      recv.send({ cmd: "rss" });
      send.send({ cmd: "rss" });
      const [r, t] = await Promise.all([recv.next("rss"), send.next("rss")]);
      idleRss = { recv: r.rss as number, send: t.rss as number };
    }
    send.send({ cmd: "go" });
    const res = await recv.next("result", s.ms + 60_000);
    const sent = await send.next("sent", 10_000);
    const perSec = res.perSec as number | null;
    const out: StreamOut = {
      perSec,
      mbPerSec: perSec === null ? null : (perSec * s.size) / 1e6,
      received: res.received as number,
      sent: sent.sent as number,
      measured: res.measured as number,
      ms: res.ms as number,
      bad: res.bad as number,
      rssPeakSend: (sent.rssPeak as number | undefined) ?? null,
      rssPeakRecv: (res.rssPeak as number | undefined) ?? null,
      cpuSend: (sent.cpuPerMessage as number | null | undefined) ?? null,
      cpuRecv: (res.cpuPerMessage as number | null | undefined) ?? null,
    };
    if (idleRss) out.idleRss = idleRss;
    if (out.received !== out.sent) throw new Error(`${side}: ${out.sent} sent but ${out.received} received`);
    if (out.bad > 0) throw new Error(`${side}: ${out.bad} messages arrived wrong (size or Float32Array content)`);
    return out;
  });
}

export interface RttOut {
  n: number;
  p50: number;
  p99: number;
  /** With repetitions: every run's p50, in order (this object is the median run). */
  samples?: number[];
}

async function rttTest(rt: Runtime, opts: Options, side: Side, p: Plan["rtt"]): Promise<RttOut> {
  return withChildren(rt, opts, async (spawnChild) => {
    let server: Child;
    let client: Child;
    if (side === "bare") {
      server = spawnChild("bare-echo", "bare", { role: "server", mode: "echo" } satisfies BareSpec);
      const { port } = await server.next("listening");
      client = spawnChild("bare-ping", "bare", { role: "client", port: port as number, mode: "ping", ...p } satisfies BareSpec);
    } else {
      server = spawnChild("mesh-echo", "mesh", { id: 0, dial: [], expect: [1], mode: "echo" } satisfies MeshSpec);
      const { address } = await server.next("bound");
      client = spawnChild("mesh-ping", "mesh", { id: 1, dial: [address as string], expect: [0], mode: "ping", ...p } satisfies MeshSpec);
    }
    await Promise.all([server.next("ready"), client.next("ready")]);
    client.send({ cmd: "go" });
    const r = await client.next("result", p.ms + 30_000);
    return { n: r.n as number, p50: r.p50 as number, p99: r.p99 as number };
  });
}

export interface Mesh4Out {
  perSec: number;
  perNode: number[];
  /** CPU time of all nodes per delivered event, in µs. */
  cpuPerEvent: number | null;
  /** With repetitions: every run's delivered events/s, in order (this object is the median run). */
  samples?: number[];
}

async function mesh4Test(rt: Runtime, opts: Options, side: Side, p: Plan["mesh4"]): Promise<Mesh4Out> {
  const n = 4;
  return withChildren(rt, opts, async (spawnChild) => {
    const nodes: Child[] = [];
    if (side === "bare") {
      const ports: number[] = [];
      for (let id = 0; id < n; id++) {
        nodes.push(spawnChild(`bare-node${id}`, "bare", { role: "node", id, size: p.size, ms: p.ms, window: p.window, ackEvery: p.ackEvery } satisfies BareSpec));
      }
      for (const c of nodes) ports.push((await c.next("listening")).port as number);
      nodes.forEach((c, id) => c.send({ cmd: "peers", ports: ports.filter((_, j) => j !== id) }));
    } else {
      const addresses: string[] = [];
      for (let id = 0; id < n; id++) {
        const expect = Array.from({ length: n }, (_, j) => j).filter((j) => j !== id);
        const c = spawnChild(`mesh-node${id}`, "mesh", {
          id,
          dial: [...addresses],
          expect,
          mode: "bcast",
          size: p.size,
          ms: p.ms,
          window: p.window,
          ackEvery: p.ackEvery,
        } satisfies MeshSpec);
        nodes.push(c);
        addresses.push((await c.next("bound")).address as string);
      }
    }
    await Promise.all(nodes.map((c) => c.next("ready")));
    for (const c of nodes) c.send({ cmd: "go" });
    await sleep(p.warmMs);
    const marks = async () => {
      for (const c of nodes) c.send({ cmd: "mark" });
      return Promise.all(nodes.map((c) => c.next("mark", 20_000)));
    };
    const m1 = await marks();
    await sleep(p.measureMs);
    const m2 = await marks();
    for (const c of nodes) c.send({ cmd: "stop" });
    const perNode = nodes.map((_, i) => {
      const dn = (m2[i]!.n as number) - (m1[i]!.n as number);
      const dt = (m2[i]!.t as number) - (m1[i]!.t as number);
      return dt > 0 ? (dn * 1000) / dt : 0;
    });
    const delivered = nodes.reduce((a, _, i) => a + (m2[i]!.n as number) - (m1[i]!.n as number), 0);
    const cpu = nodes.reduce((a, _, i) => a + (m2[i]!.cpu as number) - (m1[i]!.cpu as number), 0);
    return { perSec: perNode.reduce((a, b) => a + b, 0), perNode, cpuPerEvent: delivered > 0 ? cpu / delivered : null };
  });
}

export interface LaunchOut {
  /** Median over the repeats: runner call to all workers running main, in ms. */
  ms: number;
  runs: number[];
  /** Median over the repeats: spawning the launcher process to all running main, in ms. */
  fromSpawnMs: number;
  /** Medians over workers of the last repeat, in ms: runner call to process start, boot, import, connect. */
  phases: { spawn: number; boot: number; load: number; connect: number };
  workerRss: number[];
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function launchTest(rt: Runtime, opts: Options, p: Plan["launch"]): Promise<LaunchOut> {
  const runs: number[] = [];
  const fromSpawn: number[] = [];
  let phases = { spawn: NaN, boot: NaN, load: NaN, connect: NaN };
  let workerRss: number[] = [];
  for (let i = 0; i < p.repeat; i++) {
    await withChildren(rt, opts, async (spawnChild) => {
      const tSpawn = Date.now();
      const launcher = spawnChild("launch8", "launch", { n: p.n, idleMs: p.idleMs, timeoutMs: 20_000 } satisfies LaunchSpec);
      const t0 = (await launcher.next("t0")).t as number;
      const up = await launcher.next("all-up", 40_000);
      const ws = up.workers as Array<{ origin: number; script: number; loaded: number; main: number }>;
      const last = Math.max(...ws.map((w) => w.main));
      runs.push(last - t0);
      fromSpawn.push(last - tSpawn);
      phases = {
        spawn: median(ws.map((w) => w.origin - t0)),
        boot: median(ws.map((w) => w.script - w.origin)),
        load: median(ws.map((w) => w.loaded - w.script)),
        connect: median(ws.map((w) => w.main - w.loaded)),
      };
      workerRss = (await launcher.next("worker-rss", 30_000)).rss as number[];
      await launcher.next("launcher-done", 30_000);
      await launcher.exited;
    });
  }
  return { ms: median(runs), runs, fromSpawnMs: median(fromSpawn), phases, workerRss };
}

export interface SlowOut {
  baseRss: number;
  peakRss: number;
  endRss: number;
  growth: number;
  sentMiB: number;
  sendMs: number;
  totalMs: number;
  endArrayBuffers: number;
}

async function slowTest(rt: Runtime, opts: Options, side: Side, p: Plan["slow"]): Promise<SlowOut> {
  const timeoutMs = p.total * p.slowMs * 3 + 10_000;
  return withChildren(rt, opts, async (spawnChild) => {
    let recv: Child;
    let send: Child;
    if (side === "bare") {
      recv = spawnChild("bare-slow", "bare", { role: "server", mode: "slow", total: p.total, slowMs: p.slowMs } satisfies BareSpec);
      const { port } = await recv.next("listening");
      send = spawnChild("bare-flood", "bare", { role: "client", port: port as number, mode: "flood", size: p.size, total: p.total, timeoutMs } satisfies BareSpec);
    } else {
      recv = spawnChild("mesh-slow", "mesh", { id: 0, dial: [], expect: [1], mode: "slow", total: p.total, slowMs: p.slowMs } satisfies MeshSpec);
      const { address } = await recv.next("bound");
      send = spawnChild("mesh-flood", "mesh", { id: 1, dial: [address as string], expect: [0], mode: "flood", size: p.size, total: p.total, timeoutMs } satisfies MeshSpec);
    }
    await Promise.all([recv.next("ready"), send.next("ready")]);
    send.send({ cmd: "go" });
    const r = await send.next("result", timeoutMs + 10_000);
    const base = r.base as { rss: number };
    const end = r.end as { rss: number; arrayBuffers: number };
    return {
      baseRss: base.rss,
      peakRss: r.peak as number,
      endRss: end.rss,
      growth: (r.peak as number) - base.rss,
      sentMiB: ((r.sent as number) * p.size) / 1048576,
      sendMs: r.sentMs as number,
      totalMs: r.ms as number,
      endArrayBuffers: end.arrayBuffers,
    };
  });
}

// ------------------------------------------------------------------ one runtime

function runtimeOf(name: RuntimeName, opts: Options): Runtime {
  // Node and Deno take the same flags for V8 CPU profiles.
  const prof = opts.cpuProf ? ["--cpu-prof", `--cpu-prof-dir=${resolve(opts.cpuProf)}`] : [];
  if (name === "node") {
    const script = join(ROOT, "dist", "bench", "bench.js");
    if (!existsSync(script)) throw new Error(`${script} is missing: build first (npm run build)`);
    return { name, cmd: current === "node" ? process.execPath : "node", args: [...prof, script] };
  }
  const local = join(ROOT, "node_modules", "deno", "deno");
  const cmd = current === "deno" ? process.execPath : process.env.DITASK_DENO ?? (existsSync(local) ? local : "deno");
  return { name, cmd, args: ["run", ...prof, "-A", join(ROOT, "bench", "bench.ts")] };
}

/** --wait-quiet: wait up to this many seconds before each test for the machine to be quiet. */
let waitQuietS = 0;

/** The share of the machine's CPU in use over the next `ms` (none of it ours: no child runs). */
async function busyNow(ms: number): Promise<number | null> {
  const a = machineTicks();
  await sleep(ms);
  const b = machineTicks();
  return a && b && b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : null;
}

async function waitQuiet(): Promise<void> {
  if (waitQuietS <= 0) return;
  const until = Date.now() + waitQuietS * 1000;
  let said = false;
  for (;;) {
    const busy = await busyNow(1000);
    if (busy === null || busy < 0.15 || Date.now() >= until) return;
    if (!said) progress(`(waiting for a quiet machine: ${(busy * 100).toFixed(0)}% busy) `);
    said = true;
  }
}

/**
 * Run one measurement of `suite`'s runtime: a failure goes into its errors; the share of the
 * machine's CPU that other processes used meanwhile (0-1) into its `raw.background`, by label.
 */
async function attempt<T>(label: string, suite: Suite, fn: () => Promise<T>): Promise<T | null> {
  const background = (suite.raw.background ??= {});
  if (label !== "info") await waitQuiet();
  lastBackground = null;
  try {
    const r = await fn();
    // The launch test's workers have exited before their CPU time can be read: not measurable.
    if (label === "launch") lastBackground = null;
    // Repeated measurements share a label: keep the busiest repetition's figure.
    const prev = background[label];
    background[label] = prev === undefined || prev === null || (lastBackground !== null && lastBackground > prev) ? lastBackground : prev;
    if (lastBackground !== null && label !== "info") progress(`[others ${(lastBackground * 100).toFixed(0)}% CPU] `);
    return r;
  } catch (err) {
    const msg = `${label}: ${(err as Error).message}`;
    suite.errors.push(msg);
    process.stderr.write(`  ! ${msg}\n`);
    return null;
  }
}

function progress(msg: string): void {
  process.stderr.write(msg);
}

/** What `bothSides` keeps of a side: its median run, plus every run's figure in `samples`. */
type Repeated<T> = T & { samples?: number[] };

/** One runtime's part of a run: its children's runtime, its results so far, its problems. */
interface Suite {
  name: RuntimeName;
  rt: Runtime;
  /** Its results so far; `raw.background` is filled by {@link attempt}. */
  raw: RunResult["raw"];
  errors: string[];
}

/**
 * Measure bare ws and the mesh `n` times each on every runtime of `suites`, every time in fresh
 * processes, alternating the sides and (with --both) the runtimes within each repetition, so that
 * a slow spell of the machine (or a process that drew an unlucky heap layout) decides neither a
 * mesh/bare ratio nor a Deno/Node ratio alone. Each side keeps its median run by `key`; `samples`
 * lists every run's `key` in order. A failed run is reported in its suite's `errors` and left out
 * of the median.
 */
async function bothSides<T extends object>(
  n: number,
  label: string,
  suites: Suite[],
  measure: (rt: Runtime, side: Side) => Promise<T>,
  f: { key: (r: T) => number; show: (r: T) => string },
): Promise<Array<{ bare: Repeated<T> | null; mesh: Repeated<T> | null }>> {
  const runs = suites.map(() => ({ bare: [] as T[], mesh: [] as T[] }));
  for (let i = 0; i < n; i++) {
    for (const [k, suite] of suites.entries()) {
      const which = suites.length > 1 ? ` (${suite.name})` : "";
      progress(`  ${label}${which}${n > 1 ? ` [${i + 1}/${n}]` : ""}:`);
      for (const side of ["bare", "mesh"] as const) {
        progress(` ${side} `);
        const r = await attempt(`${label} (${side})`, suite, () => measure(suite.rt, side));
        if (r) runs[k]![side].push(r);
        progress(r ? f.show(r) : "failed");
        if (side === "bare") progress(" ·");
      }
      progress("\n");
    }
  }
  const pick = (rs: T[]): Repeated<T> | null => {
    const ok = rs.filter((r) => Number.isFinite(f.key(r)));
    if (ok.length === 0) return rs[0] ?? null;
    const mid = [...ok].sort((a, b) => f.key(a) - f.key(b))[(ok.length - 1) >> 1]!;
    return { ...mid, samples: rs.map(f.key) };
  };
  return runs.map((r) => ({ bare: pick(r.bare), mesh: pick(r.mesh) }));
}

/** Run every test on each runtime of `names`, the runtimes taking turns within each test. */
async function runSuites(names: RuntimeName[], opts: Options, p: Plan): Promise<RunResult[]> {
  const want = (id: string) => !opts.only || opts.only.has(id);
  const t0 = Date.now();
  const suites: Suite[] = [];
  const infos: Array<Record<string, unknown> | null> = [];
  for (const name of names) {
    const rt = runtimeOf(name, opts);
    progress(`\n== ${name}: ${rt.cmd} ${rt.args.join(" ")}\n`);
    const suite: Suite = { name, rt, raw: { streams: {} }, errors: [] };
    infos.push(
      await attempt("info", suite, () =>
        withChildren(rt, opts, async (sp) => {
          const c = sp("info", "info", {});
          const r = await c.next("info", 30_000);
          delete (r as { type?: string }).type;
          return r as Record<string, unknown>;
        })),
    );
    suites.push(suite);
  }
  if (names.length > 1) progress(`\n== ${names.join(" and ")}, taking turns in every repetition\n`);
  let first = true;
  for (const st of p.streams) {
    if (!want(st.id)) continue;
    const idleMs = first ? p.idleMs : 0;
    const pairs = await bothSides(p.repeat, st.label, suites, (rt, side) => streamTest(rt, opts, side, st.spec, idleMs), {
      key: (r) => r.perSec ?? NaN,
      show: (r) => `${fmtNum(r.perSec)} ev/s, ${fmtNum(r.mbPerSec)} MB/s`,
    });
    first = false;
    pairs.forEach((pair, k) => {
      suites[k]!.raw.streams[st.id] = { label: st.label, size: st.spec.size, bare: pair.bare, mesh: pair.mesh };
    });
  }
  if (want("rtt")) {
    const pairs = await bothSides(p.repeat, "round trip 64 B", suites, (rt, side) => rttTest(rt, opts, side, p.rtt), {
      key: (r) => r.p50,
      show: (r) => `p50 ${r.p50.toFixed(1)} µs, p99 ${r.p99.toFixed(1)} µs`,
    });
    pairs.forEach((pair, k) => (suites[k]!.raw.rtt = pair));
  }
  if (want("mesh4")) {
    const pairs = await bothSides(p.repeat, "4 nodes broadcasting 64 B", suites, (rt, side) => mesh4Test(rt, opts, side, p.mesh4), {
      key: (r) => r.perSec,
      show: (r) => `${fmtNum(r.perSec)} delivered ev/s`,
    });
    pairs.forEach((pair, k) => (suites[k]!.raw.mesh4 = pair));
  }
  for (const suite of suites) {
    const { rt, raw } = suite;
    const which = suites.length > 1 ? ` (${suite.name})` : "";
    if (want("launch")) {
      progress(`  Parallel.runner, ${p.launch.n} workers${which} (x${p.launch.repeat})... `);
      raw.launch = await attempt("launch", suite, () => launchTest(rt, opts, p.launch));
      progress(raw.launch ? `${raw.launch.runs.map((v) => v.toFixed(0)).join(", ")} ms\n` : "failed\n");
    }
    if (want("slow")) {
      raw.slow = { bare: null, mesh: null };
      for (const side of ["bare", "mesh"] as const) {
        progress(`  slow receiver${which}, ${side}... `);
        raw.slow[side] = await attempt(`slow receiver (${side})`, suite, () => slowTest(rt, opts, side, p.slow));
        const r = raw.slow[side];
        progress(r ? `sender RSS +${r.growth.toFixed(0)} MiB while sending ${r.sentMiB.toFixed(0)} MiB\n` : "failed\n");
      }
    }
  }
  const killed = await killAll();
  if (killed > 0) suites[0]!.errors.push(`${killed} stray process(es) had to be killed`);
  return suites.map((suite, k) => ({
    runtime: suite.name,
    date: new Date().toISOString(),
    seconds: (Date.now() - t0) / 1000,
    info: infos[k] ?? {},
    raw: suite.raw,
    metrics: [] as Metric[],
    errors: suite.errors,
  }));
}

export function fmtNum(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (Math.abs(v) >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
  if (Math.abs(v) >= 100) return v.toFixed(0);
  return v.toFixed(1);
}

// ------------------------------------------------------------------ main

function parseArgs(argv: string[]): Options {
  const o: Options = { quick: false, json: undefined, both: false, only: undefined, cpuProf: undefined, verbose: false, waitQuiet: 0, repeat: undefined };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--json") o.json = value();
    else if (a === "--both") o.both = true;
    else if (a === "--only") {
      o.only = new Set(value().split(",").map((s) => s.trim()));
      for (const t of o.only) if (!ALL_TESTS.includes(t)) throw new Error(`unknown test ${t}: expected ${ALL_TESTS.join(" ")}`);
    } else if (a === "--cpu-prof") o.cpuProf = value();
    else if (a === "--verbose") o.verbose = true;
    else if (a === "--wait-quiet") {
      o.waitQuiet = Number(value());
      if (!(o.waitQuiet >= 0)) throw new Error("--wait-quiet needs a number of seconds");
    }
    else if (a === "--repeat") {
      o.repeat = Number(value());
      if (!Number.isInteger(o.repeat) || o.repeat < 1) throw new Error("--repeat needs a whole number >= 1");
    } else if (a === "--help" || a === "-h") {
      process.stdout.write(
        "usage: bench [--quick] [--json <path>] [--both] [--only s64,s1k,s64k,s4m,rtt,mesh4,launch,slow]\n" +
          "             [--repeat <n>] [--wait-quiet <s>] [--cpu-prof <dir>] [--verbose]\n",
      );
      process.exit(0);
    } else throw new Error(`unknown option ${a}`);
  }
  return o;
}

function machine(): Record<string, unknown> {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? "unknown",
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 1073741824) * 10) / 10,
    os: `${os.platform()} ${os.release()} ${os.arch()}`,
  };
}

/** Files of the library that differ from the commit (the run measured them as they were). */
function libChanges(): string[] | null {
  try {
    const r = spawnSync("git", ["status", "--porcelain", "--", "mod.ts", "lib"], { cwd: ROOT, encoding: "utf8" });
    return r.status === 0 ? r.stdout.split("\n").filter((l) => l.trim() !== "").map((l) => l.trim()) : null;
  } catch {
    return null;
  }
}

function gitCommit(): string | null {
  try {
    const r = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: ROOT, encoding: "utf8" });
    return r.status === 0 ? r.stdout.trim() : null;
  } catch {
    return null;
  }
}

/** The orchestrator: returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  let opts: Options;
  try {
    opts = parseArgs(argv);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n`);
    return 2;
  }
  if (opts.cpuProf) {
    profDir = resolve(opts.cpuProf);
    mkdirSync(profDir, { recursive: true });
  }
  const onSignal = () => {
    void killAll().then(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  waitQuietS = opts.waitQuiet;
  const p = plan(opts.quick, opts.repeat);
  const started = Date.now();
  const load0 = os.loadavg();
  const runtimes: RuntimeName[] = opts.both ? [current, current === "node" ? "deno" : "node"] : [current];
  const runs: RunResult[] = [];
  try {
    for (const r of await runSuites(runtimes, opts, p)) {
      r.metrics = buildMetrics(r);
      runs.push(r);
    }
  } finally {
    await killAll();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  const results: Results = {
    schema: "ditask-bench/1",
    date: new Date().toISOString(),
    quick: opts.quick,
    orchestrator: current,
    commit: gitCommit(),
    libChanges: libChanges(),
    machine: machine(),
    loadavg: { start: load0, end: os.loadavg() },
    seconds: (Date.now() - started) / 1000,
    params: p,
    runs: Object.fromEntries(runs.map((r) => [r.runtime, r])),
  };
  // Quick and partial (--only) runs write files only where --json says.
  const jsonPath = opts.json ? resolve(opts.json) : opts.quick || opts.only ? undefined : join(ROOT, "bench", "results", "latest.json");
  if (jsonPath && !opts.both) carryOver(results, jsonPath);
  printReport(results);
  if (jsonPath) {
    const svgPath = jsonPath.replace(/\.json$/, "") + ".svg";
    mkdirSync(dirname(jsonPath), { recursive: true });
    writeResults(results, jsonPath, svgPath);
    process.stdout.write(`\nwrote ${jsonPath}\nwrote ${svgPath}\n`);
  }
  const errors = runs.flatMap((r) => r.errors.map((e) => `${r.runtime}: ${e}`));
  if (errors.length > 0) {
    process.stderr.write(`\n${errors.length} problem(s):\n${errors.map((e) => `  - ${e}`).join("\n")}\n`);
    return 1;
  }
  return 0;
}

/**
 * Keep the other runtime's last run from the previous results file (same machine, same mode),
 * so that the Deno/Node comparison is shown after separate runs too. Marked as carried over.
 */
function carryOver(results: Results, path: string): void {
  let prev: Results;
  try {
    prev = JSON.parse(readFileSync(path, "utf8")) as Results;
  } catch {
    return;
  }
  if (prev.schema !== results.schema || prev.quick !== results.quick) return;
  if (JSON.stringify(prev.machine) !== JSON.stringify(results.machine)) return;
  for (const [name, run] of Object.entries(prev.runs ?? {})) {
    if (results.runs[name]) continue;
    results.runs[name] = { ...run, carriedOver: run.carriedOver ?? prev.date };
  }
}
