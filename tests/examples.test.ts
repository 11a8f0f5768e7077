import { suite } from "uvu";
import * as assert from "uvu/assert";
import { examplePath, killAll, runScript } from "./_helpers.ts";

const E = suite("examples");
E.after.each(() => killAll());

E("greeting prints exactly Get msg: Hi", async () => {
  const r = await runScript(examplePath("greeting"));
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, "Get msg: Hi\n");
});

E("middleware prints ten greetings numbered 0 to 9", async () => {
  const r = await runScript(examplePath("middleware"));
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, Array.from({ length: 10 }, (_, i) => `Get msg: Hi ${i} times\n`).join(""));
});

E("parallel_greeting prints exactly Get msg: Hi", async () => {
  const r = await runScript(examplePath("parallel_greeting"));
  assert.is(r.code, 0, r.stderr);
  assert.is(r.stdout, "Get msg: Hi\n");
});

E("parallel_mesh: four nodes, nine trajectories, three models per collector", async () => {
  const r = await runScript(examplePath("parallel_mesh"), [], { timeoutMs: 60_000 });
  assert.is(r.code, 0, r.stderr);
  const out = r.stdout.split("\n");
  assert.is(out.filter((l) => /^node 0: step \d: trajectory of 1000 floats from node [123]/.test(l)).length, 9);
  for (const n of [1, 2, 3]) {
    assert.ok(out.includes(`node ${n}: step 2: got weights 3,3,3,3`), `node ${n}`);
    assert.ok(out.some((l) => l.startsWith(`node ${n}: collector, peers [0,`)));
  }
  assert.ok(out.includes("node 0: learner, peers [1,2,3]"));
  assert.is(out.filter(Boolean).at(-1), "all workers finished");
});

E.run();
