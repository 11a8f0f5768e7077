import { expandHostlist, expandTasksPerNode, MAX_HOSTLIST_SIZE } from "./hostlist.ts";
import type { PlatformEnv } from "./k8s.ts";
import { type PlatformArgs, PlatformError, plural, quote, readEnv as read, resolvePlatformTask } from "./spec.ts";

/**
 * The port base of slurm tasks when the CLI gives none (DI-engine's).
 *
 * @example
 * ```ts
 * // The first task on each node listens on 15151, the second on 15151 + parallelWorkers, ...
 * const port = SLURM_DEFAULT_PORT + localIndex * parallelWorkers;
 * ```
 */
export const SLURM_DEFAULT_PORT = 15151;


function fail(detail: string): never {
  throw new PlatformError(`Cannot parse slurm platform: ${detail}`);
}

function need(env: PlatformEnv, name: string): string {
  return read(env, name) ?? fail(`${name} is not set`);
}

function readInt(env: PlatformEnv, name: string, min: number): number {
  const raw = need(env, name);
  const n = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < min) {
    fail(`${name} ${quote(raw)} is not ${min > 0 ? "a positive" : "a non-negative"} integer`);
  }
  return n;
}

/**
 * Work out this task's launch arguments under Slurm (`srun`), as DI-engine's `slurm_parser` does.
 *
 * Reads `SLURM_NTASKS` (task count), `SLURM_NTASKS_PER_NODE` (falling back to
 * `SLURM_TASKS_PER_NODE`; `3` or the compressed `3(x2),1`), `SLURM_NODELIST` (a hostlist such as
 * `n[001-004]`), `SLURM_PROCID` (this task's rank) and `SLURMD_NODENAME` (this node's name, used
 * to check the placement). Tasks fill nodes in order (Slurm's default block distribution): task
 * `i` runs on the node whose block holds `i`.
 *
 * Defaults per task: the address is its node, the port is `base + localIndex * parallelWorkers`
 * where `base` is the CLI's port or 15151 and `localIndex` is the task's position on its node, and
 * the node id is `rank * parallelWorkers`. Spec tasks, CLI overrides, `$node.<id>` references and
 * topologies work as in {@link parseK8s} (DI-engine's slurm parser ignored the CLI's `address`,
 * `node_ids` and `attach_to`; this one honours them like k8s).
 *
 * @param env Environment variables (pass `process.env`; tests pass a plain object).
 * @param args The CLI arguments; `platformSpec` may be a spec object, a JSON string or a `.json` path.
 * @returns The arguments to launch this task's workers with.
 * @throws {PlatformError} If a variable is missing or malformed (including a bad hostlist), the
 * rank is outside `SLURM_NTASKS`, the nodes hold fewer tasks than `SLURM_NTASKS`, this task's node
 * is not `SLURMD_NODENAME`, the CLI gives more than one port, or the spec is invalid.
 *
 * @example Task 3 of 6, three per node, in a mesh
 * ```ts
 * parseSlurm(
 *   { SLURM_NTASKS: "6", SLURM_NTASKS_PER_NODE: "3", SLURM_NODELIST: "n[01-02]",
 *     SLURM_PROCID: "3", SLURMD_NODENAME: "n02" },
 *   { parallelWorkers: 1, topology: "mesh", protocol: "tcp" },
 * ); // { address: "n02", ports: 15151, nodeIds: 3, attachTo: ["tcp://n01:15151", "tcp://n01:15152", "tcp://n01:15153"], ... }
 * ```
 */
export function parseSlurm(env: PlatformEnv, args: PlatformArgs & { platformSpec?: unknown }): PlatformArgs {
  const nTasks = readInt(env, "SLURM_NTASKS", 1);
  // One entry per task is built below: a corrupt count (99999999999) must not hang the launcher.
  if (nTasks > MAX_HOSTLIST_SIZE) fail(`SLURM_NTASKS ${quote(String(nTasks))} is more than ${MAX_HOSTLIST_SIZE} tasks`);
  const perNodeName = read(env, "SLURM_NTASKS_PER_NODE") !== undefined
    ? "SLURM_NTASKS_PER_NODE"
    : read(env, "SLURM_TASKS_PER_NODE") !== undefined
    ? "SLURM_TASKS_PER_NODE"
    : fail("SLURM_NTASKS_PER_NODE is not set (nor SLURM_TASKS_PER_NODE)");
  const perNodeText = need(env, perNodeName);
  const nodeListText = need(env, "SLURM_NODELIST");
  const rank = readInt(env, "SLURM_PROCID", 0);
  const nodeName = need(env, "SLURMD_NODENAME");

  const nodes = expandHostlist(nodeListText, (detail) => {
    throw new PlatformError(`Cannot parse slurm platform: SLURM_NODELIST ${quote(nodeListText)} is malformed: ${detail}`);
  });
  const counts = expandTasksPerNode(perNodeText, nodes.length, (detail) => {
    throw new PlatformError(`Cannot parse slurm platform: ${perNodeName} ${quote(perNodeText)} is malformed: ${detail}`);
  });
  if (rank >= nTasks) fail(`SLURM_PROCID ${quote(String(rank))} is outside SLURM_NTASKS (${plural(nTasks, "task")})`);

  // One entry per task: its node and its position on that node.
  const hosts: string[] = [];
  const localIndex: number[] = [];
  for (let n = 0; n < nodes.length && hosts.length < nTasks; n++) {
    for (let j = 0; j < (counts[n] as number) && hosts.length < nTasks; j++) {
      hosts.push(nodes[n] as string);
      localIndex.push(j);
    }
  }
  if (hosts.length < nTasks) {
    fail(
      `${perNodeName} ${quote(perNodeText)} places ${plural(hosts.length, "task")} on ${plural(nodes.length, "node")}, ` +
        `fewer than SLURM_NTASKS (${nTasks})`,
    );
  }

  let base = SLURM_DEFAULT_PORT;
  if (args.ports !== undefined && args.ports !== null) {
    const p = Array.isArray(args.ports) && args.ports.length === 1 ? args.ports[0] : args.ports;
    if (typeof p !== "number" || !Number.isSafeInteger(p) || p < 1 || p > 65535) {
      fail(`ports ${JSON.stringify(args.ports)} must be one port base, since tasks share nodes`);
    }
    base = p as number;
  }
  // The base is applied through defaultPort, so the CLI's ports must not override it per task.
  const { ports: _ports, ...rest } = args;

  const out = resolvePlatformTask(
    {
      platform: "slurm",
      hosts,
      rank,
      defaultPort: (procid, pw) => base + (localIndex[procid] as number) * pw,
      checkOwnAddress(address) {
        if (address !== nodeName) {
          fail(`task ${rank} is placed on ${quote(address)} but SLURMD_NODENAME is ${quote(nodeName)}`);
        }
      },
    },
    rest as PlatformArgs & { platformSpec?: unknown },
  );
  if (out.ports === undefined && args.ports !== undefined) out.ports = args.ports;
  return out;
}
