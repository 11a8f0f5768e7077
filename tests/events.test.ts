import { suite } from "uvu";
import * as assert from "uvu/assert";
import { EventBus } from "../lib/events.ts";

const Bus = suite("EventBus");

Bus("emit() calls listeners synchronously in registration order", () => {
  const errors: unknown[] = [];
  const bus = new EventBus((e) => errors.push(e));
  const seen: string[] = [];
  bus.on("e", (x) => void seen.push(`a${x}`));
  bus.on("e", (x) => void seen.push(`b${x}`));
  assert.is(bus.emit("e", [1]), 2);
  assert.equal(seen, ["a1", "b1"]);
  assert.equal(errors, []);
});

Bus("on() + 5 emits sums to 10; off() stops it (DI-engine test_event_loop)", () => {
  const bus = new EventBus(() => {});
  let total = 0;
  const add = (n: unknown) => void (total += n as number);
  bus.on("sum", add);
  for (let i = 0; i < 5; i++) bus.emit("sum", [i]);
  assert.is(total, 10);
  bus.off("sum", add);
  bus.emit("sum", [100]);
  assert.is(total, 10);
});

Bus("a throwing listener does not stop the others and is reported with the event", () => {
  const errors: Array<[unknown, string]> = [];
  const bus = new EventBus((e, ev) => errors.push([e, ev]));
  let after = 0;
  bus.on("x", () => {
    throw new Error("boom");
  });
  bus.on("x", () => void after++);
  bus.emit("x", []);
  assert.is(after, 1);
  assert.is(errors.length, 1);
  assert.is((errors[0]![0] as Error).message, "boom");
  assert.is(errors[0]![1], "x");
});

Bus("a rejecting async listener is reported", async () => {
  const errors: unknown[] = [];
  const bus = new EventBus((e) => errors.push(e));
  bus.on("x", async () => {
    await Promise.resolve();
    throw new Error("late");
  });
  bus.emit("x", []);
  await new Promise((r) => setTimeout(r, 0));
  assert.is((errors[0] as Error).message, "late");
});

Bus("a listener added during emit is not called by that emit; one removed is still called", () => {
  const bus = new EventBus(() => {});
  const seen: string[] = [];
  const b = () => void seen.push("b");
  bus.on("e", () => {
    seen.push("a");
    bus.on("e", () => void seen.push("late"));
    bus.off("e", b);
  });
  bus.on("e", b);
  bus.emit("e", []);
  assert.equal(seen, ["a", "b"]);
  seen.length = 0;
  bus.emit("e", []);
  assert.equal(seen, ["a", "late"]);
});

Bus("off() without fn removes every listener; the unsubscribe function removes one", () => {
  const bus = new EventBus(() => {});
  let n = 0;
  const off1 = bus.on("e", () => void n++);
  bus.on("e", () => void n++);
  off1();
  bus.emit("e", []);
  assert.is(n, 1);
  assert.ok(bus.off("e"));
  assert.not.ok(bus.has("e"));
  assert.is(bus.emit("e", []), 0);
});

Bus("standIn: off(event, fn) removes the latest registration of fn or of a wrapper standing for it", () => {
  const bus = new EventBus(() => {});
  const calls: string[] = [];
  const fn = () => void calls.push("fn");
  const wrapper = () => void calls.push("wrapper");
  bus.standIn(wrapper, fn);
  bus.on("x", fn);
  bus.on("x", wrapper);
  assert.ok(bus.off("x", fn), "the wrapper, registered last, goes first");
  bus.emit("x", []);
  assert.equal(calls, ["fn"]);
  assert.ok(bus.off("x", fn));
  assert.not.ok(bus.off("x", fn));
  assert.is(bus.count("x"), 0);
  // A stand-in is removed only for the function it stands for.
  bus.on("y", wrapper);
  assert.not.ok(bus.off("y", () => {}));
  bus.emit("y", []);
  assert.equal(calls, ["fn", "wrapper"]);
});

Bus("off(event) with keep removes every listener but those keep accepts", () => {
  const bus = new EventBus(() => {});
  const calls: string[] = [];
  const a = () => void calls.push("a");
  const b = () => void calls.push("b");
  bus.on("x", a);
  bus.on("x", b);
  bus.on("x", a);
  assert.ok(bus.off("x", undefined, (l) => l === b));
  bus.emit("x", []);
  assert.equal(calls, ["b"]);
  assert.not.ok(bus.off("x", undefined, () => true), "nothing removed");
  assert.ok(bus.off("x"));
  assert.not.ok(bus.has("x"));
});

Bus.run();
