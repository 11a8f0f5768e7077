import { readFileSync } from "node:fs";
import { DitaskError } from "../errors.ts";

/**
 * Worker topology, as DI-engine's `--topology`.
 *
 * @example
 * ```ts
 * const topology: PlatformTopology = "mesh";
 * ```
 */
export type PlatformTopology = "mesh" | "star" | "alone";

/**
 * Transport protocol, as DI-engine's `--protocol`.
 *
 * @example
 * ```ts
 * const protocol: PlatformProtocol = "tcp";
 * ```
 */
export type PlatformProtocol = "tcp" | "ipc";

/**
 * The launch arguments of one ditask process: what the CLI gives a platform parser and what the
 * parser gives back. Names are DI-engine's `ditask` option names camelCased.
 *
 * Any other CLI field (`package`, `main`, `mqType`, `redisHost`, `startupInterval`, …) is allowed
 * through the index signature and passed through unchanged, like DI-engine's `{**kwargs, **task}`.
 * An interface that `extends PlatformArgs` inherits the index signature; a plain object literal
 * fits as is.
 *
 * @example Arguments for a single-worker mesh launch
 * ```ts
 * const args: PlatformArgs = { parallelWorkers: 1, topology: "mesh", protocol: "tcp", main: "app.main" };
 * ```
 */
export interface PlatformArgs {
  /** Worker processes this ditask process spawns. @default 1 */
  parallelWorkers: number;
  /** Which peers each worker dials. @default "alone" */
  topology: PlatformTopology;
  /** Transport protocol; platforms span machines, so only `"tcp"` works with them. @default "tcp" */
  protocol: PlatformProtocol;
  /** Listen host of this process, without port. */
  address?: string;
  /** Port (the first worker's; the others count up) or one port per worker. */
  ports?: number | number[];
  /** Node id of the first worker (the others count up) or one node id per worker. */
  nodeIds?: number | number[];
  /** Labels of every worker of this process. */
  labels?: string[];
  /** Addresses every worker also dials, such as `tcp://SH-0:50515`. */
  attachTo?: string[];
  /** Node ids of other hosts every worker waits for at start-up (see `ParallelOptions.expectPeers`). */
  expectPeers?: number[];
  /** Message queue type: `"ws"` (default), `"nng"` (alias of `"ws"`) or `"redis"`. */
  mqType?: string;
  /** Any other CLI field, passed through unchanged. */
  [key: string]: unknown;
}

/**
 * Raised for every bad platform input: a missing or malformed environment variable, a rank outside
 * the node list, invalid JSON, an unreadable spec file, a malformed hostlist. Its code is
 * `"ERR_DITASK_PLATFORM"`.
 *
 * @example Report a platform problem in one line
 * ```ts
 * try { parseK8s(env, args); }
 * catch (err) { if (err instanceof PlatformError) console.error(err.message); }
 * ```
 */
export class PlatformError extends DitaskError {
  /**
   * Create a platform error.
   *
   * @param message What is wrong, e.g. `Cannot parse k8s platform: DI_RANK is not set`.
   * @param options The underlying error, if any.
   */
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: "ERR_DITASK_PLATFORM" });
    this.name = "PlatformError";
  }
}

/**
 * Read an environment variable, trimmed; `undefined` when it is unset or blank.
 *
 * @param env The environment (a plain object).
 * @param name The variable's name.
 * @returns The trimmed value, or `undefined`.
 * @example
 * ```ts
 * readEnv({ DI_RANK: " 3 " }, "DI_RANK"); // "3"
 * ```
 */
export function readEnv(env: Record<string, string | undefined>, name: string): string | undefined {
  const v = env[name];
  if (v === undefined) return undefined;
  const t = v.trim();
  return t === "" ? undefined : t;
}

/**
 * `n` and `word`, pluralised with an "s" unless `n` is 1.
 *
 * @example
 * ```ts
 * plural(6, "node"); // "6 nodes"
 * ```
 */
export function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * Quote a value for an error message, in the project's style (`DI_RANK "7"`).
 *
 * @internal
 * @param value Any value; non-strings are converted with `String` first.
 * @returns The value as a double-quoted JSON string.
 *
 * @example Quote a rank
 * ```ts
 * quote("7"); // '"7"'
 * ```
 */
export function quote(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  try {
    return JSON.stringify(String(value));
  } catch {
    return '"?"';
  }
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  try {
    const s = JSON.stringify(value);
    return s === undefined ? String(value) : s;
  } catch {
    return String(value);
  }
}

function stripBom(text: string): string {
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Load a platform spec given as a JSON string or as the path of a `.json` file.
 *
 * A value whose first non-blank character is `{` or `[` is parsed as JSON; a value ending in
 * `.json` is read as a UTF-8 file (relative to the working directory) and parsed. DI-engine meant to
 * read files too but never did (reference §13). The result is not checked further here: the
 * parsers check its shape (`{"tasks": [...]}`) and resolve `$node.<id>` references.
 *
 * @param spec The `--platform-spec` value.
 * @returns The parsed JSON value.
 * @throws {PlatformError} If the JSON is invalid, the file cannot be read, or `spec` is neither.
 *
 * @example Load a spec from a string or a file
 * ```ts
 * loadPlatformSpec('{"tasks":[{"labels":"learn","node_ids":0}]}');
 * loadPlatformSpec("./cluster.json");
 * ```
 */
export function loadPlatformSpec(spec: string): unknown {
  const text = stripBom(spec).trim();
  if (text.startsWith("{") || text.startsWith("[")) {
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new PlatformError(`Cannot load platform spec: invalid JSON (${errorText(err)})`, { cause: err });
    }
  }
  if (text.toLowerCase().endsWith(".json")) {
    let content: string;
    try {
      content = readFileSync(text, "utf8");
    } catch (err) {
      throw new PlatformError(`Cannot load platform spec: cannot read file ${quote(text)} (${errorText(err)})`, {
        cause: err,
      });
    }
    try {
      return JSON.parse(stripBom(content));
    } catch (err) {
      throw new PlatformError(
        `Cannot load platform spec: file ${quote(text)} is not valid JSON (${errorText(err)})`,
        { cause: err },
      );
    }
  }
  if (text === "") throw new PlatformError("Cannot load platform spec: it is empty");
  throw new PlatformError(
    `Cannot load platform spec: ${quote(shorten(text))} is neither a JSON object nor a path ending in ".json"`,
  );
}

function shorten(text: string): string {
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

// ---------------------------------------------------------------------------------------------
// Shared task resolution (internal to lib/platform; not re-exported from mod.ts).

/** One task of a platform spec, normalised. */
interface SpecTask {
  address?: string;
  ports?: number | number[];
  nodeIds?: number | number[];
  attachTo?: string[];
  labels?: string[];
  /** Other keys of the task, camelCased, passed through to the result. */
  extras: Record<string, unknown>;
}

/** A fully resolved task (one ditask process of the cluster). */
interface Task {
  address: string;
  ports: number | number[];
  nodeIds: number | number[];
  workerPorts: number[];
  workerNodeIds: number[];
  spec: SpecTask | undefined;
}

/**
 * What a platform knows about the cluster, handed to {@link resolvePlatformTask}.
 *
 * @internal
 * @example A three-pod layout
 * ```ts
 * const layout: PlatformLayout = {
 *   platform: "k8s", hosts: ["a", "b", "c"], rank: 2,
 *   defaultPort: () => 50515, checkOwnAddress() {},
 * };
 * ```
 */
export interface PlatformLayout {
  /** `"k8s"` or `"slurm"`, used in error messages. */
  platform: string;
  /** The default address of every task (process), indexed by rank. Its length is the task count. */
  hosts: string[];
  /** This process's rank (index into `hosts`). */
  rank: number;
  /** The default port of task `procid` when neither the spec nor the CLI gives one. */
  defaultPort(procid: number, parallelWorkers: number): number;
  /** Throw if `address` cannot be this process's address. */
  checkOwnAddress(address: string): void;
}

const SKIPPED_SPEC_KEYS = new Set(["parallel_workers", "parallelWorkers", "topology"]);

function camelCase(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function parseIntToken(token: string): number | undefined {
  const t = token.trim();
  if (!/^\d+$/.test(t)) return undefined;
  const n = Number(t);
  return Number.isSafeInteger(n) ? n : undefined;
}

function toIntList(value: unknown, isValid: (n: number) => boolean): number | number[] | undefined {
  const one = (v: unknown): number | undefined => {
    const n = typeof v === "number" ? v : typeof v === "string" ? parseIntToken(v) : undefined;
    return n !== undefined && Number.isSafeInteger(n) && isValid(n) ? n : undefined;
  };
  if (typeof value === "string" && value.includes(",")) value = value.split(",");
  if (Array.isArray(value)) {
    if (value.length === 0) return undefined;
    const out: number[] = [];
    for (const v of value) {
      const n = one(v);
      if (n === undefined) return undefined;
      out.push(n);
    }
    return out;
  }
  return one(value);
}

function toStringList(value: unknown): string[] | undefined {
  const parts = typeof value === "string" ? value.split(",") : Array.isArray(value) ? value : undefined;
  if (parts === undefined) return undefined;
  const out: string[] = [];
  for (const p of parts) {
    if (typeof p !== "string") return undefined;
    const t = p.trim();
    if (t !== "") out.push(t);
  }
  return out;
}

const isPort = (n: number): boolean => n >= 1 && n <= 65535;
const isNodeId = (n: number): boolean => n >= 0;

function normalizeSpecTask(raw: unknown, index: number, fail: (detail: string) => never): SpecTask {
  if (!isRecord(raw)) fail(`platform spec task ${index} is not an object`);
  const task: SpecTask = { extras: {} };
  const bad = (key: string, value: unknown): never =>
    fail(`platform spec task ${index} has an invalid ${quote(key)} value ${describe(value)}`);
  for (const [key, value] of Object.entries(raw)) {
    if (value === undefined || value === null) continue;
    switch (key) {
      case "address":
        if (typeof value !== "string" || value.trim() === "") bad(key, value);
        task.address = (value as string).trim();
        break;
      case "ports":
        task.ports = toIntList(value, isPort) ?? bad(key, value);
        break;
      case "node_ids":
      case "nodeIds":
        task.nodeIds = toIntList(value, isNodeId) ?? bad(key, value);
        break;
      case "attach_to":
      case "attachTo":
        task.attachTo = toStringList(value) ?? bad(key, value);
        break;
      case "labels":
        task.labels = toStringList(value) ?? bad(key, value);
        break;
      default:
        // DI-engine overwrites these with the global values; so do we.
        if (!SKIPPED_SPEC_KEYS.has(key)) task.extras[camelCase(key)] = value;
    }
  }
  return task;
}

function normalizeSpec(spec: unknown, nTasks: number, fail: (detail: string) => never): SpecTask[] | undefined {
  if (spec === undefined || spec === null || spec === "") return undefined;
  if (typeof spec === "string") spec = loadPlatformSpec(spec);
  if (!isRecord(spec) || !Array.isArray(spec["tasks"])) {
    fail('the platform spec must be an object with a "tasks" list');
  }
  const tasks = (spec as { tasks: unknown[] }).tasks;
  if (tasks.length !== nTasks) {
    fail(`the platform spec lists ${tasks.length} task(s), but the platform has ${nTasks}`);
  }
  return tasks.map((t, i) => normalizeSpecTask(t, i, fail));
}

/** The most worker processes one launch starts on its machine (`nParallelWorkers`). */
export const MAX_LOCAL_WORKERS = 4096;

/**
 * DI-engine's `padding_param`: a number `v` becomes `v, v+1, ... v+n-1`; a one-element list is
 * treated as its element; `undefined` starts at `start`; another list is kept as it is.
 */
export function padParam(value: number | number[] | undefined, n: number, start: number): number[] {
  if (Array.isArray(value) && value.length === 1) value = value[0];
  if (value === undefined) value = start;
  if (typeof value === "number") return Array.from({ length: n }, (_, i) => (value as number) + i);
  return [...value];
}

/** `padParam` for one task of a platform layout, which must give exactly one value per worker. */
function perWorker(
  value: number | number[],
  n: number,
  what: string,
  index: number,
  fail: (detail: string) => never,
): number[] {
  const list = padParam(value, n, 0);
  if (list.length !== n) fail(`task ${index} has ${list.length} ${what} for ${n} parallel workers`);
  return list;
}

function tcpLink(address: string, port: number): string {
  return `tcp://${address}:${port}`;
}

/**
 * Resolve this process's launch arguments from a platform layout, the CLI arguments and an optional
 * platform spec. Shared by the k8s and slurm parsers; not part of the public API.
 *
 * Rules (DI-engine's, bugs fixed): a spec task's `address`/`ports`/`node_ids` win over the CLI's,
 * which win over the platform defaults (host of the rank, `defaultPort`, `rank * parallelWorkers`).
 * `attachTo` comes from the CLI, else from the spec task (with `$node.<id>` references resolved),
 * else from the topology: rank 0 dials nobody; `mesh` dials every worker of every lower rank;
 * `star` dials every worker of rank 0; `alone` dials nobody. With `mqType: "redis"` no address is
 * needed, so `address`, `ports` and `attachTo` are left as the CLI gave them.
 *
 * @internal
 * @param layout What the platform knows (hosts, rank, default ports, own-address check).
 * @param args The CLI arguments, with the raw `platformSpec` (string, object or nothing).
 * @returns The arguments this process should launch with.
 * @throws {PlatformError} If any argument or the spec is invalid.
 *
 * @example Resolve rank 1 of two hosts
 * ```ts
 * resolvePlatformTask(
 *   { platform: "k8s", hosts: ["a", "b"], rank: 1, defaultPort: () => 50515, checkOwnAddress() {} },
 *   { parallelWorkers: 1, topology: "mesh", protocol: "tcp" },
 * ); // attachTo: ["tcp://a:50515"]
 * ```
 */
export function resolvePlatformTask(
  layout: PlatformLayout,
  args: PlatformArgs & { platformSpec?: unknown },
): PlatformArgs {
  const fail = (detail: string): never => {
    throw new PlatformError(`Cannot parse ${layout.platform} platform: ${detail}`);
  };
  const { hosts, rank } = layout;

  const pw = args.parallelWorkers ?? 1;
  if (typeof pw !== "number" || !Number.isSafeInteger(pw) || pw < 1) {
    fail(`parallel workers ${quote(pw)} must be a positive integer`);
  }
  const topology = args.topology ?? "alone";
  if (topology !== "mesh" && topology !== "star" && topology !== "alone") {
    fail(`unknown topology ${quote(topology)}: expected "mesh", "star" or "alone"`);
  }
  const protocol = args.protocol ?? "tcp";
  if (protocol !== "tcp" && protocol !== "ipc") {
    fail(`unknown protocol ${quote(protocol)}: expected "tcp"`);
  }
  const addressFree = args.mqType === "redis";
  if (protocol === "ipc" && !addressFree) {
    fail('protocol "ipc" cannot reach other machines: use "tcp"');
  }

  let cliPorts: number | number[] | undefined;
  if (args.ports !== undefined && args.ports !== null) {
    cliPorts = toIntList(args.ports, isPort) ?? fail(`invalid ports ${describe(args.ports)}`);
  }
  let cliNodeIds: number | number[] | undefined;
  if (args.nodeIds !== undefined && args.nodeIds !== null) {
    cliNodeIds = toIntList(args.nodeIds, isNodeId) ?? fail(`invalid node ids ${describe(args.nodeIds)}`);
  }
  let cliAddress: string | undefined;
  if (args.address !== undefined && args.address !== null && args.address !== "") {
    if (typeof args.address !== "string") fail(`invalid address ${describe(args.address)}`);
    cliAddress = args.address;
  }
  let cliAttachTo: string[] | undefined;
  if (args.attachTo !== undefined && args.attachTo !== null) {
    cliAttachTo = toStringList(args.attachTo) ?? fail(`invalid attach-to list ${describe(args.attachTo)}`);
  }

  const specTasks = normalizeSpec(args.platformSpec, hosts.length, fail);

  // Every task's base fields first, so `$node.<id>` lookups never recurse (DI-engine's could).
  const tasks: Task[] = hosts.map((host, i) => {
    const spec = specTasks?.[i];
    const address = spec?.address ?? cliAddress ?? host;
    let ports = spec?.ports ?? cliPorts;
    if (ports === undefined) {
      const p = layout.defaultPort(i, pw);
      if (!isPort(p) || !isPort(p + pw - 1)) fail(`task ${i} would use port ${p + pw - 1}, outside 1-65535`);
      ports = p;
    }
    const nodeIds = spec?.nodeIds ?? cliNodeIds ?? i * pw;
    const workerPorts = perWorker(ports, pw, "ports", i, fail);
    if (!workerPorts.every(isPort)) fail(`task ${i} would use ports outside 1-65535`);
    return {
      address,
      ports,
      nodeIds,
      workerPorts,
      workerNodeIds: perWorker(nodeIds, pw, "node ids", i, fail),
      spec,
    };
  });

  const owner = new Map<number, { task: number; worker: number }>();
  tasks.forEach((t, i) => {
    t.workerNodeIds.forEach((id, j) => {
      const prev = owner.get(id);
      if (prev !== undefined) {
        fail(
          prev.task === i
            ? `task ${i} uses node id ${id} twice`
            : `node id ${id} is used by tasks ${prev.task} and ${i}`,
        );
      }
      owner.set(id, { task: i, worker: j });
    });
  });

  const own = tasks[rank] ?? fail(`rank ${rank} is outside the ${hosts.length} tasks`);
  const { platformSpec: _spec, platform: _platform, ...rest } = args;
  const out: PlatformArgs = {
    ...rest,
    ...own.spec?.extras,
    parallelWorkers: pw,
    topology,
    protocol,
    nodeIds: own.nodeIds,
  };
  const labels = own.spec?.labels ?? args.labels;
  if (labels !== undefined) out.labels = labels;
  // In a mesh (and over Redis, where every node reaches every other) each worker waits for every
  // node of the job, not only those it dials: the higher ranks dial this host, and an event this
  // host's `main` sent before they connected would be lost.
  const others = tasks.filter((_, i) => i !== rank).flatMap((t) => t.workerNodeIds);
  const explicitLinks = (cliAttachTo !== undefined && cliAttachTo.length > 0) || (own.spec?.attachTo?.length ?? 0) > 0;
  if ((addressFree || (topology === "mesh" && !explicitLinks)) && others.length > 0) out.expectPeers = others;
  if (addressFree) return out;

  layout.checkOwnAddress(own.address);

  const resolveRef = (item: string): string => {
    if (!item.startsWith("$node.")) return item;
    const id = parseIntToken(item.slice("$node.".length));
    if (id === undefined) fail(`attach-to reference ${quote(item)} is not "$node.<id>"`);
    const hit = owner.get(id as number) ?? fail(`attach-to reference ${quote(item)} matches no node id`);
    const task = tasks[hit.task] as Task;
    return tcpLink(task.address, task.workerPorts[hit.worker] as number);
  };
  const workerLinks = (t: Task): string[] => t.workerPorts.map((p) => tcpLink(t.address, p));

  let attachTo: string[];
  const explicit = cliAttachTo !== undefined && cliAttachTo.length > 0 ? cliAttachTo : own.spec?.attachTo;
  if (explicit !== undefined && explicit.length > 0) attachTo = explicit.map(resolveRef);
  else if (rank === 0 || topology === "alone") attachTo = [];
  else if (topology === "star") attachTo = workerLinks(tasks[0] as Task);
  else attachTo = tasks.slice(0, rank).flatMap(workerLinks);

  out.address = own.address;
  out.ports = own.ports;
  out.attachTo = attachTo;
  return out;
}
