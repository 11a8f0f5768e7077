// The ditask command line, spawned for real: the compiled `.test-dist/lib/bin.js` on Node,
// `lib/bin.ts` on Deno. Fixtures: tests/_fixtures/cli_pkg (mains in a package) and
// tests/_fixtures/cli_ts (a TypeScript main); the temporary packages are made under tmpdir().
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { ChildProcess } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ext, freePort, killAll, type RunResult, runtimeKey, type ScriptOptions, show, startScript } from "./_helpers.ts";
import { redisServerPath, startRedis } from "./_redis.ts";

/** The CLI of this runtime's tree. */
const BIN = fileURLToPath(new URL(`../lib/bin${ext}`, import.meta.url));
/** This runtime's fixtures (compiled to .js on Node). */
const FIXTURES = fileURLToPath(new URL("./_fixtures/", import.meta.url));
const PKG = join(FIXTURES, "cli_pkg");
/** The repository root (the Node tree runs from .test-dist/tests/). */
const REPO = fileURLToPath(new URL(ext === ".ts" ? "../" : "../../", import.meta.url));
/** The `mod` the CLI itself runs from: a main must import this one to share its `task`. */
const MOD_URL = new URL(`../mod${ext}`, import.meta.url).href;

type CliResult = RunResult;

const tempDirs: string[] = [];

/** Run the CLI to completion (killed by PID after `timeoutMs`) and collect its output. */
function runCli(args: string[], options: ScriptOptions = {}): Promise<CliResult> {
  return startCli(args, options).done;
}

/** Start the CLI from the repository root; `done` settles when it ends. */
function startCli(args: string[], options: ScriptOptions = {}): { child: ChildProcess; done: Promise<CliResult> } {
  return startScript(BIN, args, { cwd: REPO, ...options });
}

function lines(text: string): string[] {
  return text.split("\n").map((l) => l.trimEnd()).filter((l) => l !== "");
}


function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "ditask-cli-test-"));
  tempDirs.push(dir);
  return dir;
}

/** Assert the run was refused as bad input: exit code 2, one `ditask:` line, no stack trace. */
function assertUsage(r: CliResult, pattern: RegExp): void {
  assert.is(r.code, 2, show(r));
  assert.is(r.stdout, "", show(r));
  const err = lines(r.stderr);
  assert.is(err.length, 1, show(r));
  assert.match(err[0]!, /^ditask: [A-Z]/, show(r));
  assert.match(err[0]!, pattern, show(r));
  assert.not.match(r.stderr, /^\s+at /m, "no stack trace");
  assert.not.match(err[0]!, /\.$/, "no trailing period");
}

const Cli = suite("ditask CLI");

Cli.after(() => {
  killAll();
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

const EVERY_OPTION = [
  "-p, --package",
  "-m, --main",
  "--parallel-workers",
  "--protocol",
  "--address",
  "--ports",
  "--topology",
  "--attach-to",
  "--node-ids",
  "--labels",
  "--platform ",
  "--platform-spec",
  "--mq-type",
  "--redis-host",
  "--redis-port",
  "--startup-interval",
  "--auto-recover",
  "--max-retries",
  "--local_rank",
  "-q, --quiet",
  "--secret",
  "--tls-cert",
  "--tls-key",
  "--tls-ca",
  "-v, --version",
  "-h, --help",
];

Cli("--help prints Usage, every option and two examples", async () => {
  for (const flag of ["--help", "-h"]) {
    const r = await runCli([flag]);
    assert.is(r.code, 0, show(r));
    assert.is(r.stderr, "", show(r));
    assert.match(r.stdout, /^Usage: ditask \[options\]/);
    assert.match(r.stdout, /\nOptions:\n/);
    for (const option of EVERY_OPTION) assert.ok(r.stdout.includes(option), `help lacks ${option}`);
    const examples = r.stdout.split("\nExamples:\n")[1] ?? "";
    assert.is(lines(examples).filter((l) => l.startsWith("  ditask ")).length, 2, r.stdout);
  }
});

Cli("--version prints the version of package.json and deno.json", async () => {
  const pkg = JSON.parse(readFileSync(join(REPO, "package.json"), "utf8")) as { version: string };
  const deno = JSON.parse(readFileSync(join(REPO, "deno.json"), "utf8")) as { version: string };
  assert.is(deno.version, pkg.version, "package.json and deno.json disagree");
  for (const flag of ["--version", "-v"]) {
    const r = await runCli([flag]);
    assert.is(r.code, 0, show(r));
    assert.is(r.stdout, `ditask ${pkg.version}\n`, "lib/version.ts must match the manifests");
    assert.is(r.stderr, "");
  }
});

const DI_ONE = { DI_NODES: "127.0.0.1", DI_RANK: "0" };
const mainArgs = ["--package", PKG, "--main", "mesh.report"];

const BAD_INPUT: Array<[string, string[], Record<string, string>, RegExp]> = [
  ["an unknown option", ["--foo"], {}, /^ditask: Unknown option "--foo"$/],
  [
    "a misspelt option",
    ["--parallel_workers", "2"],
    {},
    /Unknown option "--parallel_workers": did you mean "--parallel-workers"\?/,
  ],
  ["a positional argument", ["train.py"], {}, /Unexpected argument "train\.py"/],
  ["an option without its value", [...mainArgs, "--ports"], {}, /Option "--ports" needs a value/],
  ["a value for a flag", ["--quiet=yes"], {}, /Option "--quiet" does not take a value/],
  ["an empty secret", [...mainArgs, "--secret="], {}, /Invalid --secret ""/],
  ["a secret with Redis", [...mainArgs, "--mq-type", "redis", "--secret", "s"], {}, /secret secures the ws mesh and does nothing with mqType "redis"/],
  ["a connect timeout that is not a positive number", [...mainArgs, "--connect-timeout", "0"], {}, /Invalid --connect-timeout "0": expected a number of seconds > 0/],
  ["a connect timeout longer than a timer takes", [...mainArgs, "--connect-timeout", "3000000"], {}, /Invalid --connect-timeout "3000000": expected a number of seconds > 0 and at most 2147483/],
  [
    "a certificate without a key",
    [...mainArgs, "--tls-cert", "cert.pem"],
    {},
    /"--tls-cert" and "--tls-key" go together/,
  ],
  [
    "a missing certificate file",
    [...mainArgs, "--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"],
    {},
    /Cannot read --tls-cert "\/nonexistent\/cert\.pem"/,
  ],
  [
    "a bad port list",
    [...mainArgs, "--ports", "50515,http"],
    {},
    /Invalid --ports "50515,http": expected port numbers/,
  ],
  ["a port out of range", [...mainArgs, "--ports", "70000"], {}, /Invalid --ports "70000"/],
  [
    "ports that do not match the workers",
    [...mainArgs, "--parallel-workers", "2", "--ports", "1,2,3"],
    {},
    /3 ports for 2 workers/,
  ],
  [
    "two workers on one port",
    [...mainArgs, "--parallel-workers", "2", "--protocol", "tcp", "--ports", "50515,50515"],
    {},
    /Invalid ports \[50515,50515\]: ports repeat/,
  ],
  [
    "zero workers",
    [...mainArgs, "--parallel-workers", "0"],
    {},
    /Invalid --parallel-workers "0": expected an integer from 1 to 4096/,
  ],
  [
    "a typo of a billion workers (it used to run out of memory building their plans)",
    [...mainArgs, "--parallel-workers", "1000000000"],
    {},
    /Invalid --parallel-workers "1000000000": expected an integer from 1 to 4096/,
  ],
  [
    "an unknown topology",
    [...mainArgs, "--topology", "ring"],
    {},
    /Unknown --topology "ring": expected "mesh", "star" or "alone"/,
  ],
  ["a bad node id list", [...mainArgs, "--node-ids", "1,-2"], {}, /Invalid --node-ids "1,-2"/],
  ["a bad attach-to address", [...mainArgs, "--attach-to", "10.0.0.4"], {}, /Invalid peer address "10\.0\.0\.4"/],
  ["an unknown mq type", [...mainArgs, "--mq-type", "zmq"], {}, /Unknown --mq-type "zmq"/],
  [
    "a missing package directory",
    ["--package", join(FIXTURES, "cli_nope"), "--main", "x.main"],
    {},
    /Package directory ".*cli_nope" does not exist/,
  ],
  [
    "a missing module",
    ["--package", PKG, "--main", "nope.main"],
    {},
    /Cannot find module "nope" in package ".*cli_pkg": tried nope\.ts, nope\.js/,
  ],
  [
    "a missing export",
    ["--package", PKG, "--main", "mesh.nothing"],
    {},
    /Module ".*mesh\.[jt]s" has no export "nothing" \(its functions: .*main/,
  ],
  [
    "an export that is not a function",
    ["--package", PKG, "--main", "mesh.notAFunction"],
    {},
    /Export "notAFunction" of ".*" is not a function/,
  ],
  ["a missing main file", ["--package", PKG, "--main", "nope.ts#main"], {}, /Cannot find main file "nope\.ts"/],
  ["a malformed main", ["--package", PKG, "--main", "mesh."], {}, /Invalid --main "mesh\."/],
  [
    "an unknown platform",
    [...mainArgs, "--platform", "mars"],
    {},
    /Unknown --platform "mars": expected "k8s" or "slurm"/,
  ],
  [
    "a platform spec without a platform",
    [...mainArgs, "--platform-spec", "{}"],
    {},
    /"--platform-spec" needs "--platform k8s"/,
  ],
  [
    "bad platform spec JSON",
    [...mainArgs, "--platform", "k8s", "--platform-spec", '{"tasks": ['],
    DI_ONE,
    /Cannot load platform spec: invalid JSON/,
  ],
  [
    "a missing platform spec file",
    [...mainArgs, "--platform", "k8s", "--platform-spec", "/nonexistent/spec.json"],
    DI_ONE,
    /cannot read file "\/nonexistent\/spec\.json"/,
  ],
  ["missing k8s variables", [...mainArgs, "--platform", "k8s"], {}, /Cannot parse k8s platform: none of DI_NODES/],
  [
    "missing slurm variables",
    [...mainArgs, "--platform", "slurm"],
    {},
    /Cannot parse slurm platform: SLURM_NTASKS is not set/,
  ],
  [
    "DI_RANK outside DI_NODES (a PlatformError)",
    [...mainArgs, "--platform", "k8s"],
    { DI_NODES: "a,b", DI_RANK: "2" },
    /DI_RANK "2" is outside DI_NODES \(2 nodes\)/,
  ],
  [
    "ipc on a platform",
    [...mainArgs, "--platform", "k8s", "--protocol", "ipc"],
    DI_ONE,
    /protocol "ipc" cannot reach other machines/,
  ],
];

for (const [name, args, env, pattern] of BAD_INPUT) {
  Cli(`main() refuses ${name}: exit code 2, one line, no stack trace`, async () => {
    assertUsage(await runCli(args, { env }), pattern);
  });
}

Cli("a two-worker mesh run prefixes each worker's lines with [node <id>]", async () => {
  const r = await runCli(["--package", PKG, "--main", "mesh.main", "--parallel-workers", "2", "--topology", "mesh"]);
  assert.is(r.code, 0, show(r));
  const out = lines(r.stdout);
  assert.ok(out.includes("[node 0] node 0 got hello from node 1"), show(r));
  assert.ok(out.includes("[node 1] node 1 got hello from node 0"), show(r));
  assert.ok(out.includes("[node 0] node 0 peers 1") && out.includes("[node 1] node 1 peers 0"), show(r));
  for (const l of out) assert.match(l, /^\[node [01]\] /, show(r));
  const err = lines(r.stderr);
  assert.ok(
    err.includes("[node 0] node 0 says bye on stderr") && err.includes("[node 1] node 1 says bye on stderr"),
    show(r),
  );
  assert.match(
    err[0]!,
    /^ditask: running mesh\.main \(.*mesh\.[jt]s\): 2 workers \(nodes 0, 1\), mesh over tcp/,
    show(r),
  );
});

Cli("--mq-type redis: two workers greet each other through a Redis server; the launch line says so", async () => {
  if (!redisServerPath()) return console.log("SKIPPED: redis-server is not installed (scripts/ensure_redis.sh installs it)");
  const srv = await startRedis();
  try {
    const job = `cli-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    const r = await runCli(
      ["-p", PKG, "-m", "mesh.main", "--parallel-workers", "2", "--mq-type", "redis", "--redis-port", String(srv.port)],
      { env: { DITASK_JOB: job } },
    );
    assert.is(r.code, 0, show(r));
    const out = lines(r.stdout);
    assert.ok(out.includes("[node 0] node 0 got hello from node 1"), show(r));
    assert.ok(out.includes("[node 1] node 1 got hello from node 0"), show(r));
    // (Not the peers lines: over Redis a worker that is done leaves at once, so the other may see none.)
    const first = lines(r.stderr)[0]!;
    assert.match(first, new RegExp(`^ditask: running mesh\\.main \\(.*\\): 2 workers \\(nodes 0, 1\\), through Redis at redis://127\\.0\\.0\\.1:${srv.port}, job "${job}"$`), show(r));
  } finally {
    await srv.stop();
  }
});

Cli("a failing worker: exit code 1 and one line naming the node and its message", async () => {
  const r = await runCli(["-q", "-p", PKG, "-m", "mesh.fails", "--parallel-workers", "2", "--topology", "mesh"]);
  assert.is(r.code, 1, show(r));
  const own = lines(r.stderr).filter((l) => l.startsWith("ditask:"));
  assert.equal(own, ["ditask: node 1 failed: boom from the fixture"], show(r));
  assert.ok(lines(r.stderr).at(-1) === own[0], "the failure is the last line");
});

Cli("a worker's error: a thrown object shows as JSON; DITASK_LOG=debug prints the worker's own stack and cause", async () => {
  const r = await runCli(["-q", "-p", PKG, "-m", "mesh.throwsObject", "--parallel-workers", "2"]);
  assert.is(r.code, 1, show(r));
  assert.ok(lines(r.stderr).includes('ditask: node 1 failed: {"code":5,"detail":"not an Error"}'), show(r));
  const d = await runCli(["-q", "-p", PKG, "-m", "mesh.failsWithCause", "--parallel-workers", "2"], { env: { DITASK_LOG: "debug" } });
  assert.is(d.code, 1, show(d));
  assert.ok(lines(d.stderr).includes("ditask: node 1 failed: outer failure"), show(d));
  // The stack is where the worker threw (the fixture), not where the launcher rebuilt the error.
  assert.match(d.stderr, /Error: outer failure\n\s+at failsWithCause \(/, show(d));
  assert.match(d.stderr, /\[cause\]: RangeError: inner reason/, show(d));
  assert.not.match(d.stderr, /RemoteError: outer failure\n\s+at fromPlainError/, show(d));
});

Cli("a failing main in a single worker: exit code 1, node 0 named", async () => {
  const r = await runCli(["-q", "-p", PKG, "-m", "mesh.fails", "--node-ids", "1"]);
  assert.is(r.code, 1, show(r));
  assert.equal(lines(r.stderr), ["ditask: node 1 failed: boom from the fixture"], show(r));
});

/** A copy of the TypeScript fixture whose ditask import is the CLI's own `mod` (see typed.ts). */
function typedPackage(): string {
  const dir = tempDir();
  const source = readFileSync(join(REPO, "tests", "_fixtures", "cli_ts", "typed.ts"), "utf8");
  assert.ok(source.includes('from "../../../mod.ts"'));
  writeFileSync(join(dir, "typed.ts"), source.replace('from "../../../mod.ts"', `from ${JSON.stringify(MOD_URL)}`));
  writeFileSync(join(dir, "package.json"), JSON.stringify({ type: "module" }));
  return dir;
}

Cli(`a .ts main runs on ${runtimeKey} (two workers)`, async () => {
  const r = await runCli([
    "-p",
    typedPackage(),
    "-m",
    "typed.main",
    "--parallel-workers",
    "2",
    "--topology",
    "mesh",
    "-q",
  ]);
  assert.is(r.code, 0, show(r));
  const out = lines(r.stdout);
  assert.ok(out.includes("[node 0] typed node 0: typed hello from node 1"), show(r));
  assert.ok(out.includes("[node 1] typed node 1: typed hello from node 0"), show(r));
});

Cli("--main path/to/file.ts#fn calls that export of that file", async () => {
  const dir = typedPackage();
  const r = await runCli(["-q", "--main", join(dir, "typed.ts") + "#other", "--node-ids", "7"]);
  assert.is(r.code, 0, show(r));
  assert.is(r.stdout, "typed other on node 7\n", show(r));
  // Relative to the package directory; a single worker's output is not prefixed.
  const rel = await runCli(["-q", "-p", PKG, "-m", `mesh${ext}#report`, "--labels", "a,b"]);
  assert.is(rel.code, 0, show(rel));
  assert.is(rel.stdout, "report node 0 active true labels [a,b] peers []\n", show(rel));
});

Cli("--main resolves a.b.fn to a/b, a directory's mod file, and a bare module name", async () => {
  const nested = await runCli(["-q", "-p", PKG, "-m", "nested.deep.main"]);
  assert.is(nested.stdout, "nested.deep main on node 0\n", show(nested));
  const dir = await runCli(["-q", "-p", PKG, "-m", "dirmod.main"]);
  assert.is(dir.stdout, "dirmod main on node 0\n", show(dir));
  const bare = await runCli(["-q", "-p", PKG, "-m", "cli_pkg"]);
  assert.is(bare.stdout, "default main of cli_pkg on node 0\n", show(bare));
});

Cli("without --main, <package dir name>.main runs; without --package, the working directory", async () => {
  const r = await runCli(["--package", PKG]);
  assert.is(r.code, 0, show(r));
  assert.is(r.stdout, "default main of cli_pkg on node 0\n", show(r));
  assert.match(r.stderr, /^ditask: running cli_pkg\.main /);
  const cwd = await runCli(["-q"], { cwd: PKG });
  assert.is(cwd.code, 0, show(cwd));
  assert.is(cwd.stdout, "default main of cli_pkg on node 0\n", show(cwd));
});

Cli("the package directory wins over an installed package of the same name", async () => {
  const dir = tempDir();
  writeFileSync(join(dir, "shadowed.mjs"), 'export function main() { console.log("local shadowed"); }\n');
  const installed = join(dir, "node_modules", "shadowed");
  mkdirSync(installed, { recursive: true });
  writeFileSync(
    join(installed, "package.json"),
    JSON.stringify({ name: "shadowed", type: "module", exports: "./index.js", main: "index.js" }),
  );
  writeFileSync(join(installed, "index.js"), 'export function main() { console.log("installed shadowed"); }\n');
  const r = await runCli(["-q", "-p", dir, "-m", "shadowed.main"]);
  assert.is(r.code, 0, show(r));
  assert.is(r.stdout, "local shadowed\n", show(r));
  // And a name found only in node_modules is not taken from there.
  rmSync(join(dir, "shadowed.mjs"));
  assertUsage(await runCli(["-q", "-p", dir, "-m", "shadowed.main"]), /Cannot find module "shadowed"/);
});

Cli("--platform k8s with DI_NODES and DI_RANK runs node 0 (with spec labels; --local_rank ignored)", async () => {
  const port = await freePort();
  const r = await runCli(
    [
      "--platform",
      "k8s",
      "--topology",
      "mesh",
      "--ports",
      String(port),
      "--local_rank",
      "3",
      "--package",
      PKG,
      "--main",
      "mesh.report",
      "--platform-spec",
      '{"tasks": [{"labels": "learner,gpu"}]}',
    ],
    { env: DI_ONE },
  );
  assert.is(r.code, 0, show(r));
  assert.is(r.stdout, "report node 0 active true labels [gpu,learner] peers []\n", show(r));
  assert.match(
    r.stderr,
    new RegExp(`^ditask: running mesh\\.report .*on 127\\.0\\.0\\.1 port ${port}.*from k8s\\n$`),
    show(r),
  );
});

Cli("--platform k8s reads a spec file (a .json path)", async () => {
  const dir = tempDir();
  const spec = join(dir, "cluster.json");
  writeFileSync(spec, JSON.stringify({ tasks: [{ labels: ["evaluator"], node_ids: 5, ports: await freePort() }] }));
  const r = await runCli(["-q", "--platform", "k8s", "--platform-spec", spec, ...mainArgs], { env: DI_ONE });
  assert.is(r.code, 0, show(r));
  assert.is(r.stdout, "report node 5 active true labels [evaluator] peers []\n", show(r));
});

Cli("--secret: workers that share it connect; a process with another secret is refused", async () => {
  const ok = await runCli([
    "-q",
    "-p",
    PKG,
    "-m",
    "mesh.main",
    "--parallel-workers",
    "2",
    "--topology",
    "mesh",
    "--secret",
    "s3cret",
  ]);
  assert.is(ok.code, 0, show(ok));
  assert.ok(lines(ok.stdout).includes("[node 0] node 0 got hello from node 1"), show(ok));
  const port = await freePort();
  const right = startCli(["-q", "-p", PKG, "-m", "mesh.linger", "--ports", String(port), "--secret", "right"]);
  try {
    const wrong = await runCli([
      "-q",
      "-p",
      PKG,
      "-m",
      "mesh.report",
      "--node-ids",
      "1",
      "--attach-to",
      `tcp://127.0.0.1:${port}`,
      "--secret",
      "wrong",
    ]);
    assert.is(wrong.code, 1, show(wrong));
    assert.is(wrong.stdout, "", show(wrong));
    assert.match(lines(wrong.stderr).at(-1)!, /^ditask: node 1 failed: .*authentication/, show(wrong));
  } finally {
    right.child.kill("SIGKILL");
    await right.done;
  }
});

Cli("--connect-timeout: a worker whose peer never comes up fails after that long, naming the address", async () => {
  const port = await freePort(); // nothing listens there
  const started = Date.now();
  const r = await runCli(["-q", ...mainArgs, "--node-ids", "1", "--attach-to", `tcp://127.0.0.1:${port}`, "--connect-timeout", "1.5"], {
    timeoutMs: 30_000,
  });
  const took = Date.now() - started;
  assert.is(r.code, 1, show(r));
  assert.match(lines(r.stderr).at(-1)!, new RegExp(`Cannot connect to tcp://127\\.0\\.0\\.1:${port} within 1500 ms`), show(r));
  // Bounded from below only: how soon after 1.5 s the process is gone depends on the machine.
  assert.ok(took >= 1500, `ended after ${took} ms`);
});

Cli("--quiet silences ditask's own lines", async () => {
  const loud = await runCli(mainArgs);
  assert.is(loud.code, 0, show(loud));
  assert.is(lines(loud.stderr).length, 1, show(loud));
  const quiet = await runCli([...mainArgs, "--quiet"]);
  assert.is(quiet.code, 0, show(quiet));
  assert.is(quiet.stderr, "", show(quiet));
  assert.is(quiet.stdout, loud.stdout);
});

Cli.run();
