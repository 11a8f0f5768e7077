// Mains for tests/cli.test.ts, run by the real CLI: `ditask --package tests/_fixtures/cli_pkg --main mesh.<fn>`.
import { task } from "../../../mod.ts";

/** Every worker greets the others and prints, on stdout and stderr, who greeted it. */
export async function main(): Promise<void> {
  const id = task.router.nodeId!;
  await task.start({}, async () => {
    const got = task.waitFor("hello", { timeout: 20_000 });
    task.emitRemote("hello", id);
    const [from] = await got;
    console.log(`node ${id} got hello from node ${from}`);
    console.log(`node ${id} peers ${task.router.peers.sort().join(",")}`);
    console.error(`node ${id} says bye on stderr`);
  });
}

/** Node 1 throws; the others end well. */
export function fails(): void {
  if (task.router.nodeId === 1) throw new Error("boom from the fixture");
}

/** Node 1 throws an Error with a cause. */
export function failsWithCause(): void {
  if (task.router.nodeId === 1) throw new Error("outer failure", { cause: new RangeError("inner reason") });
}

/** Node 1 throws an object that is no Error. */
export function throwsObject(): void {
  if (task.router.nodeId === 1) throw { code: 5, detail: "not an Error" };
}

/** Print what this node knows about itself (for the platform tests). */
export function report(): void {
  const labels = [...task.router.labels].sort().join(",");
  console.log(
    `report node ${task.router.nodeId} active ${task.router.isActive} labels [${labels}] peers [${task.router.peers}]`,
  );
}

/** Not a function: `--main mesh.notAFunction` must be refused. */
export const notAFunction = 42;

/** Stay up until a peer connects or 15 s pass (for the --secret test, which kills it). */
export async function linger(): Promise<void> {
  console.log(`node ${task.router.nodeId} lingering`);
  const deadline = Date.now() + 15_000;
  while (task.router.peers.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  console.log(`node ${task.router.nodeId} peers [${task.router.peers}]`);
}
