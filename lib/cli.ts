/**
 * @module
 * The `ditask` command line (DI-engine's `ditask`): load a `main` function from a package and run
 * it with `Parallel.runner`, locally or, with `--platform k8s|slurm`, as one process of a cluster.
 * `lib/bin.ts` is the executable; this module only parses, resolves and returns an exit code.
 *
 * @example Run the CLI from code
 * ```ts
 * import { main } from "./lib/cli.ts";
 * const code = await main(["--package", "examples", "--main", "app.main", "--parallel-workers", "2"]);
 * ```
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { basename, dirname, extname, isAbsolute, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { DitaskError, RemoteError, WorkerExitError } from "./errors.ts";
import type { MainFn, Parallel, ParallelOptions } from "./parallel.ts";
import type { TlsOptions } from "./transport/ws/mod.ts";
import { parsePlatform, type PlatformArgs, PLATFORMS } from "./platform/mod.ts";
import { MAX_LOCAL_WORKERS, padParam } from "./platform/spec.ts";
import { enableTypeScriptImports, envSnapshot, getEnv, MAX_TIMER_MS, runtimeKey } from "./runtime.ts";
import { VERSION } from "./version.ts";

/** Exit code of a run that ended well. */
const EXIT_OK = 0;
/** Exit code of a run whose worker failed, or whose main module could not be loaded. */
const EXIT_FAILED = 1;
/** Exit code of bad command-line input. */
const EXIT_USAGE = 2;

/**
 * Raised for bad command-line input: an unknown option, a malformed value, a main module or export
 * that cannot be found. `main()` turns it into one `ditask: <message>` line and exit code 2. Its
 * code is `"ERR_DITASK_USAGE"`.
 *
 * @example Tell usage errors apart
 * ```ts
 * try { resolveMainTarget("nope.main", "."); }
 * catch (err) { if (err instanceof UsageError) console.error(err.message); }
 * ```
 */
export class UsageError extends DitaskError {
  /**
   * Create a usage error.
   *
   * @param message What is wrong, e.g. `Unknown option "--foo"`.
   * @param options The underlying error, if any.
   */
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, code: "ERR_DITASK_USAGE" });
    this.name = "UsageError";
  }
}

const OPTIONS = {
  package: { type: "string", short: "p" },
  main: { type: "string", short: "m" },
  "parallel-workers": { type: "string" },
  protocol: { type: "string" },
  ports: { type: "string" },
  "attach-to": { type: "string" },
  address: { type: "string" },
  labels: { type: "string" },
  "node-ids": { type: "string" },
  topology: { type: "string" },
  platform: { type: "string" },
  "platform-spec": { type: "string" },
  "mq-type": { type: "string" },
  "redis-host": { type: "string" },
  "redis-port": { type: "string" },
  "startup-interval": { type: "string" },
  "connect-timeout": { type: "string" },
  "auto-recover": { type: "boolean" },
  "max-retries": { type: "string" },
  local_rank: { type: "string" },
  secret: { type: "string" },
  "tls-cert": { type: "string" },
  "tls-key": { type: "string" },
  "tls-ca": { type: "string" },
  quiet: { type: "boolean", short: "q" },
  version: { type: "boolean", short: "v" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * The help text of `ditask --help`.
 *
 * @example Print it
 * ```ts
 * console.log(HELP);
 * ```
 */
export const HELP = `Usage: ditask [options]

Run the main function of a package in one or more worker processes that talk through task
events over a WebSocket mesh (DI-engine's ditask).

Options:
  -p, --package <dir>          Directory holding the main module (default: the working directory)
  -m, --main <module.fn>       Function to run: "app.main" loads app.ts, app.js, app.mjs,
                               app/mod.ts or app/index.ts|js in the package and calls its export
                               "main"; "a.b.main" loads a/b.ts; "path/to/file.ts#fn" names a file
                               (default: "<package directory name>.main")
      --parallel-workers <n>   Worker processes started by this ditask (default: 1)
      --protocol <tcp|ipc>     Transport between workers (default: tcp)
      --address <host>         Host the workers listen on (default: 127.0.0.1; with --platform,
                               this machine's host in the cluster)
      --ports <list>           First port, or one port per worker: 50515 or 50515,50516
                               (default: free ports; 50515 on k8s, 15151 on slurm)
      --topology <t>           mesh, star or alone (default: alone)
      --attach-to <list>       Addresses every worker also dials: tcp://10.0.0.4:50515,...
      --node-ids <list>        First node id, or one id per worker (default: 0)
      --labels <list>          Labels of every worker: learner,gpu
      --platform <k8s|slurm>   Read the cluster layout from Kubernetes (DI_NODES and DI_RANK, an
                               Indexed Job or a StatefulSet) or Slurm (SLURM_*) variables
      --platform-spec <spec>   Per-process settings for --platform: a JSON string or a .json file
      --mq-type <ws|nng|redis> Message transport (default: ws; nng is an alias of ws)
      --redis-host <host>      Redis host (--mq-type redis)
      --redis-port <port>      Redis port (--mq-type redis)
      --startup-interval <s>   Accepted for DI-engine scripts; the mesh needs no start-up delay
      --connect-timeout <s>    How long a worker waits for its peers at start-up (default: 60)
      --auto-recover           Re-run main in its worker after it throws
      --max-retries <n>        How often --auto-recover may re-run main (default: no limit)
      --local_rank <n>         Accepted and ignored (PyTorch launchers pass it)
      --secret <s>             Shared secret every connection must prove (default: DITASK_SECRET;
                               the variable keeps it out of the process list)
      --tls-cert <file>        Serve and dial wss with this PEM certificate chain (with --tls-key)
      --tls-key <file>         The PEM private key of --tls-cert
      --tls-ca <file>          PEM CA certificates peers must chain to (default: the system's)
  -q, --quiet                  Print none of ditask's own lines (errors are still printed)
  -v, --version                Print the version
  -h, --help                   Print this help

Exit codes: 0 when every worker ended well, 1 when one failed, 2 for bad arguments.

Examples:
  ditask --package . --main app.main --parallel-workers 4 --topology mesh
  ditask --platform k8s --topology mesh --package /app --main train.main --labels learner`;

/** The modules a dotted `--main` may name, tried in this order inside the package directory. */
const MODULE_FILES = [".ts", ".js", ".mjs"];
const MODULE_INDEXES = ["mod.ts", "mod.js", "index.ts", "index.js", "index.mjs"];
const FILE_EXTENSIONS = /\.(?:[cm]?[jt]s|tsx)$/;
const TYPESCRIPT_EXTENSIONS = new Set([".ts", ".mts", ".cts", ".tsx"]);

type Values = { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]["type"] extends "boolean" ? boolean : string };

/** The function `--main` names: the file that exports it, the export, and how it was written. */
interface MainTarget {
  file: string;
  exportName: string;
  spec: string;
}

function quote(value: string): string {
  return JSON.stringify(value);
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_v, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const next = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = row[j]!;
      row[j] = next;
    }
  }
  return row[b.length]!;
}

function suggest(option: string): string {
  if (!option.startsWith("--")) return "";
  const name = option.slice(2).split("=")[0]!;
  const normal = name.replace(/_/g, "-");
  let best: string | undefined;
  let bestDistance = 3;
  for (const known of Object.keys(OPTIONS)) {
    const d = distance(normal, known.replace(/_/g, "-"));
    if (d < bestDistance) {
      best = known;
      bestDistance = d;
    }
  }
  return best === undefined ? "" : `: did you mean "--${best}"?`;
}

/** Turn a `node:util` parseArgs error into a usage error in the project's message style. */
function parseArgsError(err: unknown): UsageError {
  const e = err as { code?: string; message?: string };
  const token = /'([^']+)'/.exec(e.message ?? "")?.[1] ?? "";
  // "--ports <value>" and "-q, --quiet" name the option in parseArgs' own style.
  const option = token.split(" ")[0]!.replace(/,$/, "");
  const long = token.includes(", ") ? token.split(", ").pop()!.split(" ")[0]! : option;
  switch (e.code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return new UsageError(`Unknown option ${quote(token)}${suggest(token)}`, { cause: err });
    case "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL":
      return new UsageError(`Unexpected argument ${quote(token)}: ditask takes options only`, { cause: err });
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      if (/does not take an argument/.test(e.message ?? "")) {
        return new UsageError(`Option ${quote(long)} does not take a value`, { cause: err });
      }
      return new UsageError(`Option ${quote(long)} needs a value`, { cause: err });
    default:
      return new UsageError(`Invalid arguments: ${(e.message ?? String(err)).split("\n")[0]}`, { cause: err });
  }
}

function parseIntList(option: string, raw: string, min: number, max: number, what: string): number | number[] {
  const parts = raw.split(",").map((p) => p.trim());
  const values = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : NaN));
  if (values.some((v) => !Number.isSafeInteger(v) || v < min || v > max)) {
    throw new UsageError(`Invalid --${option} ${quote(raw)}: expected ${what} separated by commas`);
  }
  return values.length === 1 ? values[0]! : values;
}

function parseInteger(option: string, raw: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const v = /^\s*\d+\s*$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(v) || v < min || v > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer from ${min} to ${max}`;
    throw new UsageError(`Invalid --${option} ${quote(raw)}: expected ${range}`);
  }
  return v;
}

function parseChoice<T extends string>(option: string, raw: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(raw)) {
    const list = choices.map(quote);
    const expected = list.length === 2
      ? `${list[0]} or ${list[1]}`
      : `${list.slice(0, -1).join(", ")} or ${list.at(-1)}`;
    throw new UsageError(`Unknown --${option} ${quote(raw)}: expected ${expected}`);
  }
  return raw as T;
}

function parseList(raw: string): string[] {
  return raw.split(",").map((s) => s.trim()).filter((s) => s !== "");
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}

/**
 * Find the function `--main` names, as DI-engine's `ditask` does but never through `node_modules`:
 * the package directory always wins over an installed package of the same name (DI-engine issue
 * 709).
 *
 * - `mod.fn`: `mod` is a module path inside `packageDir` (`a.b` is `a/b`), loaded from the first of
 *   `mod.ts`, `mod.js`, `mod.mjs`, `mod/mod.ts`, `mod/mod.js`, `mod/index.ts`, `mod/index.js`,
 *   `mod/index.mjs` that exists; `fn` is the export to call. A name without a dot (`app`) calls
 *   `main`.
 * - `path/to/file.ts#fn` (or just `path/to/file.ts`, which calls `main`): a file, relative to the
 *   package directory or else to the working directory, or absolute.
 * - Nothing: `<name of packageDir>.main`, DI-engine's default; the package directory's own
 *   `mod.ts`/`index.*` is tried last.
 *
 * @param main The `--main` value, or `undefined`.
 * @param packageDir The absolute package directory.
 * @returns The file to import, the export to call and the spec as written.
 * @throws {UsageError} If the value is malformed or no file matches.
 *
 * @example Resolve a nested module
 * ```ts
 * resolveMainTarget("agents.learner.main", "/app"); // { file: "/app/agents/learner.ts", exportName: "main", ... }
 * ```
 */
export function resolveMainTarget(main: string | undefined, packageDir: string): MainTarget {
  const hash = main?.lastIndexOf("#") ?? -1;
  if (main !== undefined && (hash >= 0 || FILE_EXTENSIONS.test(main))) {
    const path = hash >= 0 ? main.slice(0, hash) : main;
    const exportName = hash >= 0 ? main.slice(hash + 1) : "main";
    if (path === "" || exportName === "") {
      throw new UsageError(`Invalid --main ${quote(main)}: expected "path/to/file.ts#function"`);
    }
    const bases = isAbsolute(path) ? [path] : [join(packageDir, path), resolve(path)];
    for (const base of bases) {
      const file = isFile(base) ? base : moduleFile(base);
      if (file !== undefined) return { file, exportName, spec: main };
    }
    const where = isAbsolute(path) ? "" : ` in package ${quote(packageDir)} or the working directory`;
    throw new UsageError(`Cannot find main file ${quote(path)}${where}`);
  }
  let modulePath: string;
  let exportName: string;
  if (main === undefined) {
    modulePath = basename(packageDir, extname(packageDir));
    exportName = "main";
  } else {
    // A bare module name ("app") calls its "main".
    const dot = main.lastIndexOf(".");
    modulePath = dot < 0 ? main : main.slice(0, dot);
    exportName = dot < 0 ? "main" : main.slice(dot + 1);
    if (dot === 0 || exportName === "" || modulePath.split(".").some((s) => s === "")) {
      throw new UsageError(
        `Invalid --main ${quote(main)}: expected "module.function" (e.g. "app.main") or "path/to/file.ts#function"`,
      );
    }
  }
  const relative = modulePath.split(".").join("/");
  const file = moduleFile(join(packageDir, relative)) ??
    (main === undefined ? moduleFile(packageDir, true) : undefined);
  if (file === undefined) {
    const tried = [...MODULE_FILES.map((e) => relative + e), ...MODULE_INDEXES.map((f) => `${relative}/${f}`)];
    throw new UsageError(
      `Cannot find module ${quote(modulePath)} in package ${quote(packageDir)}: tried ${tried.join(", ")}`,
    );
  }
  return { file, exportName, spec: `${modulePath}.${exportName}` };
}

/** The module file of `base` (`base.ts`, ..., `base/index.mjs`), or undefined. */
function moduleFile(base: string, indexOnly = false): string | undefined {
  const candidates = [
    ...(indexOnly ? [] : MODULE_FILES.map((e) => base + e)),
    ...MODULE_INDEXES.map((f) => join(base, f)),
  ];
  return candidates.find(isFile);
}

/** Import the target's file and return the function it names. */
async function loadMain(target: MainTarget): Promise<MainFn<[]>> {
  if (TYPESCRIPT_EXTENSIONS.has(extname(target.file))) {
    try {
      await enableTypeScriptImports();
    } catch (err) {
      throw new UsageError(`Cannot load ${quote(target.file)}: ${(err as Error).message}`, { cause: err });
    }
  }
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(target.file).href)) as Record<string, unknown>;
  } catch (err) {
    throw new LoadError(`Cannot load ${quote(target.file)}: ${firstLine(err)}${commonJsHint(target.file)}`, err);
  }
  // A CommonJS module's exports may only be visible on its default export.
  const cjs = mod["default"];
  const exports = target.exportName in mod || typeof cjs !== "object" || cjs === null || !(target.exportName in cjs)
    ? mod
    : (cjs as Record<string, unknown>);
  if (!(target.exportName in exports)) {
    const functions = Object.keys(exports).filter((k) => typeof exports[k] === "function");
    const shown = functions.length > 6 ? [...functions.slice(0, 6), "..."] : functions;
    const hint = functions.length > 0 ? ` (its functions: ${shown.join(", ")})` : commonJsHint(target.file);
    throw new UsageError(`Module ${quote(target.file)} has no export ${quote(target.exportName)}${hint}`);
  }
  const fn = exports[target.exportName];
  if (typeof fn !== "function") {
    throw new UsageError(`Export ${quote(target.exportName)} of ${quote(target.file)} is not a function`);
  }
  return fn as MainFn<[]>;
}

/**
 * On Node, a `.ts` or `.js` file is CommonJS unless the nearest package.json says
 * `"type": "module"`; ditask is an ES module with top-level await, which CommonJS cannot load.
 */
function commonJsHint(file: string): string {
  const ext = extname(file);
  if (runtimeKey !== "node" || (ext !== ".ts" && ext !== ".js")) return "";
  for (let dir = dirname(file);; dir = dirname(dir)) {
    const manifest = join(dir, "package.json");
    if (isFile(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, "utf8")) as { type?: unknown }).type === "module") return "";
      } catch {
        // An unreadable manifest: Node fails on it with its own message.
      }
      break;
    }
    if (dirname(dir) === dir) break;
  }
  return ` (on Node this file is CommonJS: add "type": "module" to its package.json, or name it ${
    ext === ".ts" ? ".mts" : ".mjs"
  })`;
}

/** A main module that exists but failed to load (a syntax error, a failing import): exit code 1. */
class LoadError extends Error {
  constructor(message: string, cause: unknown) {
    super(message, { cause });
    this.name = "LoadError";
  }
}

/** The message of `err` on one line: its first line, and the next one when the first ends with ":". */
function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  if (lines.length === 0) return err instanceof Error ? err.name : "error";
  return lines[0]!.endsWith(":") && lines.length > 1 ? `${lines[0]} ${lines[1]}` : lines[0]!;
}

function describeWorkerFailure(err: WorkerExitError): string {
  // The cause is the worker's own error (a RemoteError rebuilt from another process).
  if (err.cause instanceof Error) {
    return `node ${err.nodeId} failed: ${firstLine(err.cause)}`;
  }
  if (err.signal) return `node ${err.nodeId} was killed by ${err.signal}`;
  if (err.exitCode !== null) return `node ${err.nodeId} exited with code ${err.exitCode}`;
  return `node ${err.nodeId} failed: ${firstLine(err)}`;
}

/** Everything the command line asks for, checked, before the platform is applied. */
interface Parsed {
  quiet: boolean;
  packageDir: string;
  main: string | undefined;
  platform: string | undefined;
  args: PlatformArgs & { platformSpec?: string };
}

function parseValues(v: Values): Parsed {
  const args: Parsed["args"] = {
    parallelWorkers: v["parallel-workers"] === undefined
      ? 1
      : parseInteger("parallel-workers", v["parallel-workers"], 1, MAX_LOCAL_WORKERS),
    topology: v.topology === undefined
      ? "alone"
      : parseChoice("topology", v.topology, ["mesh", "star", "alone"] as const),
    protocol: v.protocol === undefined ? "tcp" : parseChoice("protocol", v.protocol, ["tcp", "ipc"] as const),
  };
  if (v.address !== undefined) {
    if (v.address.trim() === "") throw new UsageError('Invalid --address "": expected a host name or address');
    args.address = v.address.trim();
  }
  if (v.ports !== undefined) args.ports = parseIntList("ports", v.ports, 1, 65535, "port numbers from 1 to 65535");
  if (v["node-ids"] !== undefined) {
    args.nodeIds = parseIntList("node-ids", v["node-ids"], 0, Number.MAX_SAFE_INTEGER, "node ids (integers >= 0)");
  }
  if (v["attach-to"] !== undefined) args.attachTo = parseList(v["attach-to"]);
  if (v.labels !== undefined) args.labels = parseList(v.labels);
  if (v["mq-type"] !== undefined) args.mqType = parseChoice("mq-type", v["mq-type"], ["ws", "nng", "redis"] as const);
  if (v["redis-host"] !== undefined) args.redisHost = v["redis-host"];
  if (v["redis-port"] !== undefined) args.redisPort = parseInteger("redis-port", v["redis-port"], 1, 65535);
  if (v["startup-interval"] !== undefined) {
    const s = Number(v["startup-interval"]);
    if (v["startup-interval"].trim() === "" || !Number.isFinite(s) || s < 0) {
      throw new UsageError(
        `Invalid --startup-interval ${quote(v["startup-interval"])}: expected a number of seconds >= 0`,
      );
    }
    args.startupInterval = s;
  }
  if (v["connect-timeout"] !== undefined) {
    const s = Number(v["connect-timeout"]);
    if (v["connect-timeout"].trim() === "" || !Number.isFinite(s) || s <= 0 || s * 1000 > MAX_TIMER_MS) {
      throw new UsageError(
        `Invalid --connect-timeout ${quote(v["connect-timeout"])}: expected a number of seconds > 0 and at most ${Math.floor(MAX_TIMER_MS / 1000)}`,
      );
    }
    args.connectTimeout = Math.round(s * 1000);
  }
  if (v["auto-recover"]) args.autoRecover = true;
  if (v["max-retries"] !== undefined) args.maxRetries = parseInteger("max-retries", v["max-retries"], 0);
  if (v.secret !== undefined) {
    if (v.secret === "") throw new UsageError('Invalid --secret "": expected a non-empty string');
    args.secret = v.secret;
  }
  if (v["tls-cert"] !== undefined || v["tls-key"] !== undefined || v["tls-ca"] !== undefined) {
    if (v["tls-cert"] === undefined || v["tls-key"] === undefined) {
      throw new UsageError('Options "--tls-cert" and "--tls-key" go together');
    }
    const tls: TlsOptions = { cert: readPem("tls-cert", v["tls-cert"]), key: readPem("tls-key", v["tls-key"]) };
    if (v["tls-ca"] !== undefined) tls.ca = readPem("tls-ca", v["tls-ca"]);
    args.tls = tls;
  }
  if (v.platform !== undefined) parseChoice("platform", v.platform, PLATFORMS);
  if (v["platform-spec"] !== undefined) {
    if (v.platform === undefined) {
      throw new UsageError('Option "--platform-spec" needs "--platform k8s" or "--platform slurm"');
    }
    args.platformSpec = v["platform-spec"];
  }
  const packageDir = resolve(v.package ?? ".");
  if (!isDirectory(packageDir)) {
    throw new UsageError(
      existsSync(packageDir)
        ? `Package ${quote(packageDir)} is not a directory`
        : `Package directory ${quote(packageDir)} does not exist`,
    );
  }
  return { quiet: v.quiet ?? false, packageDir, main: v.main, platform: v.platform, args };
}

function readPem(option: string, path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new UsageError(`Cannot read --${option} ${quote(path)}: ${firstLine(err)}`, { cause: err });
  }
}

/** Build the runner options from the (platform-resolved) arguments. */
function runnerOptions(a: PlatformArgs): ParallelOptions {
  const options: ParallelOptions = {
    nParallelWorkers: a.parallelWorkers,
    topology: a.topology,
    protocol: a.protocol,
    outputPrefix: a.parallelWorkers > 1,
  };
  if (a.address !== undefined) options.address = a.address;
  if (a.ports !== undefined) options.ports = a.ports;
  if (a.nodeIds !== undefined) options.nodeIds = a.nodeIds;
  if (a.attachTo !== undefined) options.attachTo = a.attachTo;
  if (a.expectPeers !== undefined) options.expectPeers = a.expectPeers;
  if (a.labels !== undefined) options.labels = a.labels;
  if (a.mqType !== undefined) options.mqType = a.mqType as NonNullable<ParallelOptions["mqType"]>;
  if (a["redisHost"] !== undefined) options.redisHost = a["redisHost"] as string;
  if (a["redisPort"] !== undefined) options.redisPort = a["redisPort"] as number;
  if (a["startupInterval"] !== undefined) options.startupInterval = a["startupInterval"] as number;
  if (a["connectTimeout"] !== undefined) options.connectTimeout = a["connectTimeout"] as number;
  if (a["autoRecover"] !== undefined) options.autoRecover = a["autoRecover"] as boolean;
  if (a["maxRetries"] !== undefined) options.maxRetries = a["maxRetries"] as number;
  if (a["secret"] !== undefined) options.secret = a["secret"] as string;
  if (a["tls"] !== undefined) options.tls = a["tls"] as TlsOptions;
  return options;
}

function describeLaunch(target: MainTarget, o: ParallelOptions, platform: string | undefined, redisAt: string | undefined): string {
  const n = o.nParallelWorkers;
  const nodeIds = padParam(o.nodeIds, n, 0);
  const parts = [`${n} worker${n === 1 ? "" : "s"} (node${n === 1 ? "" : "s"} ${nodeIds.join(", ")})`];
  // Over Redis there is no topology and no address of our own: every node talks through the server.
  if (redisAt !== undefined) parts.push(`through Redis at ${redisAt}`);
  else {
    parts.push(`${o.topology} over ${o.protocol}`);
    if (o.protocol === "tcp") {
      const ports = o.ports === undefined
        ? "free ports"
        : `port${Array.isArray(o.ports) && o.ports.length > 1 ? "s" : ""} ${[o.ports].flat().join(", ")}`;
      parts.push(`on ${o.address ?? "127.0.0.1"} ${ports}`);
    }
    if (o.attachTo !== undefined && o.attachTo.length > 0) parts.push(`attached to ${o.attachTo.join(", ")}`);
  }
  if (o.labels !== undefined && [...o.labels].length > 0) parts.push(`labels ${[...o.labels].join(", ")}`);
  if (platform !== undefined) parts.push(`from ${platform}`);
  return `ditask: running ${target.spec} (${target.file}): ${parts.join(", ")}`;
}

/**
 * Run the `ditask` command line: parse `argv` (without the runtime and script), resolve the main
 * function, and run it with `Parallel.runner`. Workers run the same entry script with the same
 * arguments, so in a worker this reaches the same runner call and never returns (the worker ends
 * its process when `main` is done). Never exits the process itself: `lib/bin.ts` does, with the
 * returned code.
 *
 * Output: `--help` and `--version` print to stdout; ditask's own lines (`ditask: ...`) go to
 * stderr, one line per error, without a stack trace (set `DITASK_LOG=debug` to see it).
 *
 * @param argv The command-line arguments, e.g. `["--main", "app.main", "--parallel-workers", "2"]`.
 * @returns 0 when every worker ended well; 1 when a worker failed or the main module could not be
 *   loaded; 2 for bad input (an unknown option, a malformed value, a missing module or export, a
 *   bad platform spec or missing platform variables).
 *
 * @example Two workers in a mesh
 * ```ts
 * const code = await main(["-p", ".", "-m", "app.main", "--parallel-workers", "2", "--topology", "mesh"]);
 * ```
 */
export async function main(argv: string[]): Promise<number> {
  if (argv.includes("-h") || argv.includes("--help")) {
    console.log(HELP);
    return EXIT_OK;
  }
  if (argv.includes("-v") || argv.includes("--version")) {
    console.log(`ditask ${VERSION}`);
    return EXIT_OK;
  }
  const debug = (getEnv("DITASK_LOG") ?? "").toLowerCase() === "debug";
  const fail = (code: number, message: string, err?: unknown): number => {
    console.error(`ditask: ${message}`);
    // A worker's error: its own stack (with its cause), not where the launcher rebuilt it.
    const stack = err instanceof RemoteError && err.remoteStack ? err.remoteStack : err instanceof Error ? err.stack : undefined;
    if (debug && stack) console.error(stack);
    return code;
  };
  let parsed: Parsed;
  let options: ParallelOptions;
  let target: MainTarget;
  let run: ReturnType<typeof Parallel.runner>;
  let fn: MainFn<[]>;
  let workerEnv: string;
  let redisAt: string | undefined;
  try {
    let values: Values;
    try {
      values = parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }).values as Values;
    } catch (err) {
      throw parseArgsError(err);
    }
    parsed = parseValues(values);
    const launch = parsed.platform === undefined
      ? parsed.args
      : parsePlatform(parsed.platform, envSnapshot(), parsed.args);
    options = runnerOptions(launch);
    target = resolveMainTarget(parsed.main, parsed.packageDir);
    // Loaded only now (it brings the transport), so --help and most bad input answer at once.
    // One dynamic import, so the npm bundle splits into few files (see scripts/bundle.js).
    const parallel = await import("./parallel.ts");
    workerEnv = parallel.WORKER_ENV;
    if (options.mqType === "redis") redisAt = parallel.redisTarget(options);
    // Checks every option (ports per worker, addresses, node ids) before anything starts.
    run = parallel.Parallel.runner(options);
    fn = await loadMain(target);
  } catch (err) {
    if (err instanceof LoadError) return fail(EXIT_FAILED, err.message, err.cause);
    if (err instanceof DitaskError || err instanceof TypeError || err instanceof RangeError) {
      return fail(EXIT_USAGE, firstLine(err), err);
    }
    return fail(EXIT_USAGE, `Invalid arguments: ${firstLine(err)}`, err);
  }
  const isWorker = getEnv(workerEnv) !== undefined;
  if (!parsed.quiet && !isWorker) console.error(describeLaunch(target, options, parsed.platform, redisAt));
  try {
    await run(fn);
    return EXIT_OK;
  } catch (err) {
    if (err instanceof WorkerExitError) return fail(EXIT_FAILED, describeWorkerFailure(err), err.cause ?? err);
    return fail(EXIT_FAILED, firstLine(err), err);
  }
}
