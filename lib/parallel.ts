import { Buffer } from "node:buffer";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ChildProcess } from "node:child_process";
import { task } from "./task.ts";
import { cborCodec } from "./codec.ts";
import { DitaskError, fromPlainError, type PlainError, showValue, stringList, toPlainError, WorkerExitError } from "./errors.ts";
import { log } from "./log.ts";
import {
  entryScript,
  envSnapshot,
  exitProcess,
  getEnv,
  onTerminate,
  scriptArgs,
  spawnScript,
} from "./runtime.ts";
import { createTransport } from "./transport/mod.ts";
import { MAX_LOCAL_WORKERS, padParam } from "./platform/spec.ts";
import type { TlsOptions } from "./transport/ws/mod.ts";
import { checkNodeLimits, peerLists } from "./transport/limits.ts";
import { IPC_PATH_MAX, parseAddress } from "./transport/ws/protocol.ts";

export { padParam };
/** Re-exported for the CLI, which loads this module (and so the transport) only when it launches. */
export { redisTarget } from "./transport/redis/mod.ts";

/** How workers connect. */
export type Topology = "mesh" | "star" | "alone";

/** Options of {@link Parallel.runner}: DI-engine's `Parallel.runner` parameters, camelCased. */
export interface ParallelOptions {
  /** How many worker processes (1 to 4096). With 1, `main` runs in this process. */
  nParallelWorkers: number;
  /** `mesh`: every worker connects to every other; `star`: workers connect to the first one; `alone`: only `attachTo`. @default "mesh" */
  topology?: Topology;
  /** `ipc`: WebSocket over Unix domain sockets with random names; `tcp`: TCP ports. @default "ipc" */
  protocol?: "tcp" | "ipc";
  /** The host tcp workers bind to. @default "127.0.0.1" */
  address?: string;
  /** A base port or one port per worker (tcp). Without it, free ports are picked. DI-engine's base is 50515. */
  ports?: number | number[];
  /** Addresses every local worker also dials: `tcp://host:port`, `ws://`, `wss://`, `ipc:///path`. */
  attachTo?: string[];
  /** A first node id or one id per worker. @default 0 */
  nodeIds?: number | number[];
  /**
   * Node ids outside this launch that every worker also waits for before its `main` runs (besides
   * the peers it dials): the nodes of other hosts that dial this one. `ditask --platform` sets it
   * to every other node of the job in a mesh, so that an event a fast host's `main` sends at once
   * is not lost to a host that has not connected yet. Not a DI-engine option.
   */
  expectPeers?: number[];
  /** Labels of every worker (`task.router.labels`). */
  labels?: Iterable<string>;
  /** The message transport: `ws` (the mesh; `nng` is an alias for DI-engine configs) or `redis`. @default "ws" */
  mqType?: "ws" | "nng" | "redis";
  /** Redis host (`mqType: "redis"`). */
  redisHost?: string;
  /** Redis port (`mqType: "redis"`). */
  redisPort?: number;
  /** Redis server as a URL, with password and TLS: `redis://:pw@host:6379/0`, `rediss://host` (`mqType: "redis"`; wins over host/port). */
  redisUrl?: string;
  /** Re-run `main` after it throws, up to `maxRetries` times. @default false */
  autoRecover?: boolean;
  /** How often `autoRecover` may re-run `main`. @default Infinity */
  maxRetries?: number;
  /** Accepted for DI-engine configs; the mesh needs no start-up delay, so it has no effect. */
  startupInterval?: number;
  /** Largest frame a node accepts, in bytes. @default 268435456 */
  maxPayload?: number;
  /** How long a worker waits for its peers at start-up, in ms. @default 60000 */
  connectTimeout?: number;
  /** Prefix each line a worker prints with `[node <id>]` (coloured on a terminal). @default false */
  outputPrefix?: boolean;
  /** A shared secret every connection must prove (HMAC challenge-response). @default the `DITASK_SECRET` environment variable */
  secret?: string;
  /** Serve and dial `wss` with this certificate and key (PEM), verifying peers against `ca`. tcp only. */
  tls?: TlsOptions;
  /** Ping each link this often, in ms; shorter than `heartbeatTimeout`. @default 2500, or a quarter of `heartbeatTimeout` when that is less */
  heartbeatInterval?: number;
  /** A silent link is dropped, and a dropped peer that does not return is reported as left, after this many ms. @default 15000 */
  heartbeatTimeout?: number;
  /** The most bytes of unacknowledged events kept per peer before it is dropped as a slow consumer. @default 268435456 */
  maxOutboxBytes?: number;
}

/** What one worker is told: its node id, where it listens, whom it dials and waits for. */
export interface WorkerPlan {
  nodeId: number;
  localId: number;
  mqType: "ws" | "nng" | "redis";
  redisHost?: string;
  redisPort?: number;
  redisUrl?: string;
  listen: string;
  dial: string[];
  expect: number[];
  labels: string[];
  autoRecover: boolean;
  maxRetries: number;
  maxPayload?: number;
  connectTimeout?: number;
  /**
   * The launcher's temporary directory (ipc sockets, plan files, and the {@link errorFile} where a
   * failed `main` leaves its error). The launcher removes it when the run ends; a worker that
   * outlives its launcher (killed by SIGKILL) removes it instead.
   */
  runDir?: string;
  /**
   * Which runner call of the launcher's script this plan belongs to (0 for the first). A worker
   * re-runs the script: earlier runner calls return at once, and this one runs its `main`.
   */
  call?: number;
  /**
   * `main`'s arguments as the launcher had them (base64 CBOR), when CBOR carries them as they are
   * (see {@link sendableArgs}); else each worker uses those of its own run of the script.
   */
  args?: string;
  secret?: string;
  tls?: TlsOptions;
  heartbeatInterval?: number;
  heartbeatTimeout?: number;
  maxOutboxBytes?: number;
}

/**
 * The environment variable that carries a worker's {@link WorkerPlan}: its JSON, or `@` and the
 * path of a file holding it when the JSON is too long for one environment variable (a TLS CA
 * bundle can be over the kernel's 128 KiB limit per variable).
 */
export const WORKER_ENV = "DITASK_WORKER";
/** Plans longer than this (bytes of JSON) go to a file in the launch directory. */
const PLAN_ENV_MAX = 32 * 1024;

/** The value of {@link WORKER_ENV} for `plan`; writes the plan to a file in `dir` when it is long. */
function planEnv(dir: string, plan: WorkerPlan): string {
  const json = JSON.stringify(plan);
  if (Buffer.byteLength(json) <= PLAN_ENV_MAX) return json;
  const file = join(dir, `plan_${plan.nodeId}.json`);
  writeFileSync(file, json, { mode: 0o600 });
  return `@${file}`;
}

/** Read a worker's plan from the value of {@link WORKER_ENV}. */
function readPlan(raw: string): WorkerPlan {
  let json = raw;
  if (raw.startsWith("@")) {
    try {
      json = readFileSync(raw.slice(1), "utf8");
    } catch (err) {
      throw new DitaskError(`Cannot read the worker plan ${raw.slice(1)}: ${(err as Error).message}`, { code: "ERR_DITASK_WORKER_ENV" });
    }
  }
  let plan: unknown;
  try {
    plan = JSON.parse(json);
  } catch {
    throw badPlan("not JSON");
  }
  const problem = planProblem(plan);
  if (problem !== undefined) throw badPlan(problem);
  return plan as WorkerPlan;
}

function badPlan(problem: string): DitaskError {
  return new DitaskError(
    `Invalid ${WORKER_ENV}: ${problem}. Parallel.runner sets it for the workers it starts; unset it to launch`,
    { code: "ERR_DITASK_WORKER_ENV" },
  );
}

/** What makes `v` no worker plan (the fields every plan has), or `undefined`. */
function planProblem(v: unknown): string | undefined {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return "not a JSON object";
  const p = v as Record<string, unknown>;
  try {
    // The checks the options and the transports make of the same values.
    checkInt("nodeId", p.nodeId, 0);
    checkInt("localId", p.localId, 0);
    if (!["ws", "nng", "redis"].includes(p.mqType as string)) return `mqType ${JSON.stringify(p.mqType)} is not ws, nng or redis`;
    if (typeof p.listen !== "string") return `listen ${JSON.stringify(p.listen)} is not an address`;
    stringList(p.dial, "dial");
    peerLists(p);
  } catch (err) {
    return (err as Error).message;
  }
  return undefined;
}
/** The environment variable that tells a worker its node id (for user code). */
export const NODE_ID_ENV = "DITASK_NODE_ID";
/** DI-engine's first tcp port. */
export const DEFAULT_PORT_BASE = 50515;

function checkInt(name: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new RangeError(`Invalid ${name} ${showValue(v)}: expected an integer >= ${min}`);
  }
  return v;
}

/**
 * Check options and fill in defaults.
 *
 * @throws {TypeError} For a value of the wrong kind (unknown topology, protocol, bad address).
 * @throws {RangeError} For a number out of range or a list of the wrong length.
 */
export function normalizeOptions(options: ParallelOptions): Required<
  Pick<ParallelOptions, "topology" | "protocol" | "address" | "attachTo" | "autoRecover" | "maxRetries">
> & ParallelOptions & { nodeIds: number[]; labels: string[] } {
  if (typeof options !== "object" || options === null) throw new TypeError("Parallel.runner needs an options object");
  const n = checkInt("nParallelWorkers", options.nParallelWorkers, 1);
  if (n > MAX_LOCAL_WORKERS) {
    // A typo (1e9) would otherwise build lists of a billion ports and ids and run out of memory.
    throw new RangeError(`Invalid nParallelWorkers ${n}: one launch starts at most ${MAX_LOCAL_WORKERS} worker processes`);
  }
  const topology = options.topology ?? "mesh";
  if (!["mesh", "star", "alone"].includes(topology)) {
    throw new TypeError(`Unknown topology ${JSON.stringify(topology)}: expected "mesh", "star" or "alone"`);
  }
  const protocol = options.protocol ?? "ipc";
  if (protocol !== "tcp" && protocol !== "ipc") {
    throw new TypeError(`Unknown protocol ${JSON.stringify(protocol)}: expected "tcp" or "ipc"`);
  }
  const mqType = options.mqType ?? "ws";
  if (mqType !== "ws" && mqType !== "nng" && mqType !== "redis") {
    throw new TypeError(`Unknown mqType ${JSON.stringify(mqType)}: expected "ws", "nng" or "redis"`);
  }
  const nodeIds = padParam(options.nodeIds, n, 0);
  nodeIds.forEach((id) => checkInt("node id", id, 0));
  if (nodeIds.length !== n) {
    throw new RangeError(`Invalid nodeIds: ${nodeIds.length} ids for ${n} workers`);
  }
  if (new Set(nodeIds).size !== n) throw new RangeError(`Invalid nodeIds ${JSON.stringify(nodeIds)}: ids repeat`);
  if (options.ports !== undefined) {
    const ports = padParam(options.ports, n, DEFAULT_PORT_BASE);
    ports.forEach((p) => {
      if (!Number.isInteger(p) || p < 1 || p > 65535) throw new RangeError(`Invalid port ${JSON.stringify(p)}: expected 1-65535`);
    });
    if (protocol === "tcp" && ports.length !== n) {
      throw new RangeError(`Invalid ports: ${ports.length} ports for ${n} workers`);
    }
    // The local workers share one address: two on one port cannot both listen.
    if (protocol === "tcp" && new Set(ports).size !== ports.length) {
      throw new RangeError(`Invalid ports ${JSON.stringify(ports)}: ports repeat (each worker listens on its own)`);
    }
  }
  if (options.attachTo !== undefined && !Array.isArray(options.attachTo)) {
    throw new TypeError(`Invalid attachTo ${JSON.stringify(options.attachTo)}: expected an array of addresses`);
  }
  const attachTo = [...(options.attachTo ?? [])];
  attachTo.forEach((a) => parseAddress(a));
  if (options.expectPeers !== undefined) {
    if (!Array.isArray(options.expectPeers)) throw new TypeError("Invalid expectPeers: expected an array of node ids");
    for (const id of options.expectPeers) {
      checkInt("expectPeers node id", id, 0);
      if (nodeIds.includes(id)) throw new RangeError(`Invalid expectPeers: node id ${id} is one of this launch's workers`);
    }
  }
  const labels = options.labels === undefined ? [] : stringList(options.labels, "labels");
  const maxRetries = options.maxRetries ?? Infinity;
  if (typeof maxRetries !== "number" || maxRetries < 0 || Number.isNaN(maxRetries)) {
    throw new RangeError(`Invalid maxRetries ${JSON.stringify(maxRetries)}: expected a number >= 0`);
  }
  if (options.tls !== undefined) {
    if (protocol !== "tcp") throw new TypeError('Invalid options: tls needs protocol "tcp"');
    if (typeof options.tls.cert !== "string" || typeof options.tls.key !== "string") {
      throw new TypeError("Invalid tls: cert and key must be PEM strings");
    }
  }
  if (mqType === "redis") {
    // Both secure the ws mesh's own links; over Redis they would silently secure nothing.
    for (const k of ["secret", "tls"] as const) {
      if (options[k] !== undefined) {
        throw new TypeError(
          `Invalid options: ${k} secures the ws mesh and does nothing with mqType "redis"; ` +
            "put the password and TLS in redisUrl (rediss://:password@host:6379)",
        );
      }
    }
  }
  let secret = options.secret ?? getEnv("DITASK_SECRET");
  if (secret !== undefined && (typeof secret !== "string" || secret.length === 0)) {
    throw new TypeError("Invalid secret: expected a non-empty string");
  }
  if (mqType === "redis" && secret !== undefined) {
    log.warn('DITASK_SECRET is set but mqType is "redis": the secret is not used; Redis authenticates through redisUrl');
    secret = undefined;
  }
  // Checked here too, so that bad values stop the launch before any worker starts.
  checkNodeLimits(options);
  if (options.startupInterval !== undefined && !(options.startupInterval >= 0)) {
    throw new RangeError(`Invalid startupInterval ${JSON.stringify(options.startupInterval)}: expected a number >= 0`);
  }
  return {
    ...options,
    topology,
    protocol,
    address: options.address ?? "127.0.0.1",
    attachTo,
    autoRecover: options.autoRecover ?? false,
    maxRetries,
    nodeIds,
    labels,
    ...(secret !== undefined ? { secret } : {}),
  };
}

/**
 * Compute every worker's plan (DI-engine's `_nng_args_parser`): worker `i` listens on its own
 * address and dials `mesh`: workers `0..i-1`; `star`: worker 0; `alone`: nobody, each plus
 * `attachTo`. A worker waits for every local peer its topology connects it to.
 *
 * @param options Normalised options.
 * @param where `dir` for ipc sockets and error files (needed for ipc, and for workers in processes
 *   of their own); `ports` for tcp when none were given.
 */
export function planWorkers(
  options: ReturnType<typeof normalizeOptions>,
  where: { dir?: string | undefined; ports?: number[] | undefined },
): WorkerPlan[] {
  const n = options.nParallelWorkers;
  const ids = options.nodeIds;
  const ports = options.ports !== undefined ? padParam(options.ports, n, DEFAULT_PORT_BASE) : where.ports;
  const listen = ids.map((id, i) => {
    if (options.protocol === "ipc") {
      if (where.dir === undefined) throw new RangeError("ipc needs a directory for its sockets");
      return `ipc://${join(where.dir, `node_${id}.ipc`)}`;
    }
    const port = ports?.[i];
    if (port === undefined) throw new RangeError(`No port for worker ${i}`);
    const host = options.address.includes(":") ? `[${options.address}]` : options.address;
    return `tcp://${host}:${port}`;
  });
  // Local peers are dialed on loopback when the bind address is a wildcard, and over wss with TLS.
  const dialable = listen.map((a) => {
    const local = a.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace("tcp://[::]:", "tcp://[::1]:");
    return options.tls ? local.replace("tcp://", "wss://") : local;
  });
  return ids.map((nodeId, i) => {
    let dial: string[];
    let expect: number[];
    if (options.topology === "mesh") {
      dial = dialable.slice(0, i);
      expect = ids.filter((id) => id !== nodeId);
    } else if (options.topology === "star") {
      dial = i === 0 ? [] : [dialable[0]!];
      expect = i === 0 ? ids.slice(1) : [ids[0]!];
    } else {
      dial = [];
      expect = [];
    }
    if (options.mqType === "redis") {
      // DI-engine's redis parser ignores topology and addresses: every node talks through Redis.
      dial = [];
      expect = ids.filter((id) => id !== nodeId);
    }
    for (const id of options.expectPeers ?? []) if (!expect.includes(id)) expect.push(id);
    const plan: WorkerPlan = {
      nodeId,
      localId: i,
      mqType: options.mqType ?? "ws",
      listen: listen[i]!,
      dial: [...dial, ...options.attachTo],
      expect,
      labels: options.labels,
      autoRecover: options.autoRecover,
      maxRetries: options.maxRetries,
    };
    if (where.dir !== undefined) plan.runDir = where.dir;
    if (options.maxPayload !== undefined) plan.maxPayload = options.maxPayload;
    if (options.redisHost !== undefined) plan.redisHost = options.redisHost;
    if (options.redisPort !== undefined) plan.redisPort = options.redisPort;
    if (options.redisUrl !== undefined) plan.redisUrl = options.redisUrl;
    if (options.connectTimeout !== undefined) plan.connectTimeout = options.connectTimeout;
    for (const k of ["secret", "tls", "heartbeatInterval", "heartbeatTimeout", "maxOutboxBytes"] as const) {
      if (options[k] !== undefined) (plan as unknown as Record<string, unknown>)[k] = options[k];
    }
    return plan;
  });
}

/**
 * Find `n` free tcp ports on `host` (bound on port 0 and released at once; consecutive ports are
 * not promised). Also used by the tests and the benchmark.
 *
 * @example
 * ```ts
 * const [a, b] = await freePorts(2);
 * ```
 */
export async function freePorts(n: number, host = "127.0.0.1"): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
        const s = createServer();
        s.once("error", reject);
        s.listen(0, host, () => resolve(s));
      })),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** A `main` function and its arguments. */
export type MainFn<A extends unknown[]> = (...args: A) => unknown;

async function supervise<A extends unknown[]>(plan: WorkerPlan, main: MainFn<A>, args: A): Promise<void> {
  for (;;) {
    try {
      await main(...args);
      return;
    } catch (err) {
      if (plan.autoRecover && task.router.retries < plan.maxRetries) {
        task.router.retries++;
        log.warn(`node ${plan.nodeId}: main failed, restarting it (retry ${task.router.retries}):`, err);
        task.stop();
        continue;
      }
      if (plan.autoRecover) log.error(`node ${plan.nodeId}: main failed and the max retries (${plan.maxRetries}) are used up`);
      throw err;
    } finally {
      task.router.endStartup();
    }
  }
}

/** Run `main` as the node `plan` describes, in this process. */
async function runNode<A extends unknown[]>(plan: WorkerPlan, main: MainFn<A>, args: A): Promise<void> {
  const transport = createTransport(plan);
  // A worker the launcher restarted goes on counting from its previous incarnations.
  task.router.retries = Number(getEnv(RETRIES_ENV) ?? 0) || 0;
  task.router.attach(transport, { labels: plan.labels });
  try {
    await transport.open();
    await supervise(plan, main, args);
  } finally {
    task.stop();
    await task.router.detach();
  }
}

/** Where the worker of `plan` leaves the error its `main` failed with, for the launcher. */
function errorFile(plan: WorkerPlan): string | undefined {
  return plan.runDir === undefined ? undefined : join(plan.runDir, `error_${plan.nodeId}.json`);
}

/**
 * Whether CBOR carries `v` as it is: `undefined`, `null`, booleans, numbers (not -0), strings,
 * bigints, arrays, plain objects (string keys), `Map`, `Set`, `Date` and typed arrays, nested
 * without cycles or shared parts. Class instances lose their class, functions cannot be sent.
 */
export function sendableArgs(v: unknown, depth = 0, seen: Set<object> = new Set()): boolean {
  if (v === null || typeof v !== "object") {
    return typeof v !== "function" && typeof v !== "symbol" && !Object.is(v, -0);
  }
  if (depth > 64 || seen.has(v)) return false;
  seen.add(v);
  const all = (xs: Iterable<unknown>) => {
    for (const x of xs) if (!sendableArgs(x, depth + 1, seen)) return false;
    return true;
  };
  if (Array.isArray(v)) return all(v);
  if (v instanceof Date) return true;
  if (ArrayBuffer.isView(v)) return !(v instanceof DataView);
  if (v instanceof Map) return all(v.keys()) && all(v.values());
  if (v instanceof Set) return all(v);
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return false;
  return Object.getOwnPropertySymbols(v).length === 0 && all(Object.values(v));
}

/** `args` for the plans (base64 CBOR), or undefined when they cannot be sent as they are. */
function encodeArgs(args: unknown[]): string | undefined {
  if (args.length === 0 || !sendableArgs(args)) return undefined;
  const bytes = cborCodec.encode(args);
  const b64 = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
  if (cborCodec.pooled?.(bytes)) cborCodec.release!(bytes);
  return b64;
}

async function runWorker<A extends unknown[]>(plan: WorkerPlan, main: MainFn<A>, args: A): Promise<never> {
  // The launcher's arguments win over this run's own (which may differ: a timestamp, a seed).
  if (plan.args !== undefined) args = cborCodec.decode(Buffer.from(plan.args, "base64")) as A;
  if (getEnv("DITASK_WATCH_PARENT") === "1") {
    // The launcher holds our stdin: when it dies (even by SIGKILL), stdin ends and so do we. A
    // launcher killed that way could not remove its directory, so the first worker to notice does
    // (the others are ending too; their sockets' files go with it).
    const orphaned = () => {
      try {
        if (plan.runDir) rmSync(plan.runDir, { recursive: true, force: true });
      } finally {
        exitProcess(1);
      }
    };
    process.stdin.on("end", orphaned);
    process.stdin.on("error", orphaned);
    process.stdin.resume();
  }
  try {
    await runNode(plan, main, args);
  } catch (err) {
    log.error(`node ${plan.nodeId}: main failed:`, err);
    const file = errorFile(plan);
    if (file) {
      try {
        writeFileSync(file, JSON.stringify(toPlainError(err, plan.nodeId)));
      } catch {
        // The launcher still sees the exit code.
      }
    }
    return exitProcess(1);
  }
  return exitProcess(0);
}

function describeExit(nodeId: number, code: number | null, signal: string | null, plain?: PlainError): string {
  if (plain) return `Worker ${nodeId} failed: ${plain.message}`;
  if (signal) return `Worker ${nodeId} was killed by ${signal}`;
  return `Worker ${nodeId} exited with code ${code}`;
}

const COLOURS = [36, 33, 35, 32, 34, 31, 96, 93, 95, 92, 94, 91];

/** Copy a worker's output to ours, line by line, each line prefixed with its node id. */
function prefixLines(from: NodeJS.ReadableStream, to: NodeJS.WriteStream, nodeId: number): void {
  const colour = to.isTTY ? COLOURS[nodeId % COLOURS.length] : undefined;
  const prefix = colour ? `\x1b[${colour}m[node ${nodeId}]\x1b[0m ` : `[node ${nodeId}] `;
  let rest = "";
  const write = (text: string) => {
    if (output.closed) return;
    try {
      to.write(text);
    } catch {
      output.close(); // Deno throws a broken pipe at once; Node emits it as an "error" event
    }
  };
  from.setEncoding("utf8");
  from.on("data", (chunk: string) => {
    const lines = (rest + chunk).split("\n");
    rest = lines.pop()!;
    if (lines.length > 0) write(lines.map((l) => prefix + l + "\n").join(""));
  });
  from.on("end", () => {
    if (rest) write(prefix + rest + "\n");
  });
}

/**
 * Whether this process's stdout or stderr lost its reader (`ditask ... | head` once head has its
 * lines): writing there fails with EPIPE, which would crash the launcher and orphan its workers.
 * A launch that sees it stops its workers, as a process killed by SIGPIPE would be.
 */
const output = {
  closed: false,
  hooks: new Set<() => void>(),
  watching: false,
  watch(): void {
    if (this.watching) return;
    this.watching = true;
    const closed = () => this.close();
    process.stdout.on("error", closed);
    process.stderr.on("error", closed);
  },
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const hook of [...this.hooks]) hook();
  },
};

/**
 * Make a launch's private directory, in the temp directory. When the ipc sockets of `ipcIds`
 * (`node_<id>.ipc`) would not fit the OS's socket path limit there (a deep $TMPDIR), it goes in
 * /tmp or /var/tmp instead, as Python's multiprocessing does.
 *
 * @throws {DitaskError} (code `"ERR_DITASK_IPC_PATH"`) If no candidate is short enough.
 */
export function makeLaunchDir(ipcIds: readonly number[], bases: readonly string[] = [tmpdir(), "/tmp", "/var/tmp"]): string {
  // mkdtemp adds 6 characters to the prefix.
  const longest = Math.max(0, ...ipcIds.map((id) => Buffer.byteLength(`/ditask-XXXXXX/node_${id}.ipc`)));
  const base = ipcIds.length === 0 ? bases[0]! : bases.find((b, i) => Buffer.byteLength(b) + longest <= IPC_PATH_MAX && (i === 0 || existsSync(b)));
  if (base === undefined) {
    throw new DitaskError(
      `Cannot place ipc sockets: the temp directory ${bases[0]} is too long for Unix socket paths (at most ${IPC_PATH_MAX} bytes); set TMPDIR to a shorter directory or use protocol "tcp"`,
      { code: "ERR_DITASK_IPC_PATH" },
    );
  }
  if (base !== bases[0]) log.debug(`the temp directory ${bases[0]} is too long for ipc socket paths; using ${base}`);
  return mkdtempSync(join(base, "ditask-"));
}

/** The environment variable that tells a restarted worker how often its node was re-run. */
export const RETRIES_ENV = "DITASK_RETRIES";

async function launch(dir: string, plans: WorkerPlan[], outputPrefix: boolean): Promise<void> {
  const script = entryScript();
  const args = scriptArgs();
  const base = envSnapshot();
  const live = new Set<ChildProcess>();
  let interrupted: "SIGINT" | "SIGTERM" | "SIGPIPE" | undefined;
  let failure: WorkerExitError | undefined;
  const killAll = (sig: NodeJS.Signals) => {
    for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill(sig);
  };
  const stop = (why: "SIGINT" | "SIGTERM" | "SIGPIPE") => {
    interrupted ??= why;
    killAll("SIGTERM");
  };
  const offSignals = onTerminate(stop);
  const onOutputClosed = () => stop("SIGPIPE");
  if (outputPrefix) {
    output.watch();
    output.hooks.add(onOutputClosed);
  }

  /** The first failure stops the other workers (SIGTERM, then SIGKILL after 5 s). */
  const fail = (err: WorkerExitError) => {
    failure = err;
    killAll("SIGTERM");
    setTimeout(() => killAll("SIGKILL"), 5000).unref?.();
  };

  /** Start the worker of `plan` (its {@link WORKER_ENV} value given); resolves with how it ended, or why it could not start. */
  const start = (plan: WorkerPlan, planValue: string, retries: number): Promise<[number | null, string | null, string?]> => {
    const env = {
      ...base,
      [WORKER_ENV]: planValue,
      [NODE_ID_ENV]: String(plan.nodeId),
      [RETRIES_ENV]: String(retries),
      DITASK_WATCH_PARENT: "1",
    };
    let child: ChildProcess;
    try {
      child = spawnScript(script, args, {
        env,
        watchParent: true,
        stdio: outputPrefix ? "pipe" : "inherit",
        inspectOffset: plan.localId + 1,
      });
    } catch (err) {
      // Thrown at once (E2BIG: the environment is too large for the kernel).
      return Promise.resolve([null, null, (err as Error).message]);
    }
    live.add(child);
    if (outputPrefix) {
      prefixLines(child.stdout!, process.stdout, plan.nodeId);
      prefixLines(child.stderr!, process.stderr, plan.nodeId);
    }
    return new Promise((resolve) => {
      // "close" comes after the output pipes are drained, so no line is cut off.
      child.once("close", (code, signal) => {
        live.delete(child);
        resolve([code, signal]);
      });
      child.once("error", (err) => {
        live.delete(child);
        resolve([null, null, err.message]);
      });
    });
  };

  /** Run one worker to its end, restarting a dead one when autoRecover allows; the first failure stops the rest. */
  const supervise = async (plan: WorkerPlan) => {
    const planValue = planEnv(dir, plan);
    let retries = 0;
    for (;;) {
      if (failure || interrupted) return;
      const [code, signal, startError] = await start(plan, planValue, retries);
      if (code === 0 || failure || interrupted) return;
      if (startError !== undefined) {
        // Starting again would fail the same way.
        return fail(new WorkerExitError(`Cannot start worker ${plan.nodeId}: ${startError}`, { nodeId: plan.nodeId, exitCode: null, signal: null }));
      }
      let plain: PlainError | undefined;
      try {
        plain = JSON.parse(readFileSync(errorFile(plan)!, "utf8")) as PlainError;
      } catch {
        plain = undefined;
      }
      // A worker whose main threw has used its retries in-process; one that died is restarted.
      if (!plain && plan.autoRecover && retries < plan.maxRetries) {
        retries++;
        log.warn(`worker ${plan.nodeId} ${signal ? `was killed by ${signal}` : `exited with code ${code}`}; restarting it (retry ${retries})`);
        continue;
      }
      const errOpts: ConstructorParameters<typeof WorkerExitError>[1] = { nodeId: plan.nodeId, exitCode: code, signal };
      if (plain) errOpts.cause = fromPlainError(plain);
      return fail(new WorkerExitError(describeExit(plan.nodeId, code, signal, plain), errOpts));
    }
  };

  if (output.closed) onOutputClosed();
  await Promise.all(plans.map(supervise));
  offSignals();
  output.hooks.delete(onOutputClosed);
  rmSync(dir, { recursive: true, force: true });
  if (interrupted) {
    log.warn(interrupted === "SIGPIPE" ? "the output has no reader any more (EPIPE): all workers stopped" : `interrupted by ${interrupted}: all workers stopped`);
    exitProcess(interrupted === "SIGINT" ? 130 : interrupted === "SIGPIPE" ? 141 : 143);
  }
  if (failure) throw failure;
}

/** Runner calls made in this process so far (see {@link WorkerPlan.call}). */
let runnerCalls = 0;

/**
 * DI-engine's `Parallel`: run `main` in several processes that talk through `task` events.
 *
 * @example The seed's third example
 * ```ts
 * async function main() {
 *   await task.start({}, async () => {
 *     if (task.router.nodeId === 0) {
 *       task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
 *       await task.waitFor("greeting");
 *     } else task.emit("greeting", "Hi");
 *   });
 * }
 * await Parallel.runner({ nParallelWorkers: 2 })(main);
 * ```
 */
export class Parallel {
  /**
   * Make a runner: `await Parallel.runner(options)(main, ...args)`.
   *
   * The launching process starts `nParallelWorkers` workers by running the same script again; in
   * each, `main(...args)` runs as one node with `task.router` active, and the process ends when
   * `main` returns (code after the runner call runs only in the launcher). With one worker, `main`
   * runs in this process. The runner resolves when every worker ended well. A script may launch
   * several times (one runner call after another): each worker runs the `main` of its own call,
   * and in a worker the earlier calls return at once, so the code before its call runs there too.
   *
   * @throws {TypeError|RangeError|DitaskError} At once, for invalid options.
   * @throws {WorkerExitError} (rejects) When a worker throws, exits with a non-zero code or is
   *   killed; its `nodeId` names the worker and its `cause` is a `RemoteError` with the original
   *   message. The other workers are stopped.
   */
  static runner(options: ParallelOptions): <A extends unknown[]>(main: MainFn<A>, ...args: A) => Promise<void> {
    const opts = normalizeOptions(options);
    return async <A extends unknown[]>(main: MainFn<A>, ...args: A): Promise<void> => {
      if (typeof main !== "function") throw new TypeError("Parallel.runner(...)(main): main must be a function");
      const call = runnerCalls++;
      const raw = getEnv(WORKER_ENV);
      if (raw !== undefined) {
        const plan = readPlan(raw);
        // A script with several runner calls: this worker belongs to a later one.
        if (call < (plan.call ?? 0)) return;
        await runWorker(plan, main, args);
        return;
      }
      const n = opts.nParallelWorkers;
      // A lone worker runs in this process and needs a directory only for an ipc socket: without
      // one, nothing is left behind when this process is killed.
      const dir = n > 1 || opts.protocol === "ipc" ? makeLaunchDir(opts.protocol === "ipc" ? opts.nodeIds : []) : undefined;
      try {
        const ports = opts.protocol === "tcp" && opts.ports === undefined ? await freePorts(n, opts.address) : undefined;
        const plans = planWorkers(opts, { dir, ports });
        const sent = n > 1 ? encodeArgs(args) : undefined;
        for (const plan of plans) {
          plan.call = call;
          if (sent !== undefined) plan.args = sent;
        }
        if (n === 1) {
          try {
            await runNode(plans[0]!, main, args);
          } catch (err) {
            throw new WorkerExitError(`Worker ${plans[0]!.nodeId} failed: ${(err as Error)?.message ?? String(err)}`, {
              nodeId: plans[0]!.nodeId,
              exitCode: null,
              signal: null,
              cause: err,
            });
          }
          return;
        }
        await launch(dir!, plans, opts.outputPrefix ?? false);
      } finally {
        if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
      }
    };
  }
}
