import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Lock, Role, Task, VoidMiddleware } from "../lib/task.ts";
import { Context, OnlineRLContext } from "../lib/context.ts";
import { StepTimer } from "../lib/step_timer.ts";
import { DitaskError, TaskStateError, TimeoutError } from "../lib/errors.ts";
import { setLogLevel } from "../lib/log.ts";
import { cpSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { delay, ext } from "./_helpers.ts";
import { setEnv, getEnv } from "../lib/runtime.ts";

// Listener failures are logged on purpose in some tests; keep the output readable.
setLogLevel("silent");

class PipeCtx extends Context {
  pipeline: unknown[] = [];
}

const Lifecycle = suite("Task lifecycle");

Lifecycle("start() with a body runs it, stops, and returns its result", async () => {
  const t = new Task();
  const r = await t.start({}, () => {
    assert.ok(t.running);
    return 42;
  });
  assert.is(r, 42);
  assert.not.ok(t.running);
});

Lifecycle("start() with a body stops also when the body throws", async () => {
  const t = new Task();
  try {
    await t.start({}, async () => {
      throw new Error("inside");
    });
    assert.unreachable();
  } catch (e) {
    assert.is((e as Error).message, "inside");
  }
  assert.not.ok(t.running);
});

Lifecycle("the seed's first example prints before start() returns", async () => {
  const t = new Task();
  const out: string[] = [];
  await t.start({ asyncMode: false, ctx: new OnlineRLContext() }, () => {
    t.on("greeting", (msg) => void out.push(`Get msg: ${msg}`));
    t.emit("greeting", "Hi");
    assert.equal(out, ["Get msg: Hi"]);
  });
});

Lifecycle("start() without a body returns the task; stop() is idempotent", () => {
  const t = new Task();
  assert.is(t.start(), t);
  t.stop();
  t.stop();
  assert.not.ok(t.running);
});

Lifecycle("start() twice throws TaskStateError", () => {
  const t = new Task();
  t.start();
  assert.throws(() => t.start(), (e: unknown) => e instanceof TaskStateError && /already running/.test((e as Error).message));
  t.stop();
});

Lifecycle("start() rejects a ctx that is not a Context", () => {
  const t = new Task();
  assert.throws(() => t.start({ ctx: {} as Context }), (e: unknown) => e instanceof TypeError);
  assert.not.ok(t.running);
});

Lifecycle("Symbol.asyncDispose stops the task", async () => {
  const t = new Task();
  t.start();
  await t[Symbol.asyncDispose]();
  assert.not.ok(t.running);
});

Lifecycle("stop() removes listeners and middleware; pending waitFor rejects", async () => {
  const t = new Task();
  t.start();
  let n = 0;
  t.on("e", () => void n++);
  t.use(() => {});
  const pending = t.waitFor("never");
  t.stop();
  await pending.then(
    () => assert.unreachable("waitFor resolved"),
    (e) => assert.ok(e instanceof TaskStateError),
  );
  t.start();
  t.emit("e");
  assert.is(n, 0);
  await t.run(1); // no middleware left: returns at once
  assert.is(t.ctx.totalStep, 0);
  t.stop();
});

Lifecycle("a second copy of ditask in the process is reported once, naming both files", async () => {
  const original = new URL(`../lib/task${ext}`, import.meta.url).href;
  // A copy of the library at another path (inside the repository, so its dependencies resolve).
  const dir = new URL(`../_second_copy_${Date.now()}/`, import.meta.url);
  cpSync(fileURLToPath(new URL("../lib/", import.meta.url)), fileURLToPath(new URL("lib/", dir)), { recursive: true });
  const copy = new URL(`lib/task${ext}`, dir).href;
  const logged: string[] = [];
  const consoleError = console.error;
  const level = getEnv("DITASK_LOG");
  setEnv("DITASK_LOG", "warn"); // the copy's own log reads it when it loads
  console.error = (...args: unknown[]) => void logged.push(args.map(String).join(" "));
  try {
    await import(copy);
  } finally {
    console.error = consoleError;
    setEnv("DITASK_LOG", level);
    rmSync(fileURLToPath(dir), { recursive: true, force: true });
  }
  const lines = logged.filter((l) => l.includes("two copies of ditask"));
  assert.is(lines.length, 1, logged.join("\n"));
  assert.ok(lines[0]!.includes(original) && lines[0]!.includes(copy), lines[0]);
  assert.match(lines[0]!, /only the one Parallel\.runner attached reaches other nodes/);
});

Lifecycle("methods used outside start() throw TaskStateError naming the action", async () => {
  const t = new Task();
  assert.throws(() => t.emit("x"), (e: unknown) => e instanceof TaskStateError && /emit "x"/.test((e as Error).message));
  assert.throws(() => t.on("x", () => {}), (e: unknown) => e instanceof TaskStateError);
  assert.throws(() => t.use(() => {}), (e: unknown) => e instanceof TaskStateError);
  assert.throws(() => t.ctx, (e: unknown) => e instanceof TaskStateError);
  await t.run(1).then(() => assert.unreachable(), (e) => assert.ok(e instanceof TaskStateError));
  await t.waitFor("x").then(() => assert.unreachable(), (e) => assert.ok(e instanceof DitaskError));
});

const Events = suite("Task events");

Events("on() returns an unsubscribe function; off(event) removes all", () => {
  const t = new Task();
  t.start();
  let a = 0, b = 0;
  const offA = t.on("e", () => void a++);
  t.on("e", () => void b++);
  t.emit("e");
  offA();
  t.emit("e");
  t.off("e");
  t.emit("e");
  assert.is(a, 1);
  assert.is(b, 2);
  t.stop();
});

Events("off(event, fn) removes only fn", () => {
  const t = new Task();
  t.start();
  let a = 0, b = 0;
  const fa = () => void a++;
  t.on("e", fa);
  t.on("e", () => void b++);
  t.off("e", fa);
  t.emit("e");
  assert.is(a, 0);
  assert.is(b, 1);
  t.stop();
});

Events("once() fires once; two once() registrations each fire (DI-engine test_event_loop)", () => {
  const t = new Task();
  t.start();
  let sum = 0;
  t.once("add", (n) => void (sum += n as number));
  t.once("add", (n) => void (sum += n as number));
  t.emit("add", 10);
  t.emit("add", 10);
  assert.is(sum, 20);
  t.stop();
});

Events("emitLocal() reaches local listeners; emitRemote() does not, and is a no-op standalone", () => {
  const t = new Task();
  t.start();
  const seen: string[] = [];
  t.on("e", (x) => void seen.push(x as string));
  t.emitLocal("e", "local");
  t.emitRemote("e", "remote");
  assert.equal(seen, ["local"]);
  t.stop();
});

Events("a middleware emitting each step gives 10 greetings after run(10) (DI-engine test_emit)", async () => {
  const t = new Task();
  let greets = 0;
  await t.start({}, async () => {
    t.on("Greeting", () => void greets++);
    t.use((ctx) => t.emit("Greeting", `Hi ${ctx.totalStep}`));
    await t.run(10);
  });
  assert.is(greets, 10);
});

Events("waitFor() resolves with the args array", async () => {
  const t = new Task();
  t.start();
  const p = t.waitFor("ready");
  t.emit("ready", 1, "two");
  assert.equal(await p, [1, "two"]);
  t.stop();
});

Events("waitFor() rejects with TimeoutError after timeout", async () => {
  const t = new Task();
  t.start();
  const t0 = Date.now();
  try {
    await t.waitFor("never", { timeout: 30 });
    assert.unreachable();
  } catch (e) {
    assert.ok(e instanceof TimeoutError);
    assert.is((e as TimeoutError).code, "ERR_DITASK_TIMEOUT");
    assert.is((e as TimeoutError).event, "never");
    assert.match((e as Error).message, /"never".*30 ms/);
  }
  assert.ok(Date.now() - t0 >= 25);
  // That the listener it registered is removed is checked in the router suite (through the transport).
  t.stop();
});

Events("off(event, fn) removes a listener added with once(event, fn), the latest registration first", () => {
  const t = new Task();
  t.start();
  let n = 0;
  const f = () => {
    n++;
  };
  t.once("x", f);
  t.off("x", f);
  t.emit("x");
  assert.is(n, 0, "once(f) then off(f): not called");
  // on(f) then once(f): off(f) takes the later one, the once.
  t.on("x", f);
  t.once("x", f);
  t.off("x", f);
  t.emit("x");
  t.emit("x");
  assert.is(n, 2, "the on(f) registration stays and is called on each emit");
  t.stop();
});

Events("off(event) removes the listeners but not a pending waitFor(event), which still resolves", async () => {
  const t = new Task();
  t.start();
  const p = t.waitFor("model", { timeout: 5_000 });
  let heard = 0;
  t.on("model", () => {
    heard++;
  });
  t.off("model");
  t.emit("model", 7);
  assert.equal(await p, [7]);
  assert.is(heard, 0);
  // Once it resolved, nothing of it is left behind.
  t.emit("model", 8);
  assert.is(heard, 0);
  t.stop();
});

Events("waitFor() with a timeout longer than a timer takes (30 days) waits; it used to time out after 1 ms", async () => {
  const t = new Task();
  t.start();
  let settled = "";
  const p = t.waitFor("late", { timeout: 30 * 24 * 3600 * 1000 }).then(
    () => (settled = "resolved"),
    (e: Error) => (settled = `rejected: ${e.message}`),
  );
  // A timer set after it for 5 ms fires after a 1 ms one: by then an overflowed timeout had fired.
  await new Promise((r) => setTimeout(r, 5));
  assert.is(settled, "");
  t.emit("late");
  await p;
  assert.is(settled, "resolved");
  t.stop();
});

Events("waitFor() with timeout inside run(1) makes run reject (DI-engine test_wait_for)", async () => {
  const t = new Task();
  t.start({ asyncMode: true });
  t.use(async () => {
    await t.waitFor("Greeting", { timeout: 30 });
  });
  await t.run(1).then(() => assert.unreachable(), (e) => assert.ok(e instanceof TimeoutError));
  t.stop();
});

Events("waitFor() rejects with the abort reason when the signal aborts", async () => {
  const t = new Task();
  t.start();
  const ac = new AbortController();
  const p = t.waitFor("x", { signal: ac.signal });
  ac.abort(new Error("cancelled"));
  await p.then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "cancelled"));
  const already = AbortSignal.abort(new Error("early"));
  await t.waitFor("x", { signal: already }).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "early"));
  t.stop();
});

Events("waitFor() rejects a negative timeout with RangeError", async () => {
  const t = new Task();
  t.start();
  await t.waitFor("x", { timeout: -1 }).then(() => assert.unreachable(), (e) => assert.ok(e instanceof RangeError));
  t.stop();
});

Events("a failing listener does not stop the others and makes run() reject at the end of the step", async () => {
  const t = new Task();
  t.start();
  const seen: string[] = [];
  t.on("e", () => {
    throw new Error("listener failed");
  });
  t.on("e", () => void seen.push("second"));
  t.use(() => t.emit("e"));
  t.use(() => void seen.push("next middleware"));
  await t.run(5).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "listener failed"));
  assert.equal(seen, ["second", "next middleware"]);
  assert.is(t.ctx.totalStep, 0);
  t.stop();
});

Events("several listeners failing in one step make run() reject with an AggregateError of all of them", async () => {
  const t = new Task();
  t.start();
  t.on("e", () => {
    throw new Error("first");
  });
  t.on("f", () => {
    throw new Error("second");
  });
  t.use(() => {
    t.emit("e");
    t.emit("f");
  });
  const err = await t.run(3).then(() => assert.unreachable(), (e: unknown) => e);
  assert.ok(err instanceof AggregateError, String(err));
  assert.equal((err as AggregateError).errors.map((e: Error) => e.message), ["first", "second"]);
  assert.match((err as Error).message, /2 event listeners failed during the step/);
  assert.is(t.ctx.totalStep, 0);
  t.stop();
});

Events("a rejecting async listener makes run() reject too", async () => {
  const t = new Task();
  t.start();
  t.on("e", async () => {
    throw new Error("async listener failed");
  });
  t.use(async () => {
    t.emit("e");
    await delay(1);
  });
  await t.run(3).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "async listener failed"));
  t.stop();
});

Events("sender is this node's id inside a local listener (null standalone) and null outside", () => {
  const t = new Task();
  t.start();
  let inside: unknown = "unset";
  t.on("e", () => void (inside = t.sender));
  t.emit("e");
  assert.is(inside, null);
  assert.is(t.sender, null);
  t.stop();
});

Events("on() rejects a non-function listener with TypeError", () => {
  const t = new Task();
  t.start();
  assert.throws(() => t.on("e", 5 as never), (e: unknown) => e instanceof TypeError);
  t.stop();
});

Events("an event name that is not a string is refused with a TypeError naming it", async () => {
  const t = new Task();
  t.start();
  const bad = (verb: string, shown: string) => (e: unknown) =>
    e instanceof TypeError && (e as Error).message === `Cannot ${verb} ${shown}: an event name must be a string`;
  let heard = 0;
  t.on("123", () => void heard++);
  assert.throws(() => t.emit(123 as never), bad("emit", "123"));
  assert.throws(() => t.emitLocal(undefined as never), bad("emit", "undefined"));
  assert.throws(() => t.emitRemote({} as never), bad("emit", "{}"));
  assert.throws(() => t.on(Symbol("s") as never, () => {}), bad("listen to", "Symbol(s)"));
  assert.throws(() => t.once(null as never, () => {}), bad("listen to", "null"));
  await t.waitFor(7 as never).then(
    () => assert.unreachable("waitFor(7) resolved"),
    (e: unknown) => assert.ok(bad("wait for", "7")(e), String(e)),
  );
  assert.is(heard, 0, 'emit(123) did not reach the listeners of "123"');
  t.stop();
});

const Pipeline = suite("Task middleware");

Pipeline("forward twice then renew (DI-engine test_serial_pipeline)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  const step0 = (ctx: PipeCtx) => void ctx.pipeline.push(0);
  const step1 = (ctx: PipeCtx) => void ctx.pipeline.push(1);
  for (let i = 0; i < 2; i++) {
    await t.forward(step0);
    await t.forward(step1);
  }
  assert.equal(t.ctx.pipeline, [0, 1, 0, 1]);
  t.renew();
  assert.is(t.ctx.totalStep, 1);
  assert.equal(t.ctx.pipeline, []);
  await t.forward(step0);
  await t.forward(step1);
  assert.equal(t.ctx.pipeline, [0, 1]);
  t.stop();
});

Pipeline("a generator splits at its first yield (DI-engine test_serial_yield_pipeline)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  function* step0(ctx: PipeCtx) {
    ctx.pipeline.push(0);
    yield;
    ctx.pipeline.push(0);
  }
  const step1 = (ctx: PipeCtx) => void ctx.pipeline.push(1);
  await t.forward(step0);
  await t.forward(step1);
  await t.backward();
  assert.equal(t.ctx.pipeline, [0, 1, 0]);
  await t.backward(); // empty stack
  assert.equal(t.ctx.pipeline, [0, 1, 0]);
  t.stop();
});

Pipeline("run() goes forward in order, backward in reverse; code after a second yield never runs", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  t.use(function* a(ctx) {
    ctx.pipeline.push("a>");
    yield;
    ctx.pipeline.push("<a");
    yield;
    ctx.pipeline.push("never");
  });
  t.use(async function* b(ctx) {
    ctx.pipeline.push("b>");
    await delay(1);
    yield;
    ctx.pipeline.push("<b");
  });
  t.use(async (ctx) => {
    await delay(1);
    ctx.pipeline.push("c");
  });
  t.use({ call: (ctx: PipeCtx) => void ctx.pipeline.push("obj") });
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["a>", "b>", "c", "obj", "<b", "<a"]);
  t.stop();
});

Pipeline("run(N) leaves ctx.totalStep at N - 1 and sets finish", async () => {
  const t = new Task();
  t.start();
  let calls = 0;
  t.use(() => void calls++);
  await t.run(10);
  assert.is(calls, 10);
  assert.is(t.ctx.totalStep, 9);
  assert.ok(t.finish);
  t.stop();
});

Pipeline("setting finish ends run() after the current step", async () => {
  const t = new Task();
  t.start();
  t.use((ctx) => {
    if (ctx.totalStep === 2) t.finish = true;
  });
  await t.run(100);
  assert.is(t.ctx.totalStep, 2);
  t.stop();
});

Pipeline("the seed's middleware example: receiver() and sender(), run(10) numbers 0 to 9", async () => {
  const t = new Task<Record<string, [string]>, OnlineRLContext>();
  const out: string[] = [];
  const receiver = () => {
    t.on("greeting", (msg) => void out.push(`Get msg: ${msg}`));
    return (_ctx: OnlineRLContext) => {};
  };
  const sender = () => (ctx: OnlineRLContext) => t.emit("greeting", `Hi ${ctx.totalStep} times`);
  await t.start({ asyncMode: false, ctx: new OnlineRLContext() }, async () => {
    t.use(receiver());
    t.use(sender());
    await t.run(10);
  });
  assert.equal(out, Array.from({ length: 10 }, (_, i) => `Get msg: Hi ${i} times`));
});

Pipeline("async mode runs forward halves concurrently (DI-engine test_async_pipeline)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ asyncMode: true, ctx: new PipeCtx() });
  t.use(async (ctx) => {
    await delay(30);
    ctx.pipeline.push("slow");
  });
  t.use((ctx) => void ctx.pipeline.push("fast"));
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["fast", "slow"]);
  assert.ok(t.labels.has("async"));
  t.stop();
});

Pipeline("an exception in async mode makes run() reject with totalStep 0 (DI-engine test_async_exception)", async () => {
  const t = new Task();
  t.start({ asyncMode: true });
  t.use(async () => {
    await t.waitFor("never");
  });
  t.use(async () => {
    await delay(20);
    throw new Error("async failure");
  });
  await t.run(2).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "async failure"));
  assert.is(t.ctx.totalStep, 0);
  t.stop();
});

Pipeline("parallel(slow, fast) runs both forwards concurrently (DI-engine test_parallel_in_sequencial)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  const fast = (ctx: PipeCtx) => void ctx.pipeline.push("fast");
  const slow = async (ctx: PipeCtx) => {
    await delay(20);
    ctx.pipeline.push("slow");
  };
  t.use((ctx) => void ctx.pipeline.push("begin"));
  const p = t.parallel(slow, fast);
  assert.is(p.name, "parallel<slow,fast>");
  t.use(p);
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["begin", "fast", "slow"]);
  t.stop();
});

Pipeline("serial(slow, fast) keeps order in async mode (DI-engine test_serial_in_parallel)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ asyncMode: true, ctx: new PipeCtx() });
  const fast = (ctx: PipeCtx) => void ctx.pipeline.push("fast");
  const slow = async (ctx: PipeCtx) => {
    await delay(20);
    ctx.pipeline.push("slow");
  };
  t.use((ctx) => void ctx.pipeline.push("begin"));
  const s = t.serial(slow, fast);
  assert.is(s.name, "serial<slow,fast>");
  t.use(s);
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["begin", "slow", "fast"]);
  t.stop();
});

Pipeline("serial() runs backward halves in reverse order", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  function* a(ctx: PipeCtx) {
    ctx.pipeline.push("a>");
    yield;
    ctx.pipeline.push("<a");
  }
  function* b(ctx: PipeCtx) {
    ctx.pipeline.push("b>");
    yield;
    ctx.pipeline.push("<b");
  }
  t.use(t.serial(a, b));
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["a>", "b>", "<b", "<a"]);
  t.stop();
});

Pipeline("wrap() nests a middleware inside another (DI-engine test_nested_middleware)", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  function* child(ctx: PipeCtx) {
    ctx.pipeline.push(ctx.totalStep * 3 + 0);
    yield;
    ctx.pipeline.push(ctx.totalStep * 3 + 1);
  }
  const wrapped = t.wrap(child, { lock: true });
  const results: unknown[][] = [];
  t.use(async (ctx) => {
    const back = await wrapped(ctx);
    await back();
    ctx.pipeline.push(ctx.totalStep * 3 + 2);
  });
  t.use((ctx) => void results.push(ctx.pipeline));
  await t.run(2);
  assert.equal(results.flat(), [0, 1, 2, 3, 4, 5]);
  t.stop();
});

Pipeline("a wrapped middleware whose backward is never called runs it in the backward phase", async () => {
  const t = new Task<never, PipeCtx>();
  t.start({ ctx: new PipeCtx() });
  function* child(ctx: PipeCtx) {
    ctx.pipeline.push("child>");
    yield;
    ctx.pipeline.push("<child");
  }
  const wrapped = t.wrap(child);
  t.use(async (ctx) => {
    await wrapped(ctx);
    ctx.pipeline.push("mother");
  });
  await t.run(1);
  assert.equal(t.ctx.pipeline, ["child>", "mother", "<child"]);
  t.stop();
});

Pipeline("use(fn, { lock }) serialises middleware (DI-engine test_use_lock)", async () => {
  const t = new Task();
  const slow = async (ctx: Context) => {
    await delay(20);
    ctx.result = "slow";
  };
  const fast = (ctx: Context) => void (ctx.result = "fast");
  t.start({ asyncMode: true });
  t.use(slow, { lock: true });
  t.use(fast, { lock: true });
  await t.run(1);
  assert.is(t.ctx.result, "fast");
  t.stop();

  t.start({ asyncMode: true });
  t.use(slow);
  t.use(fast);
  await t.run(1);
  assert.is(t.ctx.result, "slow", "without a lock the slow one finishes last");
  t.stop();

  // Different locks do not serialise each other.
  const lock = new Lock();
  const slowest = async (ctx: Context) => {
    await delay(60);
    ctx.result = "slowest";
  };
  t.start({ asyncMode: true });
  t.use(slow, { lock });
  t.use(slowest, { lock: true });
  t.use(fast, { lock });
  await t.run(1);
  assert.is(t.ctx.result, "slowest");
  t.stop();
});

Pipeline("a locked generator's backward half takes its lock again", async () => {
  const t = new Task();
  const lock = new Lock();
  const seen: string[] = [];
  let release: (() => void) | undefined;
  t.start({ asyncMode: true });
  t.use(
    function* () {
      seen.push("forward");
      yield;
      seen.push("backward");
    },
    { lock },
  );
  // A plain middleware after it takes the same lock and keeps it past the forward phase.
  t.use(async () => {
    release = await lock.acquire();
    seen.push("held");
  });
  const ran = t.run(1);
  // Without the lock the backward half would have run within these turns of the event loop.
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setTimeout(r, 0));
  assert.equal(seen, ["forward", "held"]);
  release!();
  await ran;
  assert.equal(seen, ["forward", "held", "backward"]);
  t.stop();
});

Pipeline("use() skips void() middleware and rejects what is not callable", async () => {
  const t = new Task();
  t.start();
  t.use(t.void());
  t.use(new VoidMiddleware());
  await t.run(1); // nothing registered: returns at once
  assert.throws(() => t.use(42 as never), (e: unknown) => e instanceof TypeError && /Middleware/.test((e as Error).message));
  assert.throws(() => t.use(() => {}, { lock: "yes" as never }), (e: unknown) => e instanceof TypeError);
  t.stop();
});

Pipeline("run() rejects a bad maxStep with RangeError", async () => {
  const t = new Task();
  t.start();
  t.use(() => {});
  await t.run(0).then(() => assert.unreachable(), (e) => assert.ok(e instanceof RangeError));
  await t.run(1.5).then(() => assert.unreachable(), (e) => assert.ok(e instanceof RangeError));
  t.stop();
});

Pipeline("a middleware error propagates out of run()", async () => {
  const t = new Task();
  t.start();
  let backward = false;
  t.use(function* () {
    yield;
    backward = true;
  });
  t.use(() => {
    throw new Error("mw failed");
  });
  await t.run(3).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "mw failed"));
  assert.not.ok(backward);
  t.stop();
});

Pipeline("useWrapper(StepTimer) records each middleware each step (DI-engine test_step_timer)", async () => {
  const t = new Task();
  t.start({ asyncMode: true });
  const timer = new StepTimer();
  t.useWrapper(timer.wrap);
  t.use(async function step1() {
    await delay(2);
  });
  t.use(function* step2() {
    yield;
  });
  t.use(t.serial(function step3() {}, function step4() {}));
  await t.run(3);
  assert.equal([...timer.records.keys()].sort(), ["serial<step3,step4>", "step1", "step2"]);
  for (const list of timer.records.values()) assert.is(list.length, 3);
  assert.ok(timer.records.get("step1")!.every((ms) => ms >= 1));
  t.stop();

  // Two stacked wrappers both record; one added later wraps the middleware already there.
  const a = new StepTimer();
  const b = new StepTimer();
  t.start();
  t.useWrapper(a.wrap);
  t.use(function m() {});
  t.useWrapper(b.wrap);
  await t.run(2);
  assert.is(a.records.get("m")!.length, 2);
  assert.is(b.records.get("m")!.length, 2);
  t.stop();
});

Pipeline("StepTimer printPerStep: every middleware prints on the steps whose totalStep is a multiple of it; smoothWindow bounds the records", async () => {
  const t = new Task();
  t.start();
  const timer = new StepTimer({ printPerStep: 2 });
  const recent = new StepTimer({ smoothWindow: 2 });
  t.useWrapper(timer.wrap);
  t.useWrapper(recent.wrap);
  t.use(function first() {});
  t.use(function second() {});
  t.use(function third() {});
  const printed: string[] = [];
  const log = console.log;
  console.log = (line: string) => void printed.push(line.split(":")[0]!);
  try {
    await t.run(4); // steps 0..3: prints on 0 and 2
  } finally {
    console.log = log;
    t.stop();
  }
  assert.equal(printed, Array(2).fill(["[StepTimer] first", "[StepTimer] second", "[StepTimer] third"]).flat());
  assert.is(timer.records.get("first")!.length, 4);
  assert.is(recent.records.get("first")!.length, 2, "smoothWindow keeps the latest durations only");
});

const Labels = suite("Task labels and roles");

Labels("labels: standalone, async, and user labels", () => {
  const t = new Task();
  t.start({ asyncMode: true, labels: ["learner.0", "gpu"] });
  assert.equal([...t.labels].sort(), ["async", "gpu", "learner.0", "standalone"]);
  t.stop();
  t.start();
  assert.equal([...t.labels], ["standalone"]);
  t.stop();
});

Labels("a lone string, a number or a non-string item as labels, patterns or a role is refused, not read letter by letter", () => {
  const t = new Task();
  // start() refuses before it starts: the task can start afterwards.
  assert.throws(() => t.start({ labels: "collector" as never }), /Invalid labels "collector": expected a list of strings, such as \["collector"\]/);
  assert.throws(() => t.start({ labels: [1, 2] as never }), /Invalid labels: 1 is not a string/);
  assert.throws(() => t.start({ labels: 5 as never }), /Invalid labels 5: expected a list of strings/);
  assert.not.ok(t.running);
  t.start({ labels: new Set(["gpu"]) });
  assert.ok(t.labels.has("gpu"));
  assert.throws(() => t.matchLabels(null as never), /Invalid label patterns null: expected a list of strings/);
  assert.throws(() => t.matchLabels(["gpu", 3] as never), /Invalid label patterns: 3 is not a string/);
  assert.throws(() => t.addRole(5 as never), /Cannot add role 5: a role must be a string/);
  t.stop();
});

Labels("matchLabels() matches fnmatch globs, one or many", () => {
  const t = new Task();
  t.start({ labels: ["node.3", "collector"] });
  assert.ok(t.matchLabels("node.*"));
  assert.ok(t.matchLabels("node.?"));
  assert.ok(t.matchLabels("node.[0-4]"));
  assert.not.ok(t.matchLabels("node.[!3]"));
  assert.not.ok(t.matchLabels("node"));
  assert.ok(t.matchLabels(["learner", "coll*"]));
  assert.not.ok(t.matchLabels([]));
  t.stop();
});

Labels("matchLabels() reads bracket classes as Python's fnmatch does; a backwards range matches nothing instead of throwing", () => {
  // Expected values from Python 3's fnmatch.fnmatchcase(label, glob), DI-engine's matcher.
  const cases: Array<[glob: string, label: string, expected: boolean]> = [
    ["node.[9-0]2", "node.12", false], // threw "Invalid regular expression: Range out of order"
    ["node.[!9-0]2", "node.12", true],
    ["[]]x", "]x", true],
    ["[!]]x", "]x", false],
    ["[!]]x", "ax", true],
    ["[^]up", "^up", true], // "^" is a member, not a negation
    ["[^]up", "xup", false],
    ["[z-a]", "e", false],
    ["[!z-a]", "e", true],
    ["[c-a-e]", "-", true],
    ["[c-a-e]", "b", false],
    ["[a-]-z", "a-z", true],
    ["[\\]", "\\", true],
    ["c[[]d]", "c[d]", true],
    ["[", "[", true],
    ["x[", "x[", true],
    ["[!]", "[!]", true],
  ];
  for (const [glob, label, expected] of cases) {
    const t = new Task();
    t.start({ labels: [label] });
    assert.is(t.matchLabels(glob), expected, `${JSON.stringify(glob)} on ${JSON.stringify(label)}`);
    t.stop();
  }
});

Labels("hasRole() is true when no role was added; roles reset at start()", () => {
  const t = new Task();
  t.start();
  assert.ok(t.hasRole(Role.LEARNER));
  t.addRole(Role.COLLECTOR);
  assert.not.ok(t.hasRole(Role.LEARNER));
  assert.ok(t.hasRole(t.role.COLLECTOR));
  assert.equal([...t.roles], ["collector"]);
  t.stop();
  t.start();
  assert.is(t.roles.size, 0);
  t.stop();
  assert.equal(Object.values(Role).sort(), ["collector", "evaluator", "fetcher", "learner"]);
});

Lifecycle.run();
Events.run();
Pipeline.run();
Labels.run();
