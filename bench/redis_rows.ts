// The Redis rows of the benchmark: starts a private redis-server on a free loopback port, measures
// RedisTransport (bench/redis_bench.ts), prints the rows and stops the server. Skips, saying why,
// when redis-server is not installed (`bash scripts/ensure_redis.sh` installs it).
//
//   node dist/bench/redis_rows.js [--quick]      deno run -A bench/redis_rows.ts [--quick]
import { spawn, spawnSync } from "node:child_process";
import { connect } from "node:net";
import { freePorts } from "../lib/parallel.ts";
import { redisBench, type RedisBenchResult } from "./redis_bench.ts";


/** Run the Redis rows; returns them, or the reason they were skipped. */
export async function redisRows(quick: boolean): Promise<RedisBenchResult | string> {
  if (spawnSync("redis-server", ["--version"]).status !== 0) return "redis-server is not installed";
  const [port] = await freePorts(1);
  const server = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  try {
    // Wait until it accepts connections (bounded).
    for (let i = 0; i < 200; i++) {
      const up = await new Promise<boolean>((resolve) => {
        const c = connect(port, "127.0.0.1");
        c.once("connect", () => {
          c.destroy();
          resolve(true);
        });
        c.once("error", () => resolve(false));
      });
      if (up) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    return await redisBench({ redisHost: "127.0.0.1", redisPort: port, seconds: quick ? 1 : 2, roundTrips: quick ? 500 : 2000 });
  } finally {
    server.kill("SIGKILL");
  }
}

/** Print the rows as a small table. */
export function printRedisRows(r: RedisBenchResult | string): void {
  if (typeof r === "string") {
    console.log(`\nRedis rows skipped: ${r}`);
    return;
  }
  console.log("\nRedis message queue (RedisTransport through a private redis-server; both nodes in one process):");
  console.log(`  64 B events, one-way      ${(r.events64PerSec / 1000).toFixed(1)} k ev/s`);
  console.log(`  round trip 64 B, p50/p99  ${(r.rttP50Ms * 1000).toFixed(0)} / ${(r.rttP99Ms * 1000).toFixed(0)} µs`);
  console.log(`  4 MiB Float32Array        ${r.f32x4MiBMBPerSec.toFixed(0)} MB/s`);
}

if (import.meta.url.endsWith("/redis_rows.ts") || import.meta.url.endsWith("/redis_rows.js")) {
  const isMain = ((globalThis as { Deno?: { mainModule: string } }).Deno?.mainModule ?? `file://${process.argv[1]}`) === import.meta.url;
  if (isMain) printRedisRows(await redisRows(process.argv.includes("--quick")));
}
