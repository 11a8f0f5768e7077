import { runtimeKey } from "../lib/runtime.ts";
import { spawnScript } from "../lib/runtime.ts";
import type { ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";

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

/**
 * Run a script of this runtime to completion and collect its output. The child is killed (by PID,
 * with its own workers) if it runs longer than `timeoutMs`.
 */
export function runScript(
  script: string,
  args: string[] = [],
  options: { env?: Record<string, string>; timeoutMs?: number; runtime?: "node" | "deno" } = {},
): Promise<RunResult> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith("DITASK_")) env[k] = v;
  Object.assign(env, options.env ?? {});
  const spawnOpts: { env: Record<string, string>; stdio: "pipe"; runtime?: "node" | "deno" } = { env, stdio: "pipe" };
  if (options.runtime) spawnOpts.runtime = options.runtime;
  const child = spawnScript(script, args, spawnOpts);
  live.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve) => {
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
}

/** Kill every child that {@link runScript} started and that still runs. */
export function killAll(): void {
  for (const c of live) c.kill("SIGKILL");
  live.clear();
}

/** The runtime of this test run. */
export { runtimeKey };

/** Free tcp ports on 127.0.0.1 (bound and released; consecutive ports are not promised). */
export async function freePorts(n: number): Promise<number[]> {
  const { createServer } = await import("node:net");
  const servers = await Promise.all(
    Array.from({ length: n }, () =>
      new Promise<import("node:net").Server>((resolve, reject) => {
        const s = createServer();
        s.once("error", reject);
        s.listen(0, "127.0.0.1", () => resolve(s));
      })),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
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
