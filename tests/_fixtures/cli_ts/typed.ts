// A TypeScript main that plain JavaScript cannot parse: `ditask --main typed.main` must run it on
// Deno and on Node 20 alike. On Node, tests/cli.test.ts runs a copy of this file whose ditask
// import points at the compiled tree the CLI itself runs from (one `task` per process).
import { task } from "../../../mod.ts";

interface Greeting {
  from: number;
  text: string;
}
type Pair<T> = readonly [first: T, second: T];

const WORDS = ["typed", "hello"] as const satisfies readonly string[];

function pair<T>(first: T, second: T): Pair<T> {
  return [first, second] as const;
}

/** Every worker sends a typed greeting and prints the one it got. */
export async function main(): Promise<void> {
  const id: number = task.router.nodeId ?? -1;
  await task.start({}, async () => {
    const got = task.waitFor("greeting", { timeout: 20_000 });
    const mine: Greeting = { from: id, text: WORDS.join(" ") };
    task.emitRemote("greeting", mine);
    const [msg] = (await got) as [Greeting];
    const [from, to] = pair<number>(msg.from, id);
    console.log(`typed node ${to}: ${msg.text} from node ${from}`);
  });
}

/** Another export, for `--main typed.ts#other`. */
export function other(this: void): void {
  const n: number | null = task.router.nodeId;
  console.log(`typed other on node ${n satisfies number | null}`);
}
