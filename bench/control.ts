// What the benchmark's child processes share with the orchestrator: a line protocol (reports on
// stdout, commands on stdin), clocks, memory readings, payloads and the flow-control window.
// This module imports nothing of ditask and nothing of ws, so every role can use it.
import { resolve } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

/** Every report line a child writes starts with this marker; other output is passed through. */
export const MARK = "@@bench ";

/** A report sent from a child process to the orchestrator. */
export interface Report {
  type: string;
  [k: string]: unknown;
}

/** Write one report line on stdout. */
export function report(msg: Report): void {
  process.stdout.write(MARK + JSON.stringify(msg) + "\n");
}

/** A command sent from the orchestrator to a child process. */
export interface Command {
  cmd: string;
  [k: string]: unknown;
}

/**
 * Call `fn` for every command line on stdin. When stdin ends (the orchestrator died or closed it),
 * the process exits, so no child outlives the benchmark.
 */
export function onCommands(fn: (c: Command) => void): void {
  let rest = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    for (const line of lines) {
      if (line.trim() === "") continue;
      let c: Command;
      try {
        c = JSON.parse(line) as Command;
      } catch {
        continue;
      }
      fn(c);
    }
  });
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
}

/** Monotonic milliseconds (sub-millisecond resolution). */
export const now = (): number => performance.now();

/** CPU time (user + system) this process has used, in µs. */
export function cpuMicros(): number {
  const u = process.cpuUsage();
  return u.user + u.system;
}

/** Resident set size in MiB. */
export function rssMiB(): number {
  return process.memoryUsage().rss / 1048576;
}

/** Full memory reading in MiB. */
export function memMiB(): { rss: number; heapUsed: number; external: number; arrayBuffers: number } {
  const m = process.memoryUsage();
  return {
    rss: m.rss / 1048576,
    heapUsed: m.heapUsed / 1048576,
    external: m.external / 1048576,
    arrayBuffers: (m.arrayBuffers ?? 0) / 1048576,
  };
}

/** Samples the RSS every `ms` and keeps the peak. */
export class RssSampler {
  #timer: ReturnType<typeof setInterval>;
  peak: number;
  constructor(ms = 25) {
    this.peak = rssMiB();
    this.#timer = setInterval(() => this.sample(), ms);
  }
  sample(): void {
    const r = rssMiB();
    if (r > this.peak) this.peak = r;
  }
  stop(): number {
    clearInterval(this.#timer);
    this.sample();
    return this.peak;
  }
}

/** Burn the CPU for `ms` (a slow consumer). */
export function busyWait(ms: number): void {
  const end = now() + ms;
  while (now() < end) {
    // spin
  }
}

/** The value the last element of every streamed Float32Array carries (checked on receipt). */
export const F32_MARK = 4242.5;

/** Make the payload of a stream test: bytes of `size`, or a Float32Array of `size` bytes. */
export function makePayload(kind: "bytes" | "f32", size: number): Uint8Array | Float32Array {
  if (kind === "f32") {
    const a = new Float32Array(size / 4);
    for (let i = 0; i < a.length; i += 1024) a[i] = i;
    a[0] = 1;
    a[a.length - 1] = F32_MARK;
    return a;
  }
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = i & 0xff;
  return b;
}

/** Whether `v` is the streamed Float32Array of `bytes` bytes, as sent. */
export function checkF32(v: unknown, bytes: number): boolean {
  return v instanceof Float32Array && v.byteLength === bytes && v[0] === 1 && v[v.length - 1] === F32_MARK;
}

/** A stream test as the children see it. */
export interface StreamSpec {
  kind: "bytes" | "f32";
  size: number;
  /** At most this many messages (warm-up included). */
  count: number;
  /** At most this long, in ms (warm-up included). */
  ms: number;
  /** Messages not counted at the start (JIT warm-up). */
  warm: number;
  /** Messages the sender may have in flight (sent but not acknowledged). */
  window: number;
  /** The receiver acknowledges every this many messages. */
  ackEvery: number;
}

/**
 * The sender side of a window-based stream: `send()` is called while fewer than `window`
 * messages are unacknowledged, until `count` messages or `ms` elapsed; then `end(sent)` once.
 */
export class Pump {
  sent = 0;
  acked = 0;
  #limit: number;
  #deadline = Infinity;
  #done = false;
  #busy = false;
  /** CPU µs when the message after the warm-up was sent, and at the end. */
  cpu0 = 0;
  cpu1 = 0;
  readonly spec: { count: number; ms: number; window: number; warm?: number };
  readonly send: () => void;
  readonly end: (sent: number) => void;
  constructor(
    spec: { count: number; ms: number; window: number; warm?: number },
    send: () => void,
    end: (sent: number) => void,
  ) {
    this.spec = spec;
    this.send = send;
    this.end = end;
    this.#limit = spec.count;
  }
  start(): void {
    this.#deadline = now() + this.spec.ms;
    this.run();
  }
  /** CPU µs per message sent after the warm-up (null before the end). */
  cpuPerMessage(): number | null {
    const n = this.sent - (this.spec.warm ?? 0);
    return this.cpu1 > 0 && n > 0 ? (this.cpu1 - this.cpu0) / n : null;
  }
  /** Send no more. */
  stop(): void {
    this.#limit = this.sent;
  }
  /** Record an acknowledgement of `n` messages in total and send more. */
  ack(n: number): void {
    if (n > this.acked) this.acked = n;
    this.run();
  }
  run(): void {
    if (this.#done || this.#busy) return;
    this.#busy = true;
    try {
      const { window } = this.spec;
      const warm = this.spec.warm ?? 0;
      while (this.sent < this.#limit) {
        if (this.sent - this.acked >= window) return;
        if (this.sent === warm) this.cpu0 = cpuMicros();
        this.send();
        this.sent++;
        if ((this.sent & 63) === 0 && now() > this.#deadline) this.#limit = this.sent;
      }
      if (now() > this.#deadline) this.#limit = this.sent;
      this.#done = true;
      this.cpu1 = cpuMicros();
      this.end(this.sent);
    } finally {
      this.#busy = false;
    }
  }
}

/**
 * The receiver side of a stream: counts, acknowledges, and times the part after the warm-up. The
 * warm-up ends after `warm` messages or `warmMs` after the first one, whichever comes first (so a
 * slow run still has a measured part).
 */
export class Sink {
  n = 0;
  bad = 0;
  t0 = 0;
  t1 = 0;
  n0 = 0;
  /** Messages counted when `t1` was read. */
  n1 = 0;
  cpu0 = 0;
  #first = 0;
  readonly warm: number;
  readonly warmMs: number;
  constructor(warm: number, warmMs: number) {
    this.warm = warm;
    this.warmMs = warmMs;
  }
  /**
   * Count one message; returns whether an acknowledgement is due. From the 1024th message after
   * the warm-up the clock is read every 64 messages, not on each: on Deno `performance.now()` is a call into the runtime
   * that cost a receiver of 300 k messages/s about 8% of its CPU, an observer effect that Node
   * does not have. The rate counts the messages up to the last reading.
   */
  got(ackEvery: number): boolean {
    const n = ++this.n;
    if (this.t0 === 0) {
      const t = now();
      if (n === 1) this.#first = t;
      if (n > this.warm || t - this.#first >= this.warmMs) {
        this.t0 = this.t1 = t;
        this.n0 = this.n1 = n;
        this.cpu0 = cpuMicros();
      }
    } else if (n - this.n0 < 1024 || (n & 63) === 0) {
      // Each message at first (a slow stream of large ones pays nothing for it), then every 64th.
      this.t1 = now();
      this.n1 = n;
    }
    return n % ackEvery === 0;
  }
  result(sent: number): Report {
    const measured = this.t0 === 0 ? 0 : this.n1 - this.n0;
    const ms = this.t1 - this.t0;
    const all = this.t0 === 0 ? 0 : this.n - this.n0;
    return {
      type: "result",
      received: this.n,
      sent,
      measured,
      ms,
      perSec: measured > 0 && ms > 0 ? (measured * 1000) / ms : null,
      cpuPerMessage: all > 0 ? (cpuMicros() - this.cpu0) / all : null,
      bad: this.bad,
    };
  }
}

/** Percentile of sorted numbers (nearest rank). */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/** The repository's root folder (where package.json is), from bench/ or dist/bench/. */
export function repoRoot(): string {
  const here = fileURLToPath(new URL(".", import.meta.url)).replace(/[\\/]$/, "");
  return resolve(here, /[\\/]dist[\\/]bench$/.test(here) ? "../.." : "..");
}
