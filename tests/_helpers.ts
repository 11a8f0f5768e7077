import { runtimeKey } from "../lib/runtime.ts";
import { spawnScript } from "../lib/runtime.ts";
import { freePorts } from "../lib/parallel.ts";
import type { ChildProcess } from "node:child_process";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as netConnect, createServer, type Socket } from "node:net";

/** Reject with a clear message if `p` does not settle within `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number, label: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${label}`)), ms);
    }),
  ]);
}

/** A promise that resolves after `ms` (for test middleware that must take time, not for races). */
export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The extension of this runtime's test sources: `.ts` on Deno, `.js` in the compiled Node tree. */
export const ext: string = import.meta.url.endsWith(".ts") ? ".ts" : ".js";

/** The path of a file next to the tests in this runtime's tree (`name` without extension). */
export function testPath(name: string): string {
  return new URL(`./${name}${ext}`, import.meta.url).pathname;
}

/** The path of an example script (`name` without extension) in this runtime's tree. */
export function examplePath(name: string): string {
  return new URL(`../examples/${name}${ext}`, import.meta.url).pathname;
}

/** The result of {@link runScript}. */
export interface RunResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

const live = new Set<ChildProcess>();

/** Options of {@link startScript} and {@link runScript}. */
export interface ScriptOptions {
  /** Added to this process's environment, from which ditask's and the cluster platforms' variables are removed. */
  env?: Record<string, string>;
  cwd?: string;
  /** Kill the child (SIGTERM, then SIGKILL) after this long. @default 30000 */
  timeoutMs?: number;
  runtime?: "node" | "deno";
}

/**
 * Start a script of this runtime and collect its output; `done` settles when it ends. The child is
 * killed (by PID, with its own workers) if it runs longer than `timeoutMs`.
 */
export function startScript(script: string, args: string[] = [], options: ScriptOptions = {}): { child: ChildProcess; done: Promise<RunResult> } {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(DITASK_|DI_|SLURM_|SLURMD_)/.test(k) || k === "JOB_COMPLETION_INDEX") continue;
    env[k] = v;
  }
  Object.assign(env, options.env ?? {});
  const child = spawnScript(script, args, {
    env,
    stdio: "pipe",
    ...(options.runtime ? { runtime: options.runtime } : {}),
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
  });
  live.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timeoutMs = options.timeoutMs ?? 30_000;
  const done = new Promise<RunResult>((resolve) => {
    const timer = setTimeout(() => {
      stderr += `\n[test] killed after ${timeoutMs} ms`;
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 2000).unref?.();
    }, timeoutMs);
    child.on("error", (err) => {
      stderr += `\n[test] cannot start: ${err.message}`;
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, done };
}

/** A finished script's exit and output, for assertion messages. */
export function show(r: RunResult): string {
  return `exit ${r.code}${r.signal ? ` (${r.signal})` : ""}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

/** Run a script of this runtime to completion (see {@link startScript}). */
export function runScript(script: string, args: string[] = [], options: ScriptOptions = {}): Promise<RunResult> {
  return startScript(script, args, options).done;
}

/** Kill every child that {@link startScript} started and that still runs. */
export function killAll(): void {
  for (const c of live) c.kill("SIGKILL");
  live.clear();
}

/** The runtime of this test run. */
export { runtimeKey };

/** Free tcp ports on 127.0.0.1 (the launcher's own helper). */
export { freePorts };

/** One free tcp port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return (await freePorts(1))[0]!;
}

/** Whether a process with this PID is alive. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The repository root (the folder with ditask's package.json), from either test tree. */
export function repoRoot(): string {
  let dir = new URL(".", import.meta.url);
  for (let i = 0; i < 5; i++) {
    dir = new URL("..", dir);
    try {
      const pkg = JSON.parse(readFileSync(new URL("package.json", dir), "utf8"));
      if (pkg.name === "ditask") return dir.pathname;
    } catch {
      // keep looking
    }
  }
  throw new Error("Cannot find the repository root");
}

/** Resolve once `cond()` is true (checked every 2 ms); reject after `ms` naming `label`. */
export function until(cond: () => boolean, label: string, ms = 15_000): Promise<void> {
  return withTimeout(
    new Promise<void>((resolve) => {
      const tick = () => (cond() ? resolve() : setTimeout(tick, 2));
      tick();
    }),
    ms,
    label,
  );
}

/** A self-signed certificate (PEM) for 127.0.0.1 and localhost, valid for a day; made with openssl. */
export function selfSignedCert(): { cert: string; key: string } {
  const openssl = existsSync("/usr/bin/openssl") ? "/usr/bin/openssl" : "openssl";
  const dir = mkdtempSync(join(tmpdir(), "ditask_test_tls_"));
  try {
    execFileSync(
      openssl,
      [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes",
        "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
        "-days", "1", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
      ],
      { stdio: "ignore" },
    );
    return { cert: readFileSync(join(dir, "cert.pem"), "utf8"), key: readFileSync(join(dir, "key.pem"), "utf8") };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A TCP proxy on a free loopback port to `127.0.0.1:targetPort` that carries about
 * `bytesPerMs` bytes per millisecond each way (a slow link). `close()` cuts every connection.
 */
export async function slowProxy(targetPort: number, bytesPerMs: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets: Socket[] = [];
  const proxy = createServer((client) => {
    const upstream = netConnect(targetPort, "127.0.0.1");
    sockets.push(client, upstream);
    for (const [from, to] of [[client, upstream], [upstream, client]] as const) {
      from.on("data", (d: Uint8Array) => {
        to.write(d);
        from.pause();
        setTimeout(() => from.resume(), Math.ceil(d.byteLength / bytesPerMs));
      });
      from.on("close", () => to.destroy());
      from.on("error", () => {});
    }
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (proxy.address() as { port: number }).port,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => proxy.close(() => resolve()));
    },
  };
}
