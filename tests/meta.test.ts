import { suite } from "uvu";
import * as assert from "uvu/assert";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { repoRoot, runScript, testPath } from "./_helpers.ts";
import * as mod from "../mod.ts";

const M = suite("meta");
const root = repoRoot();
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const deno = JSON.parse(readFileSync(join(root, "deno.json"), "utf8"));

M("deno.json and package.json agree on name, version and dependencies", () => {
  assert.is(deno.name, pkg.name);
  assert.is(deno.version, pkg.version);
  for (const [name, range] of Object.entries(pkg.dependencies as Record<string, string>)) {
    assert.is(deno.imports[name], `npm:${name}@${range}`, name);
  }
  assert.is(deno.imports.uvu, `npm:uvu@${pkg.devDependencies.uvu}`);
  assert.is(deno.exports, "./mod.ts");
  assert.is(pkg.exports["."].default, "./dist/bundle/mod.js");
  assert.is(pkg.bin.ditask, "./dist/bundle/lib/bin.js");
  assert.is(pkg.type, "module");
  assert.is(pkg.overrides["cbor-extract"], "2.2.2");
});

M("the runtime dependencies are the ones the SPEC allows", () => {
  const allowed = ["cbor-x", "nanoid", "ws", "tsx", "@redis/client"];
  for (const name of Object.keys(pkg.dependencies)) assert.ok(allowed.includes(name), `unexpected dependency ${name}`);
});

M("mod.ts exports the SPEC's names", () => {
  for (const name of ["task", "Task", "Parallel", "Context", "OnlineRLContext", "OfflineRLContext", "Role", "DitaskError", "TimeoutError"]) {
    assert.ok(name in mod, name);
  }
});

M("a failing suite makes the runner exit non-zero and count the failure", async () => {
  const r = await runScript(testPath("_fixtures/fails_run"), [], { timeoutMs: 30_000 });
  assert.is(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /: 1 passed, 1 failed/);
});

M.run();
