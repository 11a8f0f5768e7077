// What an npm user runs: package.json's entry and bin, which point at the bundle that
// `npm run build` writes (dist/bundle/, see scripts/bundle.js). A temporary project links the
// repository as node_modules/ditask, as `npm install` would. Both runtimes spawn Node here: the
// npm package is Node's (Deno runs mod.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { killAll, repoRoot, type RunResult, runScript, show } from "./_helpers.ts";
import * as mod from "../mod.ts";

const P = suite("npm package");
const root = repoRoot();
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
let project = "";

/** Run `file` (relative to the temporary project) with Node, killed by PID after 30 s. */
function runNode(file: string, args: string[] = []): Promise<RunResult> {
  return runScript(join(project, file), args, { runtime: "node", cwd: project, timeoutMs: 30_000 });
}

P.before(() => {
  for (const file of [pkg.exports["."].default, pkg.bin.ditask]) {
    assert.ok(existsSync(join(root, file)), `${file} is missing: run \`npm run build\` first`);
  }
  project = mkdtempSync(join(tmpdir(), "ditask-package-test-"));
  mkdirSync(join(project, "node_modules"));
  symlinkSync(root, join(project, "node_modules", "ditask"), "dir");
  writeFileSync(join(project, "package.json"), JSON.stringify({ name: "app", type: "module" }));
});

P.after(() => {
  killAll();
  if (project) rmSync(project, { recursive: true, force: true });
});

P("`import \"ditask\"` loads the bundle, which exports what mod.ts exports", async () => {
  writeFileSync(
    join(project, "names.mjs"),
    `import * as m from "ditask";\n` +
      `console.log(JSON.stringify({ url: import.meta.resolve("ditask"), names: Object.keys(m).sort() }));\n`,
  );
  const r = await runNode("names.mjs");
  assert.is(r.code, 0, show(r));
  const out = JSON.parse(r.stdout) as { url: string; names: string[] };
  assert.ok(out.url.endsWith("/dist/bundle/mod.js"), out.url);
  assert.equal(out.names, Object.keys(mod).sort());
});

P("the packaged CLI runs a main that imports \"ditask\": two workers, one task", async () => {
  // The main and the CLI must share one copy of ditask (else the main's `task` is never attached
  // and ditask warns about a second copy); the bundle's entry and bin share its chunks.
  writeFileSync(
    join(project, "app.mjs"),
    `import { task } from "ditask";\n` +
      `export async function main() {\n` +
      `  const id = task.router.nodeId;\n` +
      `  await task.start({}, async () => {\n` +
      `    const got = task.waitFor("hello", { timeout: 20000 });\n` +
      `    task.emitRemote("hello", id);\n` +
      `    const [from] = await got;\n` +
      `    console.log(\`node \${id} got hello from node \${from}\`);\n` +
      `  });\n` +
      `}\n`,
  );
  const r = await runNode(join("node_modules", "ditask", pkg.bin.ditask), ["--main", "app.main", "--parallel-workers", "2", "--topology", "mesh"]);
  assert.is(r.code, 0, show(r));
  const got = r.stdout.split("\n").filter((l) => l.includes(" got hello ")).sort();
  assert.equal(got, ["[node 0] node 0 got hello from node 1", "[node 1] node 1 got hello from node 0"], show(r));
  assert.not.match(r.stderr, /copies|second copy/i, show(r));
});

P("`npm pack` ships the bundle with its chunks and the type declarations, not the build tree", () => {
  const r = spawnSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8", timeout: 60_000 });
  assert.is(r.status, 0, r.stderr);
  const files = new Set((JSON.parse(r.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path));
  const built = (dir: string): string[] =>
    (readdirSync(join(root, dir), { recursive: true }) as string[]).map((f) => `${dir}/${f}`.replaceAll("\\", "/"));
  const bundle = built("dist/bundle").filter((f) => f.endsWith(".js"));
  const types = ["dist/mod.d.ts", ...built("dist/lib").filter((f) => f.endsWith(".d.ts"))];
  for (const f of [...bundle, ...types, "package.json", "README.md"]) assert.ok(files.has(f), `${f} is not in the package`);
  const extra = [...files].filter((f) => f.startsWith("dist/") && !bundle.includes(f) && !types.includes(f));
  assert.equal(extra, []);
});

P.run();
