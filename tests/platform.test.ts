import { suite } from "uvu";
import * as assert from "uvu/assert";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DitaskError } from "../lib/errors.ts";
import {
  loadPlatformSpec,
  parseHostlist,
  parseK8s,
  parsePlatform,
  parseSlurm,
  parseTasksPerNode,
  type PlatformArgs,
  type PlatformEnv,
  PlatformError,
} from "../lib/platform/mod.ts";

/** Run `fn`, assert it throws a PlatformError whose message matches every pattern, return it. */
function throwsPlatform(fn: () => unknown, ...patterns: (string | RegExp)[]): PlatformError {
  try {
    fn();
  } catch (err) {
    assert.instance(err, PlatformError);
    const e = err as PlatformError;
    assert.is(e.code, "ERR_DITASK_PLATFORM");
    for (const p of patterns) {
      if (typeof p === "string") assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} lacks ${p}`);
      else assert.match(e.message, p);
    }
    assert.not.match(e.message, /\.$/, "messages have no trailing period");
    return e;
  }
  assert.unreachable("expected a PlatformError");
  throw new Error("unreachable");
}

const base = (extra: Partial<PlatformArgs> = {}): PlatformArgs => ({
  parallelWorkers: 1,
  topology: "alone",
  protocol: "tcp",
  ...extra,
});

// DI-engine's test_k8s_parser / test_slurm_parser spec (node 31 is task 3).
const leagueSpec = (withPorts: boolean) => ({
  tasks: [
    { labels: "league,collect", node_ids: 10 },
    { labels: "league,collect", node_ids: 11 },
    { labels: "evaluate", node_ids: 20, attach_to: "$node.10,$node.11" },
    {
      labels: "learn",
      node_ids: 31,
      ...(withPorts ? { ports: 50000 } : {}),
      attach_to: "$node.10,$node.11,$node.20",
    },
    { labels: "learn", node_ids: 32, attach_to: "$node.10,$node.11,$node.20" },
    { labels: "learn", node_ids: 33, attach_to: "$node.10,$node.11,$node.20" },
  ],
});

const K8S_ENV: PlatformEnv = { DI_NODES: "SH-0,SH-1,SH-2,SH-3,SH-4,SH-5", DI_RANK: "3" };
const SH012 = ["tcp://SH-0:50515", "tcp://SH-1:50515", "tcp://SH-2:50515"];

// ---------------------------------------------------------------------------------------------
const K8s = suite("parseK8s");

K8s("parseK8s() resolves a platform spec (DI-engine test_k8s_parser a)", () => {
  const out = parseK8s(K8S_ENV, { ...base(), mqType: "nng", platformSpec: leagueSpec(true) });
  assert.equal(out.labels, ["learn"]);
  assert.is(out.address, "SH-3");
  assert.is(out.ports, 50000);
  assert.is(out.nodeIds, 31);
  assert.is(out.parallelWorkers, 1);
  assert.equal(out.attachTo, SH012);
});

K8s("parseK8s() computes a mesh without a spec (DI-engine test_k8s_parser b)", () => {
  const out = parseK8s(K8S_ENV, base({ topology: "mesh", mqType: "nng" }));
  assert.is(out.address, "SH-3");
  assert.is(out.nodeIds, 3);
  assert.is(out.parallelWorkers, 1);
  assert.is(out.ports, 50515);
  assert.equal(out.attachTo, SH012);
});

K8s("parseK8s() dials every worker of lower ranks with parallel workers (DI-engine test_k8s_parser c)", () => {
  const out = parseK8s(K8S_ENV, base({ topology: "mesh", parallelWorkers: 2 }));
  assert.is(out.address, "SH-3");
  assert.is(out.nodeIds, 6);
  assert.is(out.parallelWorkers, 2);
  assert.equal(out.attachTo, [
    "tcp://SH-0:50515",
    "tcp://SH-0:50516",
    "tcp://SH-1:50515",
    "tcp://SH-1:50516",
    "tcp://SH-2:50515",
    "tcp://SH-2:50516",
  ]);
});

K8s("parseK8s() matches the reference mesh and star examples", () => {
  const env = { DI_NODES: "a,b,c", DI_RANK: "2" };
  const mesh = parseK8s(env, base({ topology: "mesh" }));
  assert.is(mesh.address, "c");
  assert.is(mesh.nodeIds, 2);
  assert.is(mesh.ports, 50515);
  assert.equal(mesh.attachTo, ["tcp://a:50515", "tcp://b:50515"]);
  const star = parseK8s(env, base({ topology: "star", parallelWorkers: 2 }));
  assert.is(star.nodeIds, 4);
  assert.equal(star.attachTo, ["tcp://a:50515", "tcp://a:50516"]);
});

K8s("parseK8s(): in a mesh every host waits for every other host's nodes, not only those it dials", () => {
  const env = { DI_NODES: "a,b,c", DI_RANK: "0" };
  // Rank 0 dials nobody; ranks 1 and 2 dial it. It must wait for them before its main runs.
  assert.equal(parseK8s(env, base({ topology: "mesh", parallelWorkers: 2 })).expectPeers, [2, 3, 4, 5]);
  assert.equal(parseK8s({ ...env, DI_RANK: "1" }, base({ topology: "mesh", parallelWorkers: 2 })).expectPeers, [0, 1, 4, 5]);
  // Over Redis every node reaches every other, whatever the topology.
  assert.equal(parseK8s({ ...env, DI_RANK: "2" }, base({ topology: "alone", mqType: "redis" })).expectPeers, [0, 1]);
  // Star, alone and explicit attach lists keep DI-engine's behaviour: wait only for what is dialed.
  assert.is(parseK8s(env, base({ topology: "star" })).expectPeers, undefined);
  assert.is(parseK8s({ ...env, DI_RANK: "1" }, base({ topology: "alone" })).expectPeers, undefined);
  assert.is(parseK8s({ ...env, DI_RANK: "1" }, base({ topology: "mesh", attachTo: ["$node.0"] })).expectPeers, undefined);
  // A single host has nobody else to wait for.
  assert.is(parseK8s({ DI_NODES: "a", DI_RANK: "0" }, base({ topology: "mesh" })).expectPeers, undefined);
});

K8s("parseK8s() gives rank 0 and the alone topology nothing to dial", () => {
  assert.equal(parseK8s({ DI_NODES: "a,b", DI_RANK: "0" }, base({ topology: "mesh" })).attachTo, []);
  assert.equal(parseK8s({ DI_NODES: "a,b", DI_RANK: "1" }, base({ topology: "alone" })).attachTo, []);
  // DI-engine's CLI default topology is "alone".
  const loose = { parallelWorkers: 1, protocol: "tcp" } as unknown as PlatformArgs;
  assert.is(parseK8s({ DI_NODES: "a,b", DI_RANK: "1" }, loose).topology, "alone");
});

K8s("parseK8s() passes other CLI fields through and drops platform and platformSpec", () => {
  const out = parseK8s(
    { DI_NODES: "a", DI_RANK: "0" },
    { ...base(), main: "app.main", startupInterval: 1, platform: "k8s", platformSpec: null },
  );
  assert.is(out["main"], "app.main");
  assert.is(out["startupInterval"], 1);
  assert.not.ok("platform" in out);
  assert.not.ok("platformSpec" in out);
});

K8s("parseK8s() uses the CLI's ports for every pod and keeps the CLI's labels", () => {
  const out = parseK8s({ DI_NODES: "a,b", DI_RANK: "1" }, base({ topology: "mesh", ports: 6000, labels: ["x"] }));
  assert.is(out.ports, 6000);
  assert.equal(out.labels, ["x"]);
  assert.equal(out.attachTo, ["tcp://a:6000"]);
  const list = parseK8s(
    { DI_NODES: "a,b", DI_RANK: "1" },
    base({ topology: "mesh", parallelWorkers: 2, ports: [7000, 7010] }),
  );
  assert.equal(list.ports, [7000, 7010]);
  assert.equal(list.attachTo, ["tcp://a:7000", "tcp://a:7010"]);
});

K8s("parseK8s() lets the CLI's attachTo win and resolves $node references in it", () => {
  const out = parseK8s(
    { DI_NODES: "a,b,c", DI_RANK: "2" },
    base({ topology: "mesh", attachTo: ["$node.0", "tcp://elsewhere:1"] }),
  );
  assert.equal(out.attachTo, ["tcp://a:50515", "tcp://elsewhere:1"]);
});

K8s("parseK8s() resolves $node.<id> to that worker's own port", () => {
  const spec = { tasks: [{ node_ids: 10 }, { node_ids: 20, attach_to: ["$node.11"] }] };
  const out = parseK8s({ DI_NODES: "a,b", DI_RANK: "1" }, base({ parallelWorkers: 2, platformSpec: spec }));
  assert.equal(out.attachTo, ["tcp://a:50516"]);
  assert.is(out.nodeIds, 20);
});

K8s("parseK8s() accepts the spec as a JSON string", () => {
  const out = parseK8s(K8S_ENV, base({ platformSpec: JSON.stringify(leagueSpec(true)) }));
  assert.is(out.nodeIds, 31);
  assert.equal(out.attachTo, SH012);
});

K8s("parseK8s() reads a --platform-spec file path (DI-engine never did)", () => {
  const dir = mkdtempSync(join(tmpdir(), "ditask-platform-"));
  try {
    const file = join(dir, "spec.json");
    writeFileSync(file, JSON.stringify(leagueSpec(true)));
    const out = parseK8s(K8S_ENV, base({ platformSpec: file }));
    assert.equal(out.labels, ["learn"]);
    assert.is(out.ports, 50000);
    assert.equal(out.attachTo, SH012);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

K8s("parseK8s() passes extra spec keys through, camelCased", () => {
  const spec = { tasks: [{ node_ids: 0, startup_interval: 3, role: "learner", topology: "star" }] };
  const out = parseK8s({ DI_NODES: "a", DI_RANK: "0" }, base({ platformSpec: spec }));
  assert.is(out["startupInterval"], 3);
  assert.is(out["role"], "learner");
  assert.is(out.topology, "alone", "the global topology wins, as in DI-engine");
});

K8s("parseK8s() rejects DI_RANK outside DI_NODES with a clear error", () => {
  const env = { DI_NODES: "SH-0,SH-1,SH-2,SH-3,SH-4,SH-5", DI_RANK: "7" };
  const err = throwsPlatform(() => parseK8s(env, base()));
  assert.is(err.message, 'Cannot parse k8s platform: DI_RANK "7" is outside DI_NODES (6 nodes)');
  assert.instance(err, DitaskError);
  throwsPlatform(() => parseK8s({ DI_NODES: "a", DI_RANK: "1" }, base()), 'DI_RANK "1" is outside DI_NODES (1 node)');
});

K8s("parseK8s() names a missing or malformed DI_RANK", () => {
  throwsPlatform(() => parseK8s({ DI_NODES: "a,b" }, base()), "DI_RANK is not set");
  throwsPlatform(() => parseK8s({ DI_NODES: "a,b", DI_RANK: "one" }, base()), 'DI_RANK "one"', "integer");
  throwsPlatform(() => parseK8s({ DI_NODES: "a,b", DI_RANK: "-1" }, base()), 'DI_RANK "-1"');
});

K8s("parseK8s() names missing DI_NODES", () => {
  throwsPlatform(() => parseK8s({ DI_RANK: "0" }, base()), "DI_RANK is set but DI_NODES is not");
  const err = throwsPlatform(() => parseK8s({}, base()), "DI_NODES", "JOB_COMPLETION_INDEX", "DITASK_REPLICAS");
  assert.match(err.message, /^Cannot parse k8s platform: /);
  throwsPlatform(() => parseK8s({ DI_NODES: "a,,b", DI_RANK: "0" }, base()), "empty entry");
});

K8s("parseK8s() reads an Indexed Job (JOB_COMPLETION_INDEX)", () => {
  const env = { JOB_COMPLETION_INDEX: "2", DITASK_REPLICAS: "3", DITASK_SERVICE: "workers", HOSTNAME: "train-2" };
  const out = parseK8s(env, base({ topology: "mesh" }));
  assert.is(out.address, "train-2.workers");
  assert.is(out.nodeIds, 2);
  assert.equal(out.attachTo, ["tcp://train-0.workers:50515", "tcp://train-1.workers:50515"]);
});

K8s("parseK8s() takes the Indexed Job name from DITASK_JOB_NAME when set", () => {
  const env = {
    JOB_COMPLETION_INDEX: "1",
    DITASK_REPLICAS: "2",
    DITASK_SERVICE: "svc.ns.svc.cluster.local",
    DITASK_JOB_NAME: "league",
  };
  const out = parseK8s(env, base({ topology: "star" }));
  assert.is(out.address, "league-1.svc.ns.svc.cluster.local");
  assert.equal(out.attachTo, ["tcp://league-0.svc.ns.svc.cluster.local:50515"]);
});

K8s("parseK8s() names what an Indexed Job is missing", () => {
  const ok = { JOB_COMPLETION_INDEX: "1", DITASK_REPLICAS: "2", DITASK_SERVICE: "s", HOSTNAME: "j-1" };
  throwsPlatform(() => parseK8s({ ...ok, DITASK_REPLICAS: undefined }, base()), "DITASK_REPLICAS is not set");
  throwsPlatform(() => parseK8s({ ...ok, DITASK_REPLICAS: "0" }, base()), 'DITASK_REPLICAS "0"');
  // A corrupt count: it used to fail with "Invalid array length", or at 50000000 to hang.
  for (const r of ["99999999999", "50000000"]) {
    throwsPlatform(() => parseK8s({ ...ok, DITASK_REPLICAS: r }, base()), `DITASK_REPLICAS "${r}" is more than 100000 pods`);
  }
  throwsPlatform(() => parseK8s({ ...ok, DITASK_SERVICE: "" }, base()), "DITASK_SERVICE is not set");
  throwsPlatform(() => parseK8s({ ...ok, HOSTNAME: "other" }, base()), "DITASK_JOB_NAME", 'HOSTNAME "other"');
  throwsPlatform(() => parseK8s({ ...ok, JOB_COMPLETION_INDEX: "x" }, base()), 'JOB_COMPLETION_INDEX "x"');
  throwsPlatform(
    () => parseK8s({ ...ok, JOB_COMPLETION_INDEX: "5", HOSTNAME: "j-5" }, base()),
    'JOB_COMPLETION_INDEX "5" is outside DITASK_REPLICAS (2 pods)',
  );
});

K8s("parseK8s() reads a StatefulSet ordinal from HOSTNAME", () => {
  const env = { HOSTNAME: "ditask-1", DITASK_REPLICAS: "3", DITASK_SERVICE: "ditask-hl" };
  const out = parseK8s(env, base({ topology: "mesh", parallelWorkers: 2 }));
  assert.is(out.address, "ditask-1.ditask-hl");
  assert.is(out.nodeIds, 2);
  assert.equal(out.attachTo, ["tcp://ditask-0.ditask-hl:50515", "tcp://ditask-0.ditask-hl:50516"]);
});

K8s("parseK8s() names what a StatefulSet is missing", () => {
  const ok = { HOSTNAME: "set-1", DITASK_REPLICAS: "2", DITASK_SERVICE: "hl" };
  throwsPlatform(() => parseK8s({ ...ok, HOSTNAME: undefined }, base()), "HOSTNAME is not set");
  throwsPlatform(() => parseK8s({ ...ok, HOSTNAME: "set" }, base()), 'HOSTNAME "set"', "-<ordinal>");
  throwsPlatform(() => parseK8s({ ...ok, DITASK_SERVICE: undefined }, base()), "DITASK_SERVICE is not set");
  throwsPlatform(() => parseK8s({ ...ok, HOSTNAME: "set-2" }, base()), 'ordinal "2"', "DITASK_REPLICAS (2 pods)");
});

K8s("parseK8s() prefers DI_NODES, then JOB_COMPLETION_INDEX, then a StatefulSet", () => {
  const all = {
    DI_NODES: "x,y",
    DI_RANK: "1",
    JOB_COMPLETION_INDEX: "0",
    DITASK_REPLICAS: "3",
    DITASK_SERVICE: "s",
    HOSTNAME: "set-2",
    DITASK_JOB_NAME: "job",
  };
  assert.is(parseK8s(all, base()).address, "y");
  assert.is(parseK8s({ ...all, DI_NODES: undefined, DI_RANK: undefined }, base()).address, "job-0.s");
  assert.is(parseK8s({ ...all, DI_NODES: "", DI_RANK: undefined, JOB_COMPLETION_INDEX: undefined }, base()).address, "set-2.s");
});

K8s("parseK8s() assigns node ids but no addresses for mqType redis", () => {
  const out = parseK8s(K8S_ENV, base({ topology: "mesh", mqType: "redis", redisHost: "r" }));
  assert.is(out.nodeIds, 3);
  assert.is(out["redisHost"], "r");
  assert.is(out.address, undefined);
  assert.is(out.attachTo, undefined);
});

K8s("parseK8s() rejects an address that is not this pod's host", () => {
  throwsPlatform(
    () => parseK8s(K8S_ENV, base({ address: "10.0.0.1" })),
    'address "10.0.0.1" is not this pod\'s host "SH-3"',
  );
  const ok = parseK8s({ DI_NODES: "127.0.0.1", DI_RANK: "0" }, base({ address: "127.0.0.1", ports: 50501, nodeIds: 0 }));
  assert.is(ok.address, "127.0.0.1");
  assert.is(ok.ports, 50501);
  assert.is(ok.nodeIds, 0);
});

K8s("parseK8s() rejects a spec that does not fit the pods", () => {
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: { tasks: [{}] } })), "lists 1 task(s)", "has 6");
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: { nodes: [] } })), '"tasks" list');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: 42 })), '"tasks" list');
  const tasks = leagueSpec(false).tasks as Record<string, unknown>[];
  const withBad = (i: number, patch: Record<string, unknown>) => ({
    tasks: tasks.map((t, j) => (j === i ? { ...t, ...patch } : t)),
  });
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: withBad(0, { node_ids: "ten" }) })), "task 0", '"node_ids"', '"ten"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: withBad(1, { ports: 70000 }) })), "task 1", '"ports"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: withBad(2, { address: 5 }) })), "task 2", '"address"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: withBad(4, { labels: 5 }) })), "task 4", '"labels"');
  throwsPlatform(
    () => parseK8s(K8S_ENV, base({ platformSpec: { tasks: [...tasks.slice(0, 5), "x"] } })),
    "task 5 is not an object",
  );
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: withBad(5, { node_ids: 10 }) })), "node id 10 is used by tasks 0 and 5");
  throwsPlatform(
    () => parseK8s(K8S_ENV, base({ platformSpec: withBad(3, { attach_to: "$node.99" }) })),
    '"$node.99" matches no node id',
  );
  throwsPlatform(
    () => parseK8s(K8S_ENV, base({ platformSpec: withBad(3, { attach_to: "$node.x" }) })),
    '"$node.x" is not "$node.<id>"',
  );
  throwsPlatform(() => parseK8s(K8S_ENV, base({ platformSpec: "{oops" })), "invalid JSON");
});

K8s("parseK8s() rejects bad launch arguments", () => {
  throwsPlatform(() => parseK8s(K8S_ENV, base({ protocol: "ipc" })), 'protocol "ipc"', '"tcp"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ topology: "ring" as "mesh" })), 'topology "ring"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ parallelWorkers: 0 })), 'parallel workers "0"');
  throwsPlatform(() => parseK8s(K8S_ENV, base({ ports: 0 })), "invalid ports");
  throwsPlatform(() => parseK8s(K8S_ENV, base({ parallelWorkers: 2, ports: [1, 2, 3] })), "3 ports for 2 parallel workers");
  throwsPlatform(() => parseK8s(K8S_ENV, base({ topology: "mesh", nodeIds: 0 })), "node id 0 is used by tasks 0 and 1");
});

K8s.run();

// ---------------------------------------------------------------------------------------------
const Slurm = suite("parseSlurm");

const SLURM_ENV: PlatformEnv = {
  SLURM_NTASKS: "6",
  SLURM_NTASKS_PER_NODE: "3",
  SLURM_NODELIST: "SH-IDC1-10-5-38-[190,215]",
  SLURM_PROCID: "3",
  SLURMD_NODENAME: "SH-IDC1-10-5-38-215",
};
const IDC190 = [
  "tcp://SH-IDC1-10-5-38-190:15151",
  "tcp://SH-IDC1-10-5-38-190:15152",
  "tcp://SH-IDC1-10-5-38-190:15153",
];

Slurm("parseSlurm() resolves a platform spec (DI-engine test_slurm_parser a)", () => {
  const out = parseSlurm(SLURM_ENV, base({ platformSpec: leagueSpec(false) }));
  assert.equal(out.labels, ["learn"]);
  assert.is(out.address, "SH-IDC1-10-5-38-215");
  assert.is(out.ports, 15151);
  assert.is(out.nodeIds, 31);
  assert.equal(out.attachTo, IDC190);
});

Slurm("parseSlurm() computes a mesh without a spec (DI-engine test_slurm_parser b)", () => {
  const out = parseSlurm(SLURM_ENV, base({ topology: "mesh", mqType: "nng" }));
  assert.is(out.address, "SH-IDC1-10-5-38-215");
  assert.is(out.nodeIds, 3);
  assert.is(out.parallelWorkers, 1);
  assert.equal(out.attachTo, IDC190);
});

Slurm("parseSlurm() repeats each node once per task (DI-engine test_slurm_parser c)", () => {
  const nodes = ["SH-IDC1-10-5-38", "SH-IDC1-10-5-39", "SH-IDC1-10-5-40"];
  const addresses: string[] = [];
  for (let procid = 0; procid < 9; procid++) {
    const env = {
      SLURM_NTASKS: "9",
      SLURM_NTASKS_PER_NODE: "3",
      SLURM_NODELIST: "SH-IDC1-10-5-[38-40]",
      SLURM_PROCID: String(procid),
      SLURMD_NODENAME: nodes[Math.floor(procid / 3)],
    };
    addresses.push(parseSlurm(env, base()).address as string);
  }
  assert.equal(addresses, nodes.flatMap((n) => [n, n, n]));
});

Slurm("parseSlurm() refuses a task count it could not list (a corrupt SLURM_NTASKS used to hang it)", () => {
  const env = { SLURM_NTASKS: "99999999999", SLURM_NTASKS_PER_NODE: "99999999999", SLURM_NODELIST: "n1", SLURM_PROCID: "0", SLURMD_NODENAME: "n1" };
  throwsPlatform(() => parseSlurm(env, base()), 'SLURM_NTASKS "99999999999" is more than 100000 tasks');
});

Slurm("parseSlurm() keeps zero padding in host names (DI-engine lost it)", () => {
  const env = {
    SLURM_NTASKS: "4",
    SLURM_NTASKS_PER_NODE: "2",
    SLURM_NODELIST: "n[01-02]",
    SLURM_PROCID: "3",
    SLURMD_NODENAME: "n02",
  };
  const out = parseSlurm(env, base({ topology: "mesh" }));
  assert.is(out.address, "n02");
  assert.is(out.ports, 15152);
  assert.is(out.nodeIds, 3);
  assert.equal(out.attachTo, ["tcp://n01:15151", "tcp://n01:15152", "tcp://n02:15151"]);
});

Slurm("parseSlurm() places tasks by a compressed count like 2(x2),1", () => {
  const env = {
    SLURM_NTASKS: "5",
    SLURM_TASKS_PER_NODE: "2(x2),1",
    SLURM_NODELIST: "a[1-3]",
    SLURM_PROCID: "4",
    SLURMD_NODENAME: "a3",
  };
  const out = parseSlurm(env, base({ topology: "mesh" }));
  assert.is(out.address, "a3");
  assert.is(out.ports, 15151);
  assert.equal(out.attachTo, ["tcp://a1:15151", "tcp://a1:15152", "tcp://a2:15151", "tcp://a2:15152"]);
  // SLURM_NTASKS_PER_NODE wins over SLURM_TASKS_PER_NODE, as DI-engine reads it.
  const first = parseSlurm({ ...env, SLURM_NTASKS: "3", SLURM_PROCID: "2", SLURM_NTASKS_PER_NODE: "1" }, base());
  assert.is(first.address, "a3");
});

Slurm("parseSlurm() spaces ports by parallel workers and honours the CLI port base", () => {
  const out = parseSlurm(SLURM_ENV, base({ topology: "star", parallelWorkers: 2, ports: 20000 }));
  assert.is(out.ports, 20000);
  assert.is(out.nodeIds, 6);
  assert.equal(out.attachTo, ["tcp://SH-IDC1-10-5-38-190:20000", "tcp://SH-IDC1-10-5-38-190:20001"]);
  const third = parseSlurm({ ...SLURM_ENV, SLURM_PROCID: "5" }, base({ parallelWorkers: 2, ports: [20000] }));
  assert.is(third.ports, 20004);
});

Slurm("parseSlurm() reads a --platform-spec file path", () => {
  const dir = mkdtempSync(join(tmpdir(), "ditask-platform-"));
  try {
    const file = join(dir, "league.json");
    writeFileSync(file, JSON.stringify(leagueSpec(false)));
    const out = parseSlurm(SLURM_ENV, base({ platformSpec: file }));
    assert.is(out.nodeIds, 31);
    assert.equal(out.attachTo, IDC190);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Slurm("parseSlurm() names each missing environment variable", () => {
  for (const name of ["SLURM_NTASKS", "SLURM_NODELIST", "SLURM_PROCID", "SLURMD_NODENAME"]) {
    const err = throwsPlatform(() => parseSlurm({ ...SLURM_ENV, [name]: undefined }, base()), `${name} is not set`);
    assert.match(err.message, /^Cannot parse slurm platform: /);
  }
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_NTASKS_PER_NODE: undefined }, base()),
    "SLURM_NTASKS_PER_NODE is not set",
  );
});

Slurm("parseSlurm() rejects malformed or inconsistent values", () => {
  throwsPlatform(() => parseSlurm({ ...SLURM_ENV, SLURM_NTASKS: "six" }, base()), 'SLURM_NTASKS "six"');
  throwsPlatform(() => parseSlurm({ ...SLURM_ENV, SLURM_PROCID: "x" }, base()), 'SLURM_PROCID "x"');
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_PROCID: "6" }, base()),
    'SLURM_PROCID "6" is outside SLURM_NTASKS (6 tasks)',
  );
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_NODELIST: "SH-[190,215" }, base()),
    'SLURM_NODELIST "SH-[190,215" is malformed',
    "unclosed",
  );
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_NTASKS_PER_NODE: "3(x" }, base()),
    'SLURM_NTASKS_PER_NODE "3(x" is malformed',
  );
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_NTASKS_PER_NODE: "3(x3)" }, base()),
    "describes 3 nodes, but there are 2",
  );
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURM_NTASKS_PER_NODE: "2" }, base()),
    "places 4 tasks on 2 nodes, fewer than SLURM_NTASKS (6)",
  );
  throwsPlatform(
    () => parseSlurm({ ...SLURM_ENV, SLURMD_NODENAME: "SH-IDC1-10-5-38-190" }, base()),
    'task 3 is placed on "SH-IDC1-10-5-38-215" but SLURMD_NODENAME is "SH-IDC1-10-5-38-190"',
  );
  throwsPlatform(() => parseSlurm(SLURM_ENV, base({ ports: [1, 2] })), "one port base");
  throwsPlatform(() => parseSlurm(SLURM_ENV, base({ platformSpec: { tasks: [] } })), "lists 0 task(s)");
});

Slurm.run();

// ---------------------------------------------------------------------------------------------
const Hostlist = suite("parseHostlist");

Hostlist("parseHostlist() returns a plain name as is", () => {
  assert.equal(parseHostlist("login01"), ["login01"]);
  assert.equal(parseHostlist(" SH-IDC1-10-5-38-215 "), ["SH-IDC1-10-5-38-215"]);
});

Hostlist("parseHostlist() expands DI-engine's examples", () => {
  assert.equal(parseHostlist("SH-IDC1-10-5-38-[190,215]"), ["SH-IDC1-10-5-38-190", "SH-IDC1-10-5-38-215"]);
  assert.equal(parseHostlist("SH-IDC1-10-5-[38-40]"), ["SH-IDC1-10-5-38", "SH-IDC1-10-5-39", "SH-IDC1-10-5-40"]);
});

Hostlist("parseHostlist() keeps zero padding", () => {
  assert.equal(parseHostlist("n[001-003]"), ["n001", "n002", "n003"]);
  assert.equal(parseHostlist("n[08-11]"), ["n08", "n09", "n10", "n11"]);
  assert.equal(parseHostlist("n[8-10]"), ["n8", "n9", "n10"]);
  assert.equal(parseHostlist("n[007,9,010-011]"), ["n007", "n9", "n010", "n011"]);
});

Hostlist("parseHostlist() expands several bracket groups in one name", () => {
  assert.equal(parseHostlist("a[1-2]b[3-4]"), ["a1b3", "a1b4", "a2b3", "a2b4"]);
  assert.equal(parseHostlist("rack[1-2]-n[01,03]"), ["rack1-n01", "rack1-n03", "rack2-n01", "rack2-n03"]);
  assert.equal(parseHostlist("[1-2]x"), ["1x", "2x"]);
});

Hostlist("parseHostlist() splits comma-separated lists at the top level only", () => {
  assert.equal(parseHostlist("a[1-2],b,c[01,3]d"), ["a1", "a2", "b", "c01d", "c3d"]);
  assert.equal(parseHostlist("x, y"), ["x", "y"]);
});

Hostlist("parseHostlist() rejects malformed lists", () => {
  throwsPlatform(() => parseHostlist(""), "Cannot parse hostlist \"\": it is empty");
  throwsPlatform(() => parseHostlist("n[1-3"), 'unclosed "[" at position 1');
  throwsPlatform(() => parseHostlist("n1-3]"), 'unmatched "]" at position 4');
  throwsPlatform(() => parseHostlist("n[1[2]]"), 'nested "["');
  throwsPlatform(() => parseHostlist("n[5-3]"), 'range "5-3" goes backwards');
  throwsPlatform(() => parseHostlist("n[a-c]"), '"a-c"', "neither a number nor a range");
  throwsPlatform(() => parseHostlist("n[1-2-3]"), '"1-2-3"');
  throwsPlatform(() => parseHostlist("n[]"), 'empty "[]"');
  throwsPlatform(() => parseHostlist("a,,b"), "empty host name");
  throwsPlatform(() => parseHostlist("a b"), "white space");
  throwsPlatform(() => parseHostlist("n[0-9999999]"), "more than 100000 hosts");
  throwsPlatform(() => parseHostlist("a[0-999]b[0-999]"), "more than 100000 hosts");
});

Hostlist.run();

// ---------------------------------------------------------------------------------------------
const TasksPerNode = suite("parseTasksPerNode");

TasksPerNode("parseTasksPerNode() expands 3(x2) counts", () => {
  assert.equal(parseTasksPerNode("3(x2),1", 3), [3, 3, 1]);
  assert.equal(parseTasksPerNode("1(x3)", 3), [1, 1, 1]);
  assert.equal(parseTasksPerNode("2,1", 2), [2, 1]);
  assert.equal(parseTasksPerNode("4(x1),2(x2)", 3), [4, 2, 2]);
});

TasksPerNode("parseTasksPerNode() applies a single plain count to every node", () => {
  assert.equal(parseTasksPerNode("3", 2), [3, 3]);
  assert.equal(parseTasksPerNode("3", 1), [3]);
});

TasksPerNode("parseTasksPerNode() rejects malformed counts and a wrong node count", () => {
  throwsPlatform(() => parseTasksPerNode("3(x2),1", 2), "describes 3 nodes, but there are 2");
  throwsPlatform(() => parseTasksPerNode("3(2)", 1), '"3(2)" is not a count');
  throwsPlatform(() => parseTasksPerNode("three", 1), 'Cannot parse tasks per node "three"');
  throwsPlatform(() => parseTasksPerNode("0", 1), "at least 1");
  throwsPlatform(() => parseTasksPerNode("2(x0)", 1), "at least 1");
  throwsPlatform(() => parseTasksPerNode("", 1), "empty");
  throwsPlatform(() => parseTasksPerNode("1(x999999)", 1), "more than 100000 nodes");
  assert.throws(() => parseTasksPerNode("3", 0), (e: unknown) => e instanceof RangeError);
});

TasksPerNode.run();

// ---------------------------------------------------------------------------------------------
const Spec = suite("loadPlatformSpec");

Spec("loadPlatformSpec() parses a JSON string", () => {
  assert.equal(loadPlatformSpec(' {"tasks":[{"node_ids":1}]} '), { tasks: [{ node_ids: 1 }] });
});

Spec("loadPlatformSpec() reads a .json file path", () => {
  const dir = mkdtempSync(join(tmpdir(), "ditask-platform-"));
  try {
    const file = join(dir, "spec.json");
    writeFileSync(file, '\uFEFF{"tasks":[{"labels":"learn"}]}');
    assert.equal(loadPlatformSpec(file), { tasks: [{ labels: "learn" }] });
    writeFileSync(file, "{not json");
    throwsPlatform(() => loadPlatformSpec(file), `file ${JSON.stringify(file)} is not valid JSON`);
    throwsPlatform(() => loadPlatformSpec(join(dir, "missing.json")), "cannot read file", "missing.json");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

Spec("loadPlatformSpec() rejects invalid JSON and values that are neither JSON nor a path", () => {
  const err = throwsPlatform(() => loadPlatformSpec('{"tasks": [}'), "Cannot load platform spec: invalid JSON");
  assert.instance(err.cause, SyntaxError);
  throwsPlatform(() => loadPlatformSpec("tasks"), '"tasks" is neither a JSON object nor a path ending in ".json"');
  throwsPlatform(() => loadPlatformSpec("  "), "it is empty");
});

Spec.run();

// ---------------------------------------------------------------------------------------------
const Dispatch = suite("parsePlatform");

Dispatch("parsePlatform() runs the named parser", () => {
  assert.is(parsePlatform("k8s", K8S_ENV, base()).address, "SH-3");
  assert.is(parsePlatform("slurm", SLURM_ENV, base()).address, "SH-IDC1-10-5-38-215");
});

Dispatch("parsePlatform() rejects an unknown platform", () => {
  throwsPlatform(() => parsePlatform("mesos", {}, base()), 'Unknown platform "mesos": expected "k8s" or "slurm"');
});

Dispatch("PlatformError is a DitaskError with a stable code", () => {
  const err = new PlatformError("Cannot parse k8s platform: x", { cause: 1 });
  assert.instance(err, DitaskError);
  assert.is(err.name, "PlatformError");
  assert.is(err.code, "ERR_DITASK_PLATFORM");
  assert.is(err.cause, 1);
});

Dispatch.run();
