// Private redis-server processes for the Redis tests: each on a free loopback port, spawned by the
// test and killed by PID. CI installs redis-server with scripts/ensure_redis.sh.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createConnection } from "node:net";
import { freePort } from "./_helpers.ts";
import { delimiter, join } from "node:path";

/**
 * The path of `redis-server` (from `DITASK_REDIS_SERVER` or the PATH), or `undefined`.
 *
 * @returns The executable's path, if installed.
 * @example
 * ```ts
 * if (!redisServerPath()) console.log("skipping: redis-server is not installed");
 * ```
 */
export function redisServerPath(): string | undefined {
  const env = process.env.DITASK_REDIS_SERVER;
  if (env && existsSync(env)) return env;
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, "redis-server");
    if (existsSync(p)) return p;
  }
  for (const p of ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]) {
    if (existsSync(p)) return p;
  }
  return undefined;
}

export { freePort };

/** Options of {@link startRedis}. */
export interface RedisServerOptions {
  /** Require this password (`--requirepass`). */
  password?: string;
  /** More `redis-server` arguments. */
  args?: string[];
  /** Also serve TLS on another free port with this certificate (PEM files; no client certificates). */
  tls?: { certFile: string; keyFile: string; caFile: string };
}

/** A private redis-server. */
export interface RedisServer {
  host: string;
  port: number;
  /** The TLS port, when started with `tls`. */
  tlsPort: number | undefined;
  /** `redis://127.0.0.1:<port>` (with the password, if any). */
  url: string;
  /** The current process's PID (it changes after {@link RedisServer.restart}). */
  readonly pid: number | undefined;
  /** Kill the server (SIGKILL: a crash, nothing saved) and wait until it is gone. */
  kill(): Promise<void>;
  /** Start it again on the same port (after {@link RedisServer.kill}) and wait until it answers. */
  restart(): Promise<void>;
  /** Kill it for good (idempotent). */
  stop(): Promise<void>;
}

const servers = new Set<RedisServer>();
let exitHook = false;

/** Whether a PING on `port` gets a `+PONG` (or `-NOAUTH`, which also means it is up). */
function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection({ host: "127.0.0.1", port });
    let buf = "";
    const done = (ok: boolean) => {
      c.destroy();
      resolve(ok);
    };
    c.setTimeout(1000, () => done(false));
    c.on("error", () => done(false));
    c.on("connect", () => c.write("PING\r\n"));
    c.on("data", (d) => {
      buf += d.toString();
      if (buf.includes("\r\n")) done(buf.startsWith("+PONG") || buf.startsWith("-NOAUTH"));
    });
  });
}

async function waitUp(port: number, child: ChildProcess, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server on port ${port} exited with ${child.exitCode ?? child.signalCode}`);
    }
    if (await ping(port)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`redis-server on port ${port} did not answer within ${ms} ms`);
}

/**
 * Start a private `redis-server` on a free loopback port, without persistence.
 *
 * @param options Password and extra arguments.
 * @returns The running server.
 * @throws {Error} If `redis-server` is not installed or does not start.
 * @example
 * ```ts
 * const srv = await startRedis();
 * try { ... } finally { await srv.stop(); }
 * ```
 */
export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  const exe = redisServerPath();
  if (!exe) throw new Error("redis-server is not installed (run scripts/ensure_redis.sh)");
  const port = await freePort();
  const args = [
    "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
    "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
    ...(options.password ? ["--requirepass", options.password] : []),
    ...(options.args ?? []),
  ];
  const tlsPort = options.tls ? await freePort() : undefined;
  if (options.tls) {
    args.push(
      "--tls-port", String(tlsPort), "--tls-cert-file", options.tls.certFile, "--tls-key-file", options.tls.keyFile,
      "--tls-ca-cert-file", options.tls.caFile, "--tls-auth-clients", "no",
    );
  }
  let child: ChildProcess | undefined;
  const launch = async () => {
    const c = spawn(exe, args, { stdio: ["ignore", "ignore", "pipe"] });
    c.stderr!.resume();
    child = c;
    await waitUp(port, c);
  };
  const killChild = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once("exit", r));
    c.kill("SIGKILL");
    await gone;
  };
  const server: RedisServer = {
    host: "127.0.0.1",
    port,
    tlsPort,
    url: options.password
      ? `redis://:${encodeURIComponent(options.password)}@127.0.0.1:${port}`
      : `redis://127.0.0.1:${port}`,
    get pid() {
      return child?.pid;
    },
    kill: killChild,
    restart: async () => {
      await killChild();
      await launch();
    },
    stop: async () => {
      servers.delete(server);
      await killChild();
    },
  };
  servers.add(server);
  if (!exitHook) {
    exitHook = true;
    // A test run that ends early still kills its servers (by PID).
    process.on("exit", () => {
      for (const s of servers) if (s.pid !== undefined) {
        try {
          process.kill(s.pid, "SIGKILL");
        } catch {
          // gone already
        }
      }
    });
  }
  await launch();
  return server;
}

/** Every server started and not stopped yet. */
export function liveServers(): RedisServer[] {
  return [...servers];
}
