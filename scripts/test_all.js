#!/usr/bin/env node
// `npm test`: type-check and build, run the uvu suites on Node and on Deno, then the multi-host
// test when this machine allows it. Prints one closing line `N passed, N failed` and exits
// non-zero on any failure. The summary is also written to .test-dist/summary.txt.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const bin = (name) => join(root, "node_modules", ".bin", name);
let passed = 0;
let failed = 0;

function step(label, cmd, args, { count = false, env = {} } = {}) {
  console.log(`\n=== ${label}: ${[cmd, ...args].join(" ")}`);
  const r = spawnSync(cmd, args, { cwd: root, encoding: "utf8", env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"], maxBuffer: 256 * 1024 * 1024 });
  process.stdout.write(r.stdout ?? "");
  const ok = r.status === 0;
  if (count) {
    const m = /^(?:[\w-]+: )?(\d+) passed, (\d+) failed/m.exec([...(r.stdout ?? "").split("\n")].reverse().join("\n"));
    if (m) {
      passed += Number(m[1]);
      failed += Number(m[2]);
      if (!ok && Number(m[2]) === 0) failed += 1; // crashed after counting
      return ok;
    }
  }
  if (ok) passed += 1;
  else failed += 1;
  if (!ok) console.log(`=== ${label} FAILED (exit ${r.status}${r.signal ? `, ${r.signal}` : ""})`);
  return ok;
}

const only = process.argv[2]; // "node" or "deno" to run one runtime only
const typed = step("type-check and compile tests", bin("tsc"), ["-p", "tsconfig.test.json"]);
// The package's own build (tsc, then the bundle the npm entry and bin point at), not a copy of it.
step("build dist", "npm", ["run", "--silent", "build"]);
if (typed || existsSync(join(root, ".test-dist/tests/run.js"))) {
  if (only !== "deno") step("uvu suites on Node", process.execPath, [".test-dist/tests/run.js"], { count: true });
}
if (only !== "node") step("uvu suites on Deno", bin("deno"), ["run", "-A", "tests/run.ts"], { count: true });
if (!only && existsSync(join(root, ".test-dist/tests/multihost.js"))) {
  step("multi-host test (network namespaces)", process.execPath, [".test-dist/tests/multihost.js"], { count: true });
}

const summary = `${passed} passed, ${failed} failed`;
mkdirSync(join(root, ".test-dist"), { recursive: true });
writeFileSync(join(root, ".test-dist", "summary.txt"), summary + "\n");
console.log(`\n${summary}`);
process.exitCode = failed > 0 ? 1 : 0;
