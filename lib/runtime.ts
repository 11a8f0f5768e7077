// The only module that knows which runtime it runs on. Everything that differs between Node and
// Deno (process spawning, exit, environment, the entry script) goes through here.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { DitaskError } from "./errors.ts";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

interface DenoLike {
  execPath(): string;
  mainModule: string;
  args: string[];
  env: { get(k: string): string | undefined; set(k: string, v: string): void; delete(k: string): void };
  exit(code?: number): never;
}

const deno = (globalThis as { Deno?: DenoLike }).Deno;

/** Which runtime this process is: `"deno"` or `"node"`. */
export const runtimeKey: "deno" | "node" = deno !== undefined ? "deno" : "node";

const nodeRequire = deno ? undefined : createRequire(import.meta.url);

/**
 * Load `ws`. On Node through `require`, its CommonJS entry: for ws and cbor-x that takes about
 * half the time of an ESM import (no export scan of every CommonJS file; cbor-x's is one bundled
 * file), which counts eight times over when eight workers start at once on two cores. On Deno
 * through `import`, resolved by deno.json's import map.
 */
export async function loadWs(): Promise<typeof import("ws")> {
  return nodeRequire ? (nodeRequire("ws") as typeof import("ws")) : await import("ws");
}

/**
 * The WebSocket implementation the mesh runs on: npm `ws` on Node; on Deno ditask's own over
 * Deno.Conn, which reads large payloads straight into the buffers it delivers (see
 * transport/ws/socket.ts).
 */
export async function loadSocketKit(): Promise<import("./transport/ws/socket.ts").SocketKit> {
  return deno ? (await import("./transport/ws/deno_ws.ts")).denoKit : (await import("./transport/ws/node_ws.ts")).nodeKit;
}

/**
 * Load cbor-x (on Node through `require`, see {@link loadWs}). cbor-x's native string extractor
 * (cbor-extract) is built for Node's V8: Deno loads it and then crashes the process on the first
 * larger message with strings, so on Deno it is switched off before cbor-x loads (cbor-x reads the
 * switch once, when it loads).
 */
export async function loadCbor(): Promise<typeof import("cbor-x")> {
  if (nodeRequire) return nodeRequire("cbor-x") as typeof import("cbor-x");
  setEnv("CBOR_NATIVE_ACCELERATION_DISABLED", "true");
  return await import("cbor-x");
}

/**
 * The longest delay a timer takes, on Node and Deno alike (2^31 - 1 ms, about 24.8 days). Both
 * run a longer one after 1 ms: with a `heartbeatTimeout` of `Infinity` a peer would be reported as
 * left 1 ms after its link dropped, and a `waitFor` of 30 days would time out at once.
 */
export const MAX_TIMER_MS = 2_147_483_647;

/** Read an environment variable; `undefined` when unset or not permitted. */
export function getEnv(name: string): string | undefined {
  try {
    return deno ? deno.env.get(name) : process.env[name];
  } catch {
    return undefined;
  }
}

/** Set an environment variable; returns false when the runtime does not permit it. */
export function setEnv(name: string, value: string | undefined): boolean {
  try {
    if (deno) {
      if (value === undefined) deno.env.delete(name);
      else deno.env.set(name, value);
    } else if (value === undefined) delete process.env[name];
    else process.env[name] = value;
    return true;
  } catch {
    return false;
  }
}

/** A copy of this process's environment. */
export function envSnapshot(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) out[k] = v;
  return out;
}

/** The path of the script this process was started with. */
export function entryScript(): string {
  if (deno) {
    const m = deno.mainModule;
    return m.startsWith("file:") ? fileURLToPath(m) : m;
  }
  return process.argv[1] ?? "";
}

/** The command-line arguments after the script. */
export function scriptArgs(): string[] {
  return deno ? [...deno.args] : process.argv.slice(2);
}

/** Options for {@link spawnScript}. */
export interface SpawnScriptOptions {
  /** The full environment of the child. */
  env: Record<string, string>;
  /** How the child's stdout and stderr are connected. @default "inherit" */
  stdio?: "inherit" | "pipe";
  /** Run the script with this runtime instead of the current one. */
  runtime?: "node" | "deno";
  /** Give the child a stdin pipe that closes when this process dies, so the child can follow it. */
  watchParent?: boolean;
  /** The child's working directory. @default this process's */
  cwd?: string;
  /**
   * Node, when this process runs with an inspector flag (`--inspect`, `--inspect-brk`, ..., on its
   * command line or in `NODE_OPTIONS` of `env`): the
   * child's inspector listens this many ports above ours (`--inspect-port`), as Node's cluster
   * does for its workers, instead of failing on our port.
   */
  inspectOffset?: number;
}

/** Node's inspector flags, which a child would otherwise try to open on this process's port. */
const INSPECT_FLAG = /^--inspect(-brk|-wait)?(=|$)|^--inspect-port(=|$)/;

/**
 * Start `script` with `args` in a new process of the same runtime (Node: `node <execArgv> script`;
 * Deno: `deno run -A script`).
 */
export function spawnScript(script: string, args: string[], options: SpawnScriptOptions): ChildProcess {
  const rt = options.runtime ?? runtimeKey;
  const stdio = options.stdio ?? "inherit";
  let cmd: string;
  let argv: string[];
  if (rt === "deno") {
    cmd = deno ? deno.execPath() : denoExecutable();
    argv = ["run", "-A", script, ...args];
  } else {
    cmd = deno ? "node" : process.execPath;
    const execArgv = deno ? [] : [...process.execArgv];
    const nodeOptions = options.env?.NODE_OPTIONS?.split(/\s+/) ?? [];
    if (options.inspectOffset !== undefined && [...execArgv, ...nodeOptions].some((a) => INSPECT_FLAG.test(a))) {
      // Port 0 (a free port) stays 0 for every child. On the command line, it wins over an
      // inspector flag in NODE_OPTIONS.
      execArgv.push(`--inspect-port=${process.debugPort === 0 ? 0 : process.debugPort + options.inspectOffset}`);
    }
    argv = [...execArgv, script, ...args];
  }
  return spawn(cmd, argv, {
    env: options.env,
    stdio: [options.watchParent ? "pipe" : "ignore", stdio, stdio],
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
  });
}

/** The Deno binary for a Node process that starts Deno: `DITASK_DENO`, the npm `deno` package, or PATH. */
function denoExecutable(): string {
  const env = getEnv("DITASK_DENO");
  if (env) return env;
  const local = join(process.cwd(), "node_modules", ".bin", "deno");
  return existsSync(local) ? local : "deno";
}

/** End this process with `code`. */
export function exitProcess(code: number): never {
  if (deno) deno.exit(code);
  process.exit(code);
}

/** Resident set size of this process in bytes. */
export function rss(): number {
  return process.memoryUsage().rss;
}

/** Run `fn` once when this process receives SIGINT or SIGTERM; returns a function that removes it. */
export function onTerminate(fn: (signal: "SIGINT" | "SIGTERM") => void): () => void {
  const int = () => fn("SIGINT");
  const term = () => fn("SIGTERM");
  process.on("SIGINT", int);
  process.on("SIGTERM", term);
  return () => {
    process.off("SIGINT", int);
    process.off("SIGTERM", term);
  };
}

let typeScriptReady: Promise<"native" | "tsx"> | undefined;

/**
 * Make `import()` of TypeScript files (`.ts`, `.mts`, `.cts`, `.tsx`) work in this process. Deno
 * runs TypeScript itself, and so does a Node that strips types (`process.features.typescript`,
 * Node 22.18+); on Node 20 the loader of the npm package `tsx` is registered in-process with
 * `node:module` `register()` (through `tsx/esm/api` and `tsx/cjs/api`). Workers re-run the entry
 * script, which calls this again, so nothing has to be added to `execArgv`. Calling it again does
 * nothing more.
 *
 * @returns `"native"` when the runtime runs TypeScript by itself, `"tsx"` when the tsx loader was
 *   registered.
 * @throws {DitaskError} (rejects, code `"ERR_DITASK_NO_TYPESCRIPT"`) If Node needs tsx and it
 *   cannot be loaded (not installed, or a Node without `module.register`).
 *
 * @example Import a TypeScript module on Node 20 and on Deno
 * ```ts
 * await enableTypeScriptImports();
 * const mod = await import(pathToFileURL("app.ts").href);
 * ```
 */
export function enableTypeScriptImports(): Promise<"native" | "tsx"> {
  typeScriptReady ??= (async () => {
    if (deno) return "native";
    const features = process.features as { typescript?: string | false };
    if (features.typescript) return "native";
    // Computed specifiers, so neither tsc nor Deno needs tsx unless these lines run. Both hooks:
    // a .ts file outside a `"type": "module"` package is CommonJS to Node, and goes through the
    // CommonJS loader even when it is imported.
    const specifiers = ["cjs", "esm"].map((kind) => ["tsx", kind, "api"].join("/"));
    try {
      for (const specifier of specifiers) {
        const api = (await import(specifier)) as { register(): unknown };
        api.register();
      }
      return "tsx";
    } catch (err) {
      typeScriptReady = undefined;
      const detail = (err as { code?: string }).code === "ERR_MODULE_NOT_FOUND"
        ? 'the "tsx" package is not installed (npm install tsx)'
        : `the "tsx" loader failed (${(err as Error)?.message ?? String(err)})`;
      throw new DitaskError(`Cannot run TypeScript on Node ${process.version}: ${detail}`, {
        code: "ERR_DITASK_NO_TYPESCRIPT",
        cause: err,
      });
    }
  })();
  return typeScriptReady;
}
