import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Context, OfflineRLContext, OnlineRLContext } from "../lib/context.ts";
import { cborCodec } from "../lib/codec.ts";

const Ctx = suite("Context");

Ctx("renew() increments totalStep and resets unkept fields", () => {
  const ctx = new Context();
  ctx.notKeepMe = 1;
  const next = ctx.renew();
  assert.is(next.totalStep, 1);
  assert.is(next.notKeepMe, undefined);
  assert.ok(next instanceof Context);
});

Ctx("keep() survives one renew only (DI-engine test_pickable nuance)", () => {
  const ctx = new Context();
  ctx.keepMe = "x";
  ctx.keep("keepMe");
  const a = ctx.renew();
  assert.is(a.keepMe, "x");
  const b = a.renew();
  assert.is(b.keepMe, undefined);
  assert.is(b.totalStep, 2);
});

Ctx("keep() rejects non-string keys with TypeError", () => {
  const ctx = new Context();
  assert.throws(() => ctx.keep(1 as unknown as string), (e: unknown) => e instanceof TypeError);
});

Ctx("encodes to CBOR as its fields and back (DI-engine test_pickable)", () => {
  const ctx = new OnlineRLContext();
  ctx.envStep = 7;
  ctx.keep("keepMe");
  const back = cborCodec.decode(cborCodec.encode(ctx)) as Record<string, unknown>;
  assert.is(back.envStep, 7);
  assert.is(back.totalStep, 0);
  assert.is(back.evalValue, -Infinity);
  assert.not.ok("keptKeys" in back && Array.isArray(back.keptKeys));
});

Ctx("hasAttr() tells whether a field exists", () => {
  const ctx = new Context();
  assert.ok(ctx.hasAttr("totalStep"));
  assert.not.ok(ctx.hasAttr("nothing"));
  ctx.nothing = 0;
  assert.ok(ctx.hasAttr("nothing"));
});

const Online = suite("OnlineRLContext");

Online("has DI-engine's defaults", () => {
  const c = new OnlineRLContext();
  assert.is(c.envStep, 0);
  assert.is(c.envEpisode, 0);
  assert.is(c.trainIter, 0);
  assert.is(c.trainData, null);
  assert.equal(c.collectKwargs, {});
  assert.equal(c.trajectoryEndIdx, []);
  assert.is(c.evalValue, -Infinity);
  assert.is(c.lastEvalIter, -1);
  assert.is(c.lastEvalValue, -Infinity);
  assert.equal(c.evalOutput, {});
  assert.equal(c.infoForLogging, {});
  assert.is(c.wandbUrl, "");
});

Online("keeps envStep but resets evalValue (DI-engine test_online)", () => {
  const c = new OnlineRLContext();
  c.envStep = 5;
  c.evalValue = 3;
  c.trainIter = 2;
  c.obs = [1];
  const n = c.renew().renew();
  assert.is(n.envStep, 5);
  assert.is(n.trainIter, 2);
  assert.is(n.evalValue, -Infinity);
  assert.is(n.obs, null);
  assert.is(n.totalStep, 2);
  assert.ok(n instanceof OnlineRLContext);
});

Online("factory fields are fresh per instance", () => {
  const a = new OnlineRLContext();
  const b = new OnlineRLContext();
  a.trajectoryEndIdx.push(1);
  assert.equal(b.trajectoryEndIdx, []);
});

const Offline = suite("OfflineRLContext");

Offline("keeps trainIter but resets evalValue (DI-engine test_offline)", () => {
  const c = new OfflineRLContext();
  c.trainIter = 9;
  c.trainedEnvStep = 4;
  c.trainEpoch = 3;
  c.evalValue = 1;
  const n = c.renew();
  assert.is(n.trainIter, 9);
  assert.is(n.trainedEnvStep, 4);
  assert.is(n.trainEpoch, 0);
  assert.is(n.evalValue, -Infinity);
});

Ctx.run();
Online.run();
Offline.run();
