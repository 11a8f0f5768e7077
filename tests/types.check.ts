// Compile-time checks of the typed event map; type-checked by tsc, never run.
import { Context, OnlineRLContext, Task } from "../mod.ts";

interface MyEvents {
  [event: string]: readonly unknown[];
  "learner.model": [weights: Float32Array, iter: number];
  finish: [];
}

const t = new Task<MyEvents, OnlineRLContext>();
t.on("learner.model", (w, iter) => {
  const a: Float32Array = w;
  const b: number = iter;
  void a;
  void b;
});
t.emit("learner.model", new Float32Array(1), 3);
t.emit("finish");
// @ts-expect-error wrong payload type
t.emit("learner.model", "x", 3);
// @ts-expect-error missing argument
t.emit("learner.model", new Float32Array(1));
// @ts-expect-error too many arguments
t.emit("finish", 1);
// @ts-expect-error the listener's first argument is a Float32Array, not a string
t.on("learner.model", (w: string) => void w);
async function waits() {
  const [w, i] = await t.waitFor("learner.model", { timeout: 10 });
  const x: Float32Array = w;
  const y: number = i;
  // @ts-expect-error a number is not a string
  const z: string = i;
  void x, y, z;
}
void waits;
// The context type flows into middleware.
t.use((ctx) => {
  const e: number = ctx.envStep;
  void e;
});
// @ts-expect-error a Context is not an OnlineRLContext
t.start({ ctx: new Context() });

// The default task is loosely typed: any event, any arguments.
const loose = new Task();
loose.emit("anything", 1, "two", { three: 3 });
loose.on("anything", (...args) => void args);

// A map written as a `type` (no index signature) also checks event names.
type Strict = { "learner.model": [weights: Float32Array, iter: number] };
const strict = new Task<Strict>();
strict.emit("learner.model", new Float32Array(1), 1);
// @ts-expect-error a misspelt event name
strict.emit("lerner.model", new Float32Array(1), 1);
// @ts-expect-error an event the map does not have
strict.on("collector.data", () => {});
