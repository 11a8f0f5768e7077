import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Task } from "../lib/task.ts";
import { PEER_JOINED, PEER_LEFT, Router } from "../lib/router.ts";
import { MemoryHub, type MemoryTransport } from "../lib/transport/memory.ts";
import { CodecError, TaskStateError, TimeoutError } from "../lib/errors.ts";
import { setLogLevel } from "../lib/log.ts";
import { withTimeout } from "./_helpers.ts";

setLogLevel("silent");

/** Two or more tasks joined by a memory hub, each with its own router. */
async function nodes(n: number) {
  const hub = new MemoryHub();
  const out: Array<{ task: Task; t: MemoryTransport }> = [];
  for (let i = 0; i < n; i++) {
    const task = new Task(new Router());
    const t = hub.transport(i, [`label${i}`]);
    task.router.attach(t, { labels: [`label${i}`] });
    out.push({ task, t });
  }
  await Promise.all(out.map((x) => x.t.open()));
  return out;
}

const tick = () => new Promise((r) => setTimeout(r, 0));

const R = suite("Router");

R("an inactive router: nodeId null, no peers, emit is a no-op", () => {
  const r = new Router();
  assert.is(r.nodeId, null);
  assert.not.ok(r.isActive);
  assert.equal(r.peers, []);
  r.emit("x", 1);
});

R("a topic that is not a string, or a listener that is not a function, is a TypeError naming it", () => {
  const r = new Router();
  const bad = (verb: string, shown: string) => (e: unknown) =>
    e instanceof TypeError && (e as Error).message === `Cannot ${verb} ${shown}: a topic must be a string`;
  assert.throws(() => r.emit(5 as never), bad("emit", "5"));
  assert.throws(() => r.on(undefined as never, () => {}), bad("listen to", "undefined"));
  assert.throws(() => r.once(null as never, () => {}), bad("listen to", "null"));
  assert.throws(() => r.on("t", "f" as never), (e: unknown) => e instanceof TypeError && /"t": the listener must be a function/.test((e as Error).message));
});

R("task events reach peers under task.<event>, never the sender itself", async () => {
  const [a, b, c] = await nodes(3);
  const got: string[] = [];
  for (const x of [a!, b!, c!]) {
    x.task.start();
    x.task.on("greeting", (msg) => void got.push(`${x.task.router.nodeId}:${msg}`));
  }
  const raw: string[] = [];
  b!.t.onMessage((m) => raw.push(m.topic));
  a!.task.emit("greeting", "Hi");
  await tick();
  assert.equal(got.sort(), ["0:Hi", "1:Hi", "2:Hi"]);
  assert.equal(raw, ["task.greeting"]);
});

R("emitRemote() skips local listeners; emitLocal() skips peers", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  b!.task.start();
  const got: string[] = [];
  a!.task.on("e", (x) => void got.push(`a:${x}`));
  b!.task.on("e", (x) => void got.push(`b:${x}`));
  a!.task.emitRemote("e", "remote");
  a!.task.emitLocal("e", "local");
  await tick();
  assert.equal(got.sort(), ["a:local", "b:remote"]);
});

R("sender tells a listener which node sent the event", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  b!.task.start();
  const senders: Array<number | null> = [];
  b!.task.on("e", () => void senders.push(b!.task.sender));
  a!.task.emit("e");
  b!.task.emit("e");
  await tick();
  assert.equal(senders, [1, 0]);
});

R("labels: distributed, node.<id> and router labels", async () => {
  const [a] = await nodes(1);
  a!.task.start({ labels: ["mine"] });
  assert.equal([...a!.task.labels].sort(), ["distributed", "label0", "mine", "node.0"]);
  assert.ok(a!.task.matchLabels("node.0"));
});

R("router.on/emit use un-prefixed topics and survive task.stop()", async () => {
  const [a, b] = await nodes(2);
  const got: unknown[] = [];
  b!.task.router.on("test_callback", (x) => void got.push(x));
  b!.task.start();
  b!.task.stop();
  a!.task.router.emit("test_callback", "ping");
  await tick();
  assert.equal(got, ["ping"]);
  b!.task.router.off("test_callback");
  a!.task.router.emit("test_callback", "ping");
  await tick();
  assert.equal(got, ["ping"]);
});

R("router.once() fires once", async () => {
  const [a, b] = await nodes(2);
  let n = 0;
  b!.task.router.once("t", () => void n++);
  a!.task.router.emit("t");
  a!.task.router.emit("t");
  await tick();
  assert.is(n, 1);
});

R("router.off(topic, fn) removes a listener added with router.once(topic, fn)", async () => {
  const [a, b] = await nodes(2);
  let n = 0;
  const f = () => void n++;
  b!.task.router.once("t", f);
  b!.task.router.off("t", f);
  a!.task.router.emit("t");
  await tick();
  assert.is(n, 0);
});

R("start-up hold: an event that arrives before its listener is delivered when it registers", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  a!.task.emit("early", 1);
  a!.task.emit("early", 2);
  await tick();
  b!.task.start();
  const got: unknown[] = [];
  b!.task.on("early", (x) => void got.push(x));
  const waited = b!.task.waitFor("early");
  await tick();
  assert.equal(got, [1, 2]);
  assert.equal(await waited, [1]);
});

R("start-up hold: router topics too; a router topic's events are not handed to a task listener of that name", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  a!.task.router.emit("status", "up");
  a!.task.emit("status", "task-level");
  await tick();
  b!.task.start();
  const viaRouter: unknown[] = [];
  const viaTask: unknown[] = [];
  b!.task.router.on("status", (x) => void viaRouter.push(x));
  b!.task.on("status", (x) => void viaTask.push(x));
  await tick();
  assert.equal(viaRouter, ["up"]);
  assert.equal(viaTask, ["task-level"]);
});

R("the hold ends after the first step: later events without listener are dropped", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  b!.task.start();
  b!.task.use(() => {});
  await b!.task.run(1);
  assert.not.ok(b!.task.router.holding);
  a!.task.emit("late", 1);
  await tick();
  const got: unknown[] = [];
  b!.task.on("late", (x) => void got.push(x));
  await tick();
  assert.equal(got, []);
});

R("stop() broadcasts finish; a peer's run() ends after its current step", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  b!.task.start();
  let steps = 0;
  b!.task.use(async () => {
    steps++;
    if (steps === 3) a!.task.stop();
    await new Promise((r) => setTimeout(r, 1));
  });
  await withTimeout(b!.task.run(1000), 5000, "run ends on finish");
  assert.ok(b!.task.finish);
  assert.ok(steps >= 3 && steps <= 4, `steps ${steps}`);
});

R("peer joined / left events carry the node id and labels", async () => {
  const hub = new MemoryHub();
  const task = new Task(new Router());
  const ta = hub.transport(0);
  task.router.attach(ta);
  const seen: string[] = [];
  task.router.on(PEER_JOINED, (id, labels) => void seen.push(`joined ${id} ${labels}`));
  task.router.on(PEER_LEFT, (id) => void seen.push(`left ${id}`));
  await ta.open();
  const tb = hub.transport(1, ["x"]);
  await tb.open();
  assert.equal(task.router.peers, [1]);
  await tb.close();
  await tick();
  assert.equal(seen, ["joined 1 x", "left 1"]);
});

R("a peer leaving neither rejects a pending waitFor nor stops run(); its timeout still applies", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  const pending = a!.task.waitFor("from-b", { timeout: 50 });
  let steps = 0;
  a!.task.use(() => void steps++);
  await b!.t.close();
  await tick();
  assert.equal(a!.task.router.peers, []);
  await a!.task.run(3);
  assert.is(steps, 3);
  await pending.then(() => assert.unreachable(), (e) => assert.ok(e instanceof Error && e.name === "TimeoutError"));
});

R("an argument that cannot be encoded throws CodecError naming the event", async () => {
  const [a] = await nodes(1);
  a!.task.start();
  assert.throws(
    () => a!.task.emit("bad", () => {}),
    (e: unknown) => e instanceof CodecError && /task\.bad/.test((e as Error).message),
  );
});

R("a payload that does not decode is dropped, later events still arrive", async () => {
  const [a, b] = await nodes(2);
  b!.task.start();
  const got: unknown[] = [];
  b!.task.on("e", (x) => void got.push(x));
  a!.t.publish("task.e", new Uint8Array([0xff, 0xff]));
  a!.t.publish("task.e", new Uint8Array([0x05])); // the number 5: not an argument list
  // Argument lists the receiver's CBOR check refuses: an object key "__proto__" (cbor-x would
  // rename it) and a Float32Array (tag 85) of 6 bytes (cbor-x would drop the partial element).
  a!.t.publish("task.e", new Uint8Array([0x81, 0xa1, 0x69, ...new TextEncoder().encode("__proto__"), 0x01]));
  a!.t.publish("task.e", new Uint8Array([0x81, 0xd8, 0x55, 0x46, 0, 0, 0x80, 0x3f, 0, 0]));
  a!.task.start();
  a!.task.emit("e", "ok");
  await tick();
  assert.equal(got, ["ok"]);
});

R("a listener failure on a remote event does not stop delivery", async () => {
  const [a, b] = await nodes(2);
  a!.task.start();
  b!.task.start();
  const got: unknown[] = [];
  b!.task.on("e", (x) => {
    if (x === 1) throw new Error("first fails");
    got.push(x);
  });
  a!.task.emit("e", 1);
  a!.task.emit("e", 2);
  await tick();
  assert.equal(got, [2]);
  b!.task.use(() => {});
  await b!.task.run(1).then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "first fails"));
});

R("a waitFor that times out or aborts removes its listener: the transport drops the topic", async () => {
  const [a] = await nodes(1);
  const calls: string[] = [];
  const t = a!.t;
  const sub = t.subscribe.bind(t);
  const unsub = t.unsubscribe.bind(t);
  a!.task.start(); // subscribes task.finish, which stays
  t.subscribe = (topic) => (calls.push(`+${topic}`), sub(topic));
  t.unsubscribe = (topic) => (calls.push(`-${topic}`), unsub(topic));
  await a!.task.waitFor("model", { timeout: 20 }).then(() => assert.unreachable(), (e) => assert.ok(e instanceof TimeoutError));
  assert.equal(calls, ["+task.model", "-task.model"]);
  const ac = new AbortController();
  const aborted = a!.task.waitFor("weights", { signal: ac.signal });
  ac.abort(new Error("no longer needed"));
  await aborted.then(() => assert.unreachable(), (e) => assert.is((e as Error).message, "no longer needed"));
  assert.equal(calls.slice(2), ["+task.weights", "-task.weights"]);
  a!.task.stop();
  await a!.task.router.detach();
});

R("attach() twice throws TaskStateError", async () => {
  const [a] = await nodes(1);
  assert.throws(() => a!.task.router.attach(new MemoryHub().transport(5)), (e: unknown) => e instanceof TaskStateError);
});

R("detach() deactivates the router", async () => {
  const [a] = await nodes(1);
  await a!.task.router.detach();
  assert.not.ok(a!.task.router.isActive);
  assert.is(a!.task.router.nodeId, null);
});

R.run();
