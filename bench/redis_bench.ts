// The Redis transport's benchmark rows: 64 B events per second, round-trip p50 at 64 B, and MB/s
// for a 4 MiB Float32Array, through RedisTransport and a real Redis server (loopback).
//
// Both nodes run in this process (one sender, one receiver), so the sender's and the receiver's
// work share one thread: the numbers are a floor for two processes. Payloads go through the CBOR
// codec, as task events do.
import { RedisTransport } from "../lib/transport/redis/mod.ts";
import { cborCodec } from "../lib/codec.ts";

/** Options of {@link redisBench}. */
export interface RedisBenchOptions {
  /** Redis host. @default "127.0.0.1" */
  redisHost?: string;
  /** Redis port. @default 6379 */
  redisPort?: number;
  /** Redis URL (wins over host/port). */
  redisUrl?: string;
  /** How long each throughput measurement runs, in seconds (after a short warm-up). @default 2 */
  seconds?: number;
  /** How many round trips the RTT measurement takes. @default 2000 */
  roundTrips?: number;
}

/** The results of {@link redisBench}: plain numbers. */
export interface RedisBenchResult {
  /** 64 B events per second, one sender to one receiver. */
  events64PerSec: number;
  /** Round-trip time at 64 B, median, in milliseconds. */
  rttP50Ms: number;
  /** Round-trip time at 64 B, 99th percentile, in milliseconds. */
  rttP99Ms: number;
  /** Megabytes (10^6 bytes) per second of 4 MiB Float32Arrays, one sender to one receiver. */
  f32x4MiBMBPerSec: number;
}

const now = () => performance.now();
const tick = () => new Promise<void>((r) => setTimeout(r, 0));

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * Measure the Redis transport: 64 B events/s, RTT p50/p99 at 64 B and MB/s for a 4 MiB
 * `Float32Array`, with two nodes in this process on a job of their own.
 *
 * @param options Where Redis is and how long to measure.
 * @returns The numbers.
 * @throws {TransportError} If Redis cannot be reached.
 * @example
 * ```ts
 * const r = await redisBench({ redisPort: 6379 });
 * console.log(`${r.events64PerSec.toFixed(0)} events/s, p50 ${r.rttP50Ms.toFixed(3)} ms`);
 * ```
 */
export async function redisBench(options: RedisBenchOptions = {}): Promise<RedisBenchResult> {
  const seconds = options.seconds ?? 2;
  const job = `bench-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const where = {
    ...(options.redisUrl !== undefined ? { redisUrl: options.redisUrl } : {}),
    ...(options.redisHost !== undefined ? { redisHost: options.redisHost } : {}),
    ...(options.redisPort !== undefined ? { redisPort: options.redisPort } : {}),
  };
  const a = new RedisTransport({ nodeId: 0, job, expect: [1], ...where });
  const b = new RedisTransport({ nodeId: 1, job, expect: [0], ...where });
  try {
    await Promise.all([a.open(), b.open()]);
    // Each node subscribes only to what it receives (a node also gets back what it publishes on
    // a topic it listens to, and drops it).
    a.subscribe("pong");
    for (const t of ["ev", "ping", "f32"]) b.subscribe(t);
    a.endStartup();
    b.endStartup();
    await Promise.all([a.whenSubscribed(), b.whenSubscribed()]);

    // 64 B events: the sender keeps at most `window` events in flight.
    const small = cborCodec.encode([new Uint8Array(64 - 5)]);
    let received = 0;
    const offEv = b.onMessage((m) => {
      if (m.topic === "ev") received++;
    });
    const stream = async (ms: number, window: number, burst: number): Promise<number> => {
      received = 0;
      let sent = 0;
      const t0 = now();
      while (now() - t0 < ms) {
        if (sent - received < window) {
          for (let i = 0; i < burst; i++) a.publish("ev", small);
          sent += burst;
        }
        await tick();
      }
      const got = received;
      const t1 = now();
      while (received < sent && now() - t1 < 10_000) await tick();
      return got / ((t1 - t0) / 1000);
    };
    await stream(300, 20_000, 500);
    const events64PerSec = await stream(seconds * 1000, 20_000, 500);
    offEv();

    // Round trips: b answers every ping with a pong.
    const offEcho = b.onMessage((m) => {
      if (m.topic === "ping") b.publish("pong", m.payload);
    });
    let pong: (() => void) | undefined;
    const offPong = a.onMessage((m) => {
      if (m.topic === "pong") pong?.();
    });
    const rtts: number[] = [];
    const n = options.roundTrips ?? 2000;
    for (let i = 0; i < n + 100; i++) {
      const t0 = now();
      await new Promise<void>((r) => {
        pong = r;
        a.publish("ping", small);
      });
      if (i >= 100) rtts.push(now() - t0);
    }
    offEcho();
    offPong();
    rtts.sort((x, y) => x - y);

    // 4 MiB Float32Arrays, at most 3 in flight (Redis's default output-buffer limit for pub/sub
    // clients is 32 MB).
    const f32 = new Float32Array(1024 * 1024).map((_, i) => i);
    let bytes = 0;
    let arrays = 0;
    const offBig = b.onMessage((m) => {
      if (m.topic !== "f32") return;
      const [arr] = cborCodec.decode(m.payload) as [Float32Array];
      bytes += arr.byteLength;
      arrays++;
    });
    const big = async (ms: number): Promise<number> => {
      bytes = 0;
      arrays = 0;
      let sent = 0;
      const t0 = now();
      while (now() - t0 < ms) {
        if (sent - arrays < 3) {
          a.publish("f32", cborCodec.encode([f32]));
          sent++;
        }
        await tick();
      }
      const got = bytes;
      const t1 = now();
      while (arrays < sent && now() - t1 < 10_000) await tick();
      return got / 1e6 / ((t1 - t0) / 1000);
    };
    await big(300);
    const f32x4MiBMBPerSec = await big(seconds * 1000);
    offBig();

    return {
      events64PerSec,
      rttP50Ms: percentile(rtts, 50),
      rttP99Ms: percentile(rtts, 99),
      f32x4MiBMBPerSec,
    };
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

// `deno run -A bench/redis_bench.ts <port>` or `node dist/bench/redis_bench.js <port>`: print the rows.
const self = import.meta.url;
const entry = (globalThis as { Deno?: { mainModule: string } }).Deno?.mainModule ??
  (typeof process !== "undefined" && process.argv[1] ? new URL(`file://${process.argv[1]}`).href : "");
if (entry === self) {
  const argv = (globalThis as { Deno?: { args: string[] } }).Deno?.args ?? process.argv.slice(2);
  const r = await redisBench({ redisPort: Number(argv[0] ?? 6379) });
  console.log(JSON.stringify(r));
}
