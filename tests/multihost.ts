// Three hosts on one machine: Linux network namespaces joined by a bridge, each running one
// `ditask --platform k8s --topology mesh` with DI_NODES/DI_RANK as a DIJob sets them (node i
// dials the lower ranks). The fixture main (tests/_fixtures/cli_multihost/mesh3.ts) checks that
// all three connect, that events flow between every pair, and that `finish` from one node ends
// all three.
//
//   npx tsc -p tsconfig.test.json && node .test-dist/tests/multihost.js
//
// Needs root and `ip netns` (iproute2); otherwise it prints `multihost: skipped (<why>)` and
// exits 0. Everything lives in namespaces it makes: a bridge namespace and three host namespaces
// with addresses in 10.199.0.0/24 that exist nowhere else, and host names in
// /etc/netns/<namespace>/hosts (which `ip netns exec` mounts over /etc/hosts). The namespaces,
// those files and every process are removed in a `finally`, also on failure, timeout or a signal.
//
// Environment: MULTIHOST_RUNTIMES (default "node,node,deno" when a deno binary is found, else
// "node,node,node"), MULTIHOST_TIMEOUT_MS (default 90000), DITASK_DENO (the deno binary).
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (this file runs from the compiled tree, .test-dist/tests/). */
const REPO = fileURLToPath(new URL("../../", import.meta.url));
const NODE_BIN = fileURLToPath(new URL("../lib/bin.js", import.meta.url));
const NODE_FIXTURES = fileURLToPath(new URL("./_fixtures/cli_multihost", import.meta.url));
const DENO_BIN = join(REPO, "lib", "bin.ts");
const DENO_FIXTURES = join(REPO, "tests", "_fixtures", "cli_multihost");

const HOSTS = 3;
const SUBNET = "10.199.0";
const PORT = 50515;
const FINISHER = 1;
const TIMEOUT_MS = Number(process.env["MULTIHOST_TIMEOUT_MS"] ?? 90_000);
const TAG = `dtmh${process.pid % 100_000}`;
const BRIDGE_NS = `${TAG}-br`;
const hostNs = (i: number) => `${TAG}-h${i}`;
const hostName = (i: number) => `mh-h${i}`;
const hostAddress = (i: number) => `${SUBNET}.${i + 1}`;

let passed = 0;
let failed = 0;
const createdNs: string[] = [];
const createdEtc: string[] = [];
let createdNetnsDir = false;
const children: ChildProcess[] = [];

function check(ok: boolean, what: string, detail = ""): void {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok" : "not ok"} - ${what}${!ok && detail ? `\n${detail}` : ""}`);
}

function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

function errText(err: unknown): string {
  const e = err as { stderr?: string | Buffer; message?: string };
  const stderr = e.stderr ? String(e.stderr).trim() : "";
  return stderr || e.message || String(err);
}

function denoBinary(): string | undefined {
  const candidates = [process.env["DITASK_DENO"], join(REPO, "node_modules", ".bin", "deno")];
  return candidates.find((c): c is string => c !== undefined && c !== "" && existsSync(c));
}

/** Build the bridge namespace and the three hosts. Throws with the failing command's message. */
function setUp(): void {
  ip("netns", "add", BRIDGE_NS);
  createdNs.push(BRIDGE_NS);
  ip("-n", BRIDGE_NS, "link", "set", "lo", "up");
  ip("-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge");
  ip("-n", BRIDGE_NS, "link", "set", "br0", "up");
  if (!existsSync("/etc/netns")) {
    mkdirSync("/etc/netns");
    createdNetnsDir = true;
  }
  const hosts = [
    "127.0.0.1 localhost",
    ...Array.from({ length: HOSTS }, (_v, i) => `${hostAddress(i)} ${hostName(i)}`),
  ];
  for (let i = 0; i < HOSTS; i++) {
    const ns = hostNs(i);
    ip("netns", "add", ns);
    createdNs.push(ns);
    // Both ends are made directly inside their namespaces: the root namespace never sees them.
    ip(
      "link",
      "add",
      "name",
      `${TAG}h${i}`,
      "netns",
      ns,
      "type",
      "veth",
      "peer",
      "name",
      `${TAG}b${i}`,
      "netns",
      BRIDGE_NS,
    );
    ip("-n", ns, "link", "set", "lo", "up");
    ip("-n", ns, "link", "set", `${TAG}h${i}`, "name", "eth0");
    ip("-n", ns, "addr", "add", `${hostAddress(i)}/24`, "dev", "eth0");
    ip("-n", ns, "link", "set", "eth0", "up");
    ip("-n", BRIDGE_NS, "link", "set", `${TAG}b${i}`, "master", "br0");
    ip("-n", BRIDGE_NS, "link", "set", `${TAG}b${i}`, "up");
    const etc = join("/etc/netns", ns);
    mkdirSync(etc, { recursive: true });
    createdEtc.push(etc);
    writeFileSync(join(etc, "hosts"), hosts.join("\n") + "\n");
  }
}

function tearDown(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  for (const ns of createdNs.splice(0).reverse()) {
    try {
      ip("netns", "del", ns);
    } catch (err) {
      console.error(`multihost: cannot delete namespace ${ns}: ${errText(err)}`);
    }
  }
  for (const etc of createdEtc.splice(0)) rmSync(etc, { recursive: true, force: true });
  if (createdNetnsDir) {
    try {
      if (readdirSync("/etc/netns").length === 0) rmdirSync("/etc/netns");
    } catch {
      // Someone else uses it now.
    }
    createdNetnsDir = false;
  }
}

interface Host {
  index: number;
  runtime: "node" | "deno";
  child: ChildProcess;
  stdout: string;
  stderr: string;
  exit: Promise<{ code: number | null; signal: string | null; at: number }>;
}

function startHost(index: number, runtime: "node" | "deno", deno: string | undefined): Host {
  const cliArgs = [
    "--platform",
    "k8s",
    "--topology",
    "mesh",
    "--package",
    runtime === "node" ? NODE_FIXTURES : DENO_FIXTURES,
    "--main",
    "mesh3.main",
  ];
  const command = runtime === "node"
    ? [process.execPath, NODE_BIN, ...cliArgs]
    : [deno!, "run", "-A", DENO_BIN, ...cliArgs];
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !/^(DITASK_|DI_|SLURM_|SLURMD_)/.test(k) && k !== "JOB_COMPLETION_INDEX") env[k] = v;
  }
  Object.assign(env, {
    // As DI-orchestrator sets them: every pod's host, in rank order, and this pod's rank.
    DI_NODES: Array.from({ length: HOSTS }, (_v, i) => hostName(i)).join(","),
    DI_RANK: String(index),
    HOSTNAME: hostName(index),
    MULTIHOST_FINISHER: String(FINISHER),
    DENO_NO_UPDATE_CHECK: "1",
  });
  // `ip netns exec` execs the command, so the PID is the CLI's own.
  const child = spawn("ip", ["netns", "exec", hostNs(index), ...command], {
    cwd: REPO,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  const host: Host = { index, runtime, child, stdout: "", stderr: "", exit: undefined as never };
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (host.stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (host.stderr += d));
  host.exit = new Promise((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal, at: Date.now() }));
    child.on("error", (err) => {
      host.stderr += `\n[multihost] cannot start: ${err.message}`;
      resolve({ code: null, signal: null, at: Date.now() });
    });
  });
  return host;
}

function dump(hosts: Host[]): string {
  return hosts.map((h) => `--- host ${h.index} (${h.runtime}) stdout\n${h.stdout}--- stderr\n${h.stderr}`).join("\n");
}

async function run(): Promise<void> {
  if (typeof process.getuid === "function" && process.getuid() !== 0) {
    console.log("multihost: skipped (not root)");
    return;
  }
  try {
    ip("netns", "list");
  } catch (err) {
    console.log(`multihost: skipped (ip netns is not available: ${errText(err).split("\n")[0]})`);
    return;
  }
  if (!existsSync(NODE_BIN) || !existsSync(join(NODE_FIXTURES, "mesh3.js"))) {
    console.log("multihost: 0 passed, 1 failed");
    console.error("multihost: build first: npx tsc -p tsconfig.test.json");
    process.exitCode = 1;
    return;
  }
  try {
    setUp();
  } catch (err) {
    tearDown();
    console.log(`multihost: skipped (cannot create network namespaces: ${errText(err).split("\n")[0]})`);
    return;
  }
  const deno = denoBinary();
  const runtimes = (process.env["MULTIHOST_RUNTIMES"] ?? (deno ? "node,node,deno" : "node,node,node"))
    .split(",").map((r) => r.trim());
  if (
    runtimes.length !== HOSTS || runtimes.some((r) => r !== "node" && r !== "deno") ||
    (runtimes.includes("deno") && !deno)
  ) {
    check(
      false,
      `MULTIHOST_RUNTIMES ${
        JSON.stringify(runtimes.join(","))
      } names ${HOSTS} runtimes (node or deno; deno needs a binary)`,
    );
    return;
  }
  check(true, `${HOSTS} hosts in network namespaces ${TAG}-h0..h${HOSTS - 1}, bridged in ${BRIDGE_NS}`);

  // Isolation: the test subnet exists only inside the namespaces made here.
  const rootAddrs = ip("-o", "addr", "show") + ip("route", "show");
  check(!rootAddrs.includes(`${SUBNET}.`), `the root namespace has no ${SUBNET}.0/24 address or route`);
  const routes = Array.from({ length: HOSTS }, (_v, i) => ip("-n", hostNs(i), "route", "show"));
  check(
    routes.every((r) =>
      r.trim() === `${SUBNET}.0/24 dev eth0 proto kernel scope link src ${SUBNET}.${routes.indexOf(r) + 1}`
    ),
    "each host's only route is the test subnet on its own eth0 (no way out)",
    routes.join("\n"),
  );

  const started = Date.now();
  const hosts = runtimes.map((r, i) => startHost(i, r as "node" | "deno", deno));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = await Promise.race([
    Promise.all(hosts.map((h) => h.exit)).then(() => false),
    new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
  if (timedOut) {
    for (const h of hosts) if (h.child.exitCode === null) h.child.kill("SIGKILL");
    await Promise.all(hosts.map((h) => h.exit));
  }
  const exits = await Promise.all(hosts.map((h) => h.exit));
  check(!timedOut, `every host ended within ${TIMEOUT_MS} ms (took ${Date.now() - started} ms)`, dump(hosts));

  const others = (i: number) => Array.from({ length: HOSTS }, (_v, j) => j).filter((j) => j !== i);
  for (const h of hosts) {
    const i = h.index;
    const e = exits[i]!;
    check(e.code === 0, `host ${i} (${h.runtime}) exited with code 0 (got ${e.code ?? e.signal})`, dump([h]));
    const out = h.stdout.split("\n");
    const startLine = h.stderr.split("\n").find((l) => l.startsWith("ditask: running"));
    check(
      startLine !== undefined && startLine.includes(`on ${hostName(i)} port ${PORT}`) && startLine.includes("from k8s"),
      `host ${i} listens on its own host name ${hostName(i)}:${PORT}`,
      startLine ?? dump([h]),
    );
    check(
      out.includes(`node ${i}: peers at start ${others(i).join(",")}`),
      `node ${i}'s main started connected to nodes ${others(i).join(" and ")} (it dials only the lower ranks)`,
      dump([h]),
    );
    check(
      out.includes(`node ${i}: peers ${others(i).join(",")}`),
      `node ${i} is connected to nodes ${others(i).join(" and ")}`,
      dump([h]),
    );
    for (const j of others(i)) {
      check(
        out.includes(`node ${i} got hello from node ${j} (sender ${j})`),
        `an event from node ${j} reached node ${i} (sender ${j})`,
        dump([h]),
      );
    }
  }
  const finisher = exits[FINISHER]!;
  check(
    hosts[FINISHER]!.stdout.includes(`node ${FINISHER}: every node greeted every other; finishing`),
    `node ${FINISHER} finished after every pair exchanged events`,
    dump([hosts[FINISHER]!]),
  );
  for (const i of others(FINISHER)) {
    const h = hosts[i]!;
    check(
      h.stdout.includes(`node ${i}: stopped by finish from node ${FINISHER}`) && exits[i]!.at - finisher.at < 10_000,
      `finish from node ${FINISHER} ended node ${i} (${exits[i]!.at - finisher.at} ms after node ${FINISHER} exited)`,
      dump([h]),
    );
  }
}

function finish(): never {
  tearDown();
  const gone = createdNs.length === 0 && !ip("netns", "list").includes(TAG);
  if (!gone) failed++;
  console.log(`multihost: ${passed} passed, ${failed} failed`);
  process.exit(failed > 0 ? 1 : 0);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    console.error(`multihost: interrupted by ${signal}`);
    failed++;
    finish();
  });
}

try {
  await run();
} catch (err) {
  check(false, "the test ran without an exception", (err as Error)?.stack ?? String(err));
} finally {
  if (passed + failed > 0) finish();
}
