import { type PlatformArgs, PlatformError, plural, quote, readEnv as read, resolvePlatformTask } from "./spec.ts";
import { MAX_HOSTLIST_SIZE } from "./hostlist.ts";

/**
 * Environment variables, e.g. `process.env` or a test's plain object.
 *
 * @example
 * ```ts
 * const env: PlatformEnv = { DI_NODES: "a,b,c", DI_RANK: "2" };
 * ```
 */
export type PlatformEnv = Record<string, string | undefined>;

/**
 * The default port of every pod when neither the CLI nor the spec sets one (DI-engine's).
 *
 * @example
 * ```ts
 * parseK8s({ DI_NODES: "a", DI_RANK: "0" }, args).ports === K8S_DEFAULT_PORT; // 50515
 * ```
 */
export const K8S_DEFAULT_PORT = 50515;

interface K8sCluster {
  hosts: string[];
  rank: number;
  /** Where `hosts` came from, for error messages. */
  source: string;
}


function fail(detail: string): never {
  throw new PlatformError(`Cannot parse k8s platform: ${detail}`);
}

function readIndex(env: PlatformEnv, name: string, what: string): number {
  const raw = read(env, name);
  if (raw === undefined) fail(`${name} is not set (${what})`);
  const n = /^\d+$/.test(raw as string) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n)) fail(`${name} ${quote(raw)} is not a non-negative integer`);
  return n;
}

function readReplicas(env: PlatformEnv, mode: string): number {
  const raw = read(env, "DITASK_REPLICAS");
  if (raw === undefined) fail(`DITASK_REPLICAS is not set (${mode} mode needs the number of pods)`);
  const n = /^\d+$/.test(raw as string) ? Number(raw) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) fail(`DITASK_REPLICAS ${quote(raw)} is not a positive integer`);
  // Every pod's address is listed: a corrupt count must not hang the launcher or exhaust its memory.
  if (n > MAX_HOSTLIST_SIZE) fail(`DITASK_REPLICAS ${quote(raw)} is more than ${MAX_HOSTLIST_SIZE} pods`);
  return n;
}

function readService(env: PlatformEnv, mode: string): string {
  const service = read(env, "DITASK_SERVICE");
  if (service === undefined) {
    fail(`DITASK_SERVICE is not set (${mode} mode needs the headless Service name)`);
  }
  return (service as string).replace(/^\.+/, "");
}

/** The pod's short host name from `HOSTNAME`. */
function shortHostname(env: PlatformEnv): string | undefined {
  const h = read(env, "HOSTNAME");
  return h === undefined ? undefined : h.split(".")[0];
}

function diJobCluster(env: PlatformEnv, nodes: string): K8sCluster {
  const hosts = nodes.split(",").map((h) => h.trim());
  const empty = hosts.indexOf("");
  if (empty >= 0) fail(`DI_NODES ${quote(nodes)} has an empty entry at position ${empty}`);
  const rank = readIndex(env, "DI_RANK", "DI-orchestrator sets it with DI_NODES");
  if (rank >= hosts.length) {
    // DI-orchestrator gives a re-created replica rank max+1, which can fall outside DI_NODES.
    fail(`DI_RANK ${quote(String(rank))} is outside DI_NODES (${plural(hosts.length, "node")})`);
  }
  return { hosts, rank, source: "DI_NODES" };
}

function indexedJobCluster(env: PlatformEnv): K8sCluster {
  const rank = readIndex(env, "JOB_COMPLETION_INDEX", "set by an Indexed Job");
  const replicas = readReplicas(env, "Indexed Job");
  const service = readService(env, "Indexed Job");
  let job = read(env, "DITASK_JOB_NAME");
  if (job === undefined) {
    const host = shortHostname(env);
    const suffix = `-${rank}`;
    if (host === undefined || !host.endsWith(suffix) || host.length === suffix.length) {
      fail(
        `DITASK_JOB_NAME is not set and HOSTNAME ${quote(host ?? "")} does not end with ${quote(suffix)} ` +
          "(JOB_COMPLETION_INDEX)",
      );
    }
    job = (host as string).slice(0, -suffix.length);
  }
  if (rank >= replicas) {
    fail(`JOB_COMPLETION_INDEX ${quote(String(rank))} is outside DITASK_REPLICAS (${plural(replicas, "pod")})`);
  }
  const hosts = Array.from({ length: replicas }, (_v, i) => `${job}-${i}.${service}`);
  return { hosts, rank, source: "JOB_COMPLETION_INDEX" };
}

function statefulSetCluster(env: PlatformEnv): K8sCluster {
  const replicas = readReplicas(env, "StatefulSet");
  const service = readService(env, "StatefulSet");
  const host = shortHostname(env);
  if (host === undefined) fail("HOSTNAME is not set (StatefulSet mode reads the ordinal from it)");
  const m = /^(.+)-(\d+)$/.exec(host as string);
  if (!m) fail(`HOSTNAME ${quote(host)} does not end with "-<ordinal>"`);
  const [, name, ordinalText] = m as RegExpExecArray;
  const rank = Number(ordinalText);
  if (!Number.isSafeInteger(rank)) fail(`HOSTNAME ${quote(host)} has an invalid ordinal`);
  if (rank >= replicas) {
    fail(`StatefulSet ordinal ${quote(ordinalText)} in HOSTNAME is outside DITASK_REPLICAS (${plural(replicas, "pod")})`);
  }
  const hosts = Array.from({ length: replicas }, (_v, i) => `${name}-${i}.${service}`);
  return { hosts, rank, source: "the StatefulSet" };
}

function k8sCluster(env: PlatformEnv): K8sCluster {
  const nodes = read(env, "DI_NODES");
  if (nodes !== undefined) return diJobCluster(env, nodes);
  if (read(env, "JOB_COMPLETION_INDEX") !== undefined) return indexedJobCluster(env);
  if (read(env, "DITASK_REPLICAS") !== undefined) return statefulSetCluster(env);
  if (read(env, "DI_RANK") !== undefined) fail("DI_RANK is set but DI_NODES is not");
  return fail(
    "none of DI_NODES (DI-orchestrator), JOB_COMPLETION_INDEX (Indexed Job) or DITASK_REPLICAS " +
      "(StatefulSet) is set",
  );
}

/**
 * Work out this pod's launch arguments on Kubernetes, as DI-engine's `k8s_parser` does.
 *
 * The pod's rank and the host of every pod come from the first of these that is set:
 * 1. **DI-orchestrator (DIJob)**: `DI_NODES` (comma-separated host names of all pods, in rank order)
 *    and `DI_RANK` (this pod's index into it; required with `DI_NODES`).
 * 2. **Indexed Job**: `JOB_COMPLETION_INDEX` (set by Kubernetes) is the rank. The pods are
 *    `<job>-<i>.<service>` for `i < DITASK_REPLICAS`, where `DITASK_SERVICE` is the headless Service
 *    (the pod template's `subdomain`; it may be fully qualified, e.g. `workers.ns.svc.cluster.local`)
 *    and `<job>` is `DITASK_JOB_NAME`, or `HOSTNAME` without its `-<index>` suffix (Kubernetes names
 *    Indexed Job pods' hosts `<job>-<index>`).
 * 3. **StatefulSet**: when `DITASK_REPLICAS` is set, `HOSTNAME` (`<set>-<ordinal>`) gives the set
 *    name and the rank; the pods are `<set>-<i>.<service>` with `DITASK_SERVICE` the governing
 *    headless Service (`serviceName`).
 *
 * Then, as DI-engine: a spec task's `address`/`ports`/`node_ids` win over the CLI's, which win over
 * the defaults (the pod's host, port 50515, `rank * parallelWorkers`). `attachTo` is the CLI's, else
 * the spec task's `attach_to` with `$node.<id>` references resolved to that node's
 * `tcp://<address>:<port>`, else computed from the topology (`mesh`: every worker of every lower rank;
 * `star`: every worker of rank 0; `alone` and rank 0: none). Spec labels (`"a,b"` or a list) become
 * `labels`; other spec keys are camelCased and passed through; `platformSpec` and `platform` are
 * dropped. With `mqType: "redis"` only `nodeIds`, `labels` and the spec's extra keys are filled in.
 *
 * @param env Environment variables (pass `process.env`; tests pass a plain object).
 * @param args The CLI arguments; `platformSpec` may be a spec object, a JSON string or a `.json` path.
 * @returns The arguments to launch this pod's workers with.
 * @throws {PlatformError} If an environment variable is missing or malformed, the rank is outside
 * the pod list (e.g. `DI_RANK` outside `DI_NODES`), the spec is invalid or does not have one task
 * per pod, two tasks share a node id, a `$node.<id>` reference matches nothing, or this pod's
 * address is not its host.
 *
 * @example Rank 2 of three DIJob pods in a mesh
 * ```ts
 * parseK8s({ DI_NODES: "a,b,c", DI_RANK: "2" }, { parallelWorkers: 1, topology: "mesh", protocol: "tcp" });
 * // { address: "c", ports: 50515, nodeIds: 2, attachTo: ["tcp://a:50515", "tcp://b:50515"], ... }
 * ```
 */
export function parseK8s(env: PlatformEnv, args: PlatformArgs & { platformSpec?: unknown }): PlatformArgs {
  const { hosts, rank, source } = k8sCluster(env);
  return resolvePlatformTask(
    {
      platform: "k8s",
      hosts,
      rank,
      defaultPort: () => K8S_DEFAULT_PORT,
      checkOwnAddress(address) {
        const host = hosts[rank] as string;
        if (address !== host) {
          fail(`address ${quote(address)} is not this pod's host ${quote(host)} (from ${source})`);
        }
      },
    },
    args,
  );
}
