/**
 * Platform parsers for `ditask --platform k8s|slurm [--platform-spec …]`: pure functions that turn
 * a cluster's environment variables (and an optional platform spec) into this process's launch
 * arguments. Ported from DI-engine's `ding/entry/cli_parsers`, with its bugs fixed.
 *
 * @example Launch arguments inside a DIJob pod
 * ```ts
 * import { parsePlatform } from "./lib/platform/mod.ts";
 * const launch = parsePlatform("k8s", process.env, { parallelWorkers: 1, topology: "mesh", protocol: "tcp" });
 * ```
 *
 * @module
 */
import { parseK8s, type PlatformEnv } from "./k8s.ts";
import { parseSlurm } from "./slurm.ts";
import { type PlatformArgs, PlatformError, quote } from "./spec.ts";

export { K8S_DEFAULT_PORT, parseK8s } from "./k8s.ts";
export type { PlatformEnv } from "./k8s.ts";
export { parseSlurm, SLURM_DEFAULT_PORT } from "./slurm.ts";
export { MAX_HOSTLIST_SIZE, parseHostlist, parseTasksPerNode } from "./hostlist.ts";
export { loadPlatformSpec, PlatformError } from "./spec.ts";
export type { PlatformArgs, PlatformProtocol, PlatformTopology } from "./spec.ts";

/**
 * The platforms `--platform` accepts.
 *
 * @example
 * ```ts
 * if (!(PLATFORMS as readonly string[]).includes(name)) console.error(`Unknown platform "${name}"`);
 * ```
 */
export const PLATFORMS = ["k8s", "slurm"] as const;

/**
 * A platform name `--platform` accepts.
 *
 * @example
 * ```ts
 * const platform: PlatformName = "slurm";
 * ```
 */
export type PlatformName = (typeof PLATFORMS)[number];

/**
 * Run the parser of the named platform, as DI-engine's `PLATFORM_PARSERS[platform](spec, **args)`.
 *
 * @param platform `"k8s"` or `"slurm"` (the `--platform` value).
 * @param env Environment variables (pass `process.env`; tests pass a plain object).
 * @param args The CLI arguments; `platformSpec` may be a spec object, a JSON string or a `.json` path.
 * @returns The arguments to launch this process's workers with.
 * @throws {PlatformError} If the platform is unknown, or whatever {@link parseK8s} or
 * {@link parseSlurm} reject.
 *
 * @example Parse a slurm task with a spec file
 * ```ts
 * const launch = parsePlatform("slurm", process.env, {
 *   parallelWorkers: 1, topology: "alone", protocol: "tcp", platformSpec: "./league.json",
 * });
 * ```
 */
export function parsePlatform(
  platform: string,
  env: PlatformEnv,
  args: PlatformArgs & { platformSpec?: unknown },
): PlatformArgs {
  if (platform === "k8s") return parseK8s(env, args);
  if (platform === "slurm") return parseSlurm(env, args);
  throw new PlatformError(`Unknown platform ${quote(platform)}: expected "k8s" or "slurm"`);
}
