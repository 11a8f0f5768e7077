// The Redis transport against real, private redis-server processes (tests/_redis.ts). Skipped,
// with a printed reason, only when redis-server is not installed (scripts/ensure_redis.sh).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@redis/client";
import { RedisTransport, type RedisTransportOptions } from "../../lib/transport/redis/mod.ts";
import {
  decodeEvents,
  decodeMember,
  encodeEvents,
  encodeMember,
  newInstance,
  redisNames,
} from "../../lib/transport/redis/protocol.ts";
import type { PeerEvent, TransportMessage } from "../../lib/transport/types.ts";
import { TransportError } from "../../lib/errors.ts";
import { setLogLevel } from "../../lib/log.ts";
import { PEER_JOINED, Router } from "../../lib/router.ts";
import { Task } from "../../lib/task.ts";
import { cborCodec } from "../../lib/codec.ts";
import { killAll, runScript, runtimeKey, slowProxy, testPath, withTimeout, until as waitUntil } from "../_helpers.ts";
import { freePort, liveServers, type RedisServer, redisServerPath, startRedis } from "../_redis.ts";
import { defineTransportContract } from "./contract.ts";

setLogLevel("silent");

let jobs = 0;
/** A job id of its own for each cluster, so tests never see each other's nodes. */
const newJob = () => `test-${runtimeKey}-${process.pid}-${++jobs}`;

function until(cond: () => boolean, label: string, ms = 10_000): Promise<void> {
  return waitUntil(cond, label, ms);
}

const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
const bytes = (...v: number[]) => new Uint8Array(v);

/** Await `p`, which must reject with a TransportError; returns its message. */
async function rejectsWithTransportError(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, TransportError);
    return (e as Error).message;
  }
  assert.unreachable("open() should have failed");
  return "";
}

function collect(t: RedisTransport): TransportMessage[] {
  const got: TransportMessage[] = [];
  t.onMessage((m) => got.push({ topic: m.topic, payload: m.payload.slice(), from: m.from }));
  return got;
}

/** Run `fn` with ditask's warnings captured (console.error), then restore. */
async function captureWarnings(fn: () => Promise<void>): Promise<string[]> {
  const lines: string[] = [];
  const orig = console.error;
  console.error = (...a: unknown[]) => void lines.push(a.map(String).join(" "));
  setLogLevel("warn");
  try {
    await fn();
  } finally {
    setLogLevel("silent");
    console.error = orig;
  }
  return lines;
}

const W = suite("Redis wire format");

W("frames round-trip; names escape glob characters of the job; membership messages are checked", () => {
  const inst = newInstance();
  const f = decodeEvents(encodeEvents(7, inst.bytes, 41, "task.é", [bytes(1, 2), bytes(), bytes(3)]));
  assert.ok(typeof f === "object");
  assert.equal(
    { ...f, payloads: f.payloads.map((p) => [...p]) },
    { from: 7, instance: inst.hex, seq: 41, topic: "task.é", payloads: [[1, 2], [], [3]] },
  );
  assert.is(redisNames("a*b?[c]").topicPattern, "ditask:a\\*b\\?\\[c\\]:t:*");
  assert.is(redisNames("exp").members, "ditask:exp:m");
  assert.throws(() => redisNames(""), /Invalid Redis job/);
  const ok = encodeMember({ k: "hello", id: 3, inst: inst.hex, labels: ["a"] });
  assert.equal(decodeMember(ok), { k: "hello", id: 3, inst: inst.hex, labels: ["a"] });
  assert.is(decodeMember(ok.replace('"v":1', '"v":2')), "protocol version 2, expected 1");
  assert.is(decodeMember('{"v":1,"k":"hb","id":1.5,"inst":"0011223344556677"}'), "invalid node id 1.5");
  assert.is(decodeMember('{"v":1,"k":"hb","id":1,"inst":"0011223344556677","labels":[1]}'), "invalid labels");
  assert.throws(() => encodeEvents(0, inst.bytes, 1, "x".repeat(70_000), [bytes(1)]), /Topic too long/);
  const t = new RedisTransport({ nodeId: 0, redisPort: 1 });
  assert.throws(() => t.publish("y".repeat(70_000), bytes(1)), /longer than 65535 bytes/);
  assert.throws(() => new RedisTransport({ nodeId: -1 }), /Invalid nodeId/);
  assert.throws(() => new RedisTransport({ nodeId: 0, labels: "gpu" as never }), /Invalid labels "gpu": expected a list of strings/);
  assert.throws(() => new RedisTransport({ nodeId: 0, expect: ["1"] as never }), /Invalid expect \["1"\]: expected a list of node ids/);
  assert.throws(() => new RedisTransport({ nodeId: 0, redisPort: 70_000 }), /Invalid redisPort/);
  // Limits and timings, checked as the mesh checks them (with Redis's name for the timeout).
  assert.throws(() => new RedisTransport({ nodeId: 0, peerTimeout: -1 }), /Invalid peerTimeout -1: expected a number > 0/);
  assert.throws(() => new RedisTransport({ nodeId: 0, peerTimeout: Infinity }), /Invalid peerTimeout Infinity: expected at most 2147483647 ms/);
  assert.throws(() => new RedisTransport({ nodeId: 0, maxQueuedBytes: 0 }), /Invalid maxQueuedBytes 0/);
  assert.throws(
    () => new RedisTransport({ nodeId: 0, heartbeatInterval: 2000, peerTimeout: 1000 }),
    /Invalid heartbeatInterval 2000: it must be shorter than peerTimeout \(1000 ms\)/,
  );
  assert.is(new RedisTransport({ nodeId: 0, redisUrl: "rediss://:pw@[::1]:7000/2" }).address, "rediss://[::1]:7000");
});

W.run();

const exe = redisServerPath();
if (!exe) {
  console.log("SKIPPED Redis transport tests: redis-server is not installed (scripts/ensure_redis.sh installs it)");
} else {
  let shared: Promise<RedisServer> | undefined;
  /** One server for the contract and most tests (each test uses a job of its own). */
  const server = () => (shared ??= startRedis());
  const open: RedisTransport[] = [];

  /** `n` nodes 0..n-1 of one new job, opened and all present. */
  async function cluster(n: number, extra: Partial<RedisTransportOptions> = {}) {
    const srv = await server();
    const job = newJob();
    const ids = Array.from({ length: n }, (_, i) => i);
    const nodes = ids.map((i) =>
      new RedisTransport({ nodeId: i, redisPort: srv.port, job, expect: ids, connectTimeout: 10_000, ...extra })
    );
    open.push(...nodes);
    await Promise.all(nodes.map((t) => t.open()));
    return { nodes, job, close: async () => void (await Promise.all(nodes.map((t) => t.close()))) };
  }

  defineTransportContract("RedisTransport", (n) => cluster(n));

  const R = suite("RedisTransport");
  R.after.each(async () => {
    await Promise.all(open.splice(0).map((t) => t.close()));
  });

  R("after endStartup() only subscribed topics arrive, and the start-up pattern is gone", async () => {
    const srv = await server();
    const { nodes: [a, b], job } = await cluster(2);
    const got = collect(b!);
    b!.subscribe("x");
    assert.ok(b!.startupMode);
    b!.endStartup();
    b!.endStartup();
    await b!.whenSubscribed();
    a!.publish("y", bytes(1));
    a!.publish("x", bytes(2));
    a!.publish("y", bytes(3));
    a!.publish("x", bytes(4));
    await until(() => got.length === 2, "two x messages");
    assert.equal(got.map((m) => [m.topic, m.payload[0]]), [["x", 2], ["x", 4]]);
    const raw = createClient({ url: srv.url, RESP: 2 });
    await raw.connect();
    try {
      const channels = (await raw.pubSubChannels(`${redisNames(job).topicPrefix}*`)).map(String);
      assert.equal(channels, [`${redisNames(job).topicPrefix}x`]);
    } finally {
      await raw.close();
    }
    b!.unsubscribe("x");
    await b!.whenSubscribed();
    a!.publish("x", bytes(5));
    b!.subscribe("z");
    await b!.whenSubscribed();
    a!.publish("z", bytes(6));
    await until(() => got.length === 3, "z after x was dropped");
    assert.equal(got.map((m) => m.payload[0]), [2, 4, 6]);
  });

  R("during start-up every topic arrives, also those nobody subscribed to yet", async () => {
    const { nodes: [a, b] } = await cluster(2);
    const got = collect(b!);
    a!.publish("not-yet", bytes(7));
    await until(() => got.length === 1, "pattern delivery");
    assert.equal(got[0], { topic: "not-yet", payload: bytes(7), from: 0 });
  });

  R("drain() resolves once Redis has taken every message published so far", async () => {
    const { nodes: [a, b] } = await cluster(2);
    const got = collect(b!);
    await a!.drain(); // nothing published: at once
    const big = new Uint8Array(1024 * 1024);
    for (let i = 0; i < 8; i++) a!.publish("big", big);
    await withTimeout(a!.drain(), 10_000, "drain");
    // Redis has handed them to b's connection: they arrive without further sends.
    await until(() => got.length === 8, "8 messages after drain");
    await a!.close();
    await withTimeout(a!.drain(), 1000, "drain after close");
  });

  R("jobs on one Redis stay apart", async () => {
    const one = await cluster(2);
    const two = await cluster(2);
    const got1 = collect(one.nodes[1]!), got2 = collect(two.nodes[1]!);
    one.nodes[0]!.publish("t", bytes(1));
    two.nodes[0]!.publish("t", bytes(2));
    await until(() => got1.length === 1 && got2.length === 1, "one message in each job");
    await delay(50);
    assert.equal([got1.length, got1[0]!.payload[0], got2.length, got2[0]!.payload[0]], [1, 1, 1, 2]);
    assert.equal(one.nodes[0]!.peers, [1]);
  });

  R("labels are announced; peerLabels() and joined events carry them", async () => {
    const srv = await server();
    const job = newJob();
    const a = new RedisTransport({ nodeId: 0, redisPort: srv.port, job, labels: ["learner"] });
    open.push(a);
    await a.open();
    const events: PeerEvent[] = [];
    a.onPeer((e) => events.push(e));
    const b = new RedisTransport({ nodeId: 1, redisPort: srv.port, job, labels: ["collector"], expect: [0] });
    open.push(b);
    await b.open();
    await until(() => events.length === 1, "joined on a");
    assert.equal(events[0], { type: "joined", nodeId: 1, labels: ["collector"] });
    assert.equal(b.peerLabels(0), ["learner"]);
  });

  R("a second process with a node id already present is refused", async () => {
    const srv = await server();
    const job = newJob();
    const fast = { heartbeatInterval: 50, peerTimeout: 400 };
    const a = new RedisTransport({ nodeId: 0, redisPort: srv.port, job, ...fast });
    open.push(a);
    await a.open();
    const dup = new RedisTransport({ nodeId: 0, redisPort: srv.port, job, ...fast });
    open.push(dup);
    const message = await rejectsWithTransportError(dup.open());
    assert.match(message, `job "${job}"`);
    assert.match(message, "node id 0 is already present");
  });

  R("unreachable Redis: open() rejects with the address in time, and close() is then a no-op", async () => {
    const port = await freePort();
    const t = new RedisTransport({ nodeId: 0, redisPort: port, connectTimeout: 800 });
    const t0 = Date.now();
    const message = await rejectsWithTransportError(t.open());
    assert.match(message, `could not connect to Redis at redis://127.0.0.1:${port} within 800 ms`);
    assert.ok(Date.now() - t0 < 3000, `took ${Date.now() - t0} ms`);
    await t.close();
  });

  R("open() waits for the expected peers and names the missing ones when they do not come", async () => {
    const srv = await server();
    const job = newJob();
    const a = new RedisTransport({ nodeId: 0, redisPort: srv.port, job, expect: [1, 2], connectTimeout: 1500 });
    open.push(a);
    const opening = a.open();
    const b = new RedisTransport({ nodeId: 1, redisPort: srv.port, job });
    open.push(b);
    await b.open();
    const message = await rejectsWithTransportError(opening);
    assert.is(message, `Cannot start node 0: peers 2 did not join job "${job}" within 1500 ms`);
    // A failed open() leaves the job: b sees node 0 leave.
    await until(() => !b.peers.includes(0), "node 0 gone");
  });

  R("a password in redisUrl works; a wrong one fails open() at once", async () => {
    const srv = await startRedis({ password: "s3cret/:@" });
    try {
      const job = newJob();
      const a = new RedisTransport({ nodeId: 0, redisUrl: srv.url, job, expect: [1] });
      const b = new RedisTransport({ nodeId: 1, redisUrl: srv.url, job, expect: [0] });
      open.push(a, b);
      await Promise.all([a.open(), b.open()]);
      const got = collect(b);
      a.publish("t", bytes(1));
      await until(() => got.length === 1, "message with a password");
      const bad = new RedisTransport({ nodeId: 2, redisUrl: `redis://:wrong@127.0.0.1:${srv.port}`, job });
      const t0 = Date.now();
      const message = await rejectsWithTransportError(bad.open());
      assert.match(message, "refused the credentials");
      assert.ok(Date.now() - t0 < 5000);
      await bad.close();
      assert.throws(() => new RedisTransport({ nodeId: 0, redisUrl: "http://x" }), /redis:\/\//);
    } finally {
      await Promise.all(open.splice(0).map((t) => t.close()));
      await srv.stop();
    }
  });

  R("TLS: rediss:// with the server's CA works; an unverifiable certificate fails open() at once", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ditask-redis-tls-"));
    const cert = join(dir, "cert.pem"), key = join(dir, "key.pem");
    const made = spawnSync("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
      "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
    ], { stdio: "ignore" });
    if (made.status !== 0) {
      console.log("SKIPPED TLS test: openssl cannot make a certificate here");
      rmSync(dir, { recursive: true, force: true });
      return;
    }
    let srv: RedisServer;
    try {
      srv = await startRedis({ tls: { certFile: cert, keyFile: key, caFile: cert } });
    } catch (e) {
      console.log(`SKIPPED TLS test: this redis-server does not serve TLS (${(e as Error).message})`);
      rmSync(dir, { recursive: true, force: true });
      return;
    }
    try {
      const job = newJob();
      const url = `rediss://127.0.0.1:${srv.tlsPort}`;
      const tls = { ca: readFileSync(cert) };
      const a = new RedisTransport({ nodeId: 0, redisUrl: url, tls, job, expect: [1] });
      const b = new RedisTransport({ nodeId: 1, redisUrl: url, tls, job, expect: [0] });
      open.push(a, b);
      assert.is(a.address, url);
      await Promise.all([a.open(), b.open()]);
      const got = collect(b);
      a.publish("t", bytes(5));
      await until(() => got.length === 1, "a message over TLS");
      const bad = new RedisTransport({ nodeId: 2, redisUrl: url, job, connectTimeout: 20_000 });
      const t0 = Date.now();
      const message = await rejectsWithTransportError(bad.open());
      assert.match(message, "TLS certificate does not verify");
      assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
    } finally {
      await Promise.all(open.splice(0).map((t) => t.close()));
      await srv.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  R("garbage on our channels from a foreign publisher is dropped and logged; the node goes on", async () => {
    const srv = await server();
    const { nodes: [a, b], job } = await cluster(2);
    const names = redisNames(job);
    const got = collect(b!);
    b!.subscribe("x");
    const raw = createClient({ url: srv.url, RESP: 2 });
    await raw.connect();
    const lines = await captureWarnings(async () => {
      try {
        const good = encodeEvents(0, newInstance().bytes, 1, "x", [bytes(1)]);
        const garbage: Array<[string, Buffer | string]> = [
          [`${names.topicPrefix}x`, "hello"],
          [`${names.topicPrefix}x`, Buffer.alloc(0)],
          [`${names.topicPrefix}x`, Buffer.from(good.subarray(0, good.length - 1))], // truncated
          [`${names.topicPrefix}x`, Buffer.concat([Buffer.from(good), Buffer.from([0])])], // trailing byte
          [`${names.topicPrefix}x`, Buffer.from([0x64, 0x74, 9, 1, ...new Uint8Array(40)])], // version 9
          [`${names.topicPrefix}y`, Buffer.from(good)], // topic does not match the channel
          [`${names.topicPrefix}x`, Buffer.from(encodeEvents(1, newInstance().bytes, 1, "x", [bytes(9)]))], // b's own id
          [`${names.topicPrefix}x`, Buffer.from([0x64, 0x74, 1, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 1, 0x78])], // 4 G events
          [names.members, "{not json"],
          [names.members, JSON.stringify({ v: 1, k: "hello", id: -1, inst: "x", labels: [] })],
          [names.members, JSON.stringify({ v: 1, k: "hb", id: 1, inst: "0011223344556677", labels: [] })], // b's id
        ];
        for (const [ch, msg] of garbage) await raw.publish(ch, msg);
        a!.publish("x", bytes(42));
        await until(() => got.some((m) => m.payload[0] === 42), "a good message after the garbage");
      } finally {
        await raw.close();
      }
    });
    assert.equal(got.map((m) => [m.from, m.payload[0]]), [[0, 42]]);
    const drops = lines.filter((l) => l.includes("node 1: dropped a message"));
    assert.is(drops.length, 11, lines.join("\n"));
    assert.ok(drops.some((l) => l.includes("another process uses node id 1")), lines.join("\n"));
    assert.ok(drops.some((l) => l.includes("too short (5 bytes)")), lines.join("\n"));
    assert.equal(b!.peers, [0]);
  });

  R("a short peerTimeout alone refreshes presence often enough: idle peers are not reported as left", async () => {
    // Before: presence went out every 1000 ms whatever the timeout, so with 400 ms peers flapped.
    const { nodes: [a, b] } = await cluster(2, { peerTimeout: 400 });
    const events: PeerEvent[] = [];
    a!.onPeer((e) => events.push(e));
    b!.onPeer((e) => events.push(e));
    // Idle for three timeouts: the subject of the test, not a wait for something to happen.
    await new Promise((r) => setTimeout(r, 1200));
    assert.equal(events.map((e) => `${e.type} ${e.nodeId}`), []);
    assert.equal([a!.peers, b!.peers], [[1], [0]]);
  });

  R("a node that dies without close() is reported as left after peerTimeout", async () => {
    const srv = await server();
    const job = newJob();
    const a = new RedisTransport({ nodeId: 0, redisPort: srv.port, job, heartbeatInterval: 100, peerTimeout: 1000 });
    open.push(a);
    await a.open();
    const events: PeerEvent[] = [];
    a.onPeer((e) => events.push(e));
    const child = runScript(testPath("_fixtures/redis_scenarios"), ["node", JSON.stringify({ redisPort: srv.port, nodeId: 7 })], {
      env: { DITASK_JOB: job },
      timeoutMs: 30_000,
    });
    await until(() => events.some((e) => e.type === "joined" && e.nodeId === 7), "the fixture joined", 20_000);
    assert.equal(events[0]!.labels, ["fixture"]);
    killAll(); // SIGKILL: no bye
    const t0 = Date.now();
    await until(() => events.some((e) => e.type === "left" && e.nodeId === 7), "left after the timeout", 5000);
    const took = Date.now() - t0;
    assert.ok(took >= 500 && took < 3000, `left after ${took} ms`);
    assert.equal(a.peers, []);
    await child;
  });

  R("a large event on a slow link to Redis, longer than peerTimeout to arrive: the sender is not reported as left", async () => {
    const srv = await server();
    const job = newJob();
    // The receiver reaches Redis through a proxy that carries about 1 MB/s each way: 3 MB take
    // about 3 s, three peer timeouts.
    const proxy = await slowProxy(srv.port, 1000);
    try {
      const proxyPort = proxy.port;
      const common = { job, expect: [0, 1], peerTimeout: 1000, connectTimeout: 10_000 };
      const a = new RedisTransport({ nodeId: 0, redisPort: srv.port, ...common });
      const b = new RedisTransport({ nodeId: 1, redisPort: proxyPort, ...common });
      open.push(a, b);
      await Promise.all([a.open(), b.open()]);
      b.subscribe("big");
      a.endStartup();
      b.endStartup();
      await b.whenSubscribed();
      const left: number[] = [];
      b.onPeer((e) => e.type === "left" && left.push(e.nodeId));
      const got = collect(b);
      // Before: B reported A as left (timed out) while the event was still arriving, then as
      // joined again.
      a.publish("big", new Uint8Array(3_000_000));
      await until(() => got.length === 1, "the 3 MB event", 20_000);
      assert.is(got[0]!.payload.byteLength, 3_000_000);
      assert.equal(left, []);
      assert.equal(b.peers, [0]);
    } finally {
      await proxy.close();
    }
  });

  R("close() is idempotent and leaves nothing running: the process exits by itself", async () => {
    const srv = await server();
    const r = await runScript(testPath("_fixtures/redis_scenarios"), ["node", JSON.stringify({ redisPort: srv.port, nodeId: 3, count: 0 })], {
      env: { DITASK_JOB: newJob() },
      timeoutMs: 20_000,
    });
    assert.is(r.code, 0, r.stderr);
    assert.equal(r.stdout.split("\n").filter(Boolean), ["ready", "closed"]);
  });

  R("the router's start-up hold gets an event sent before the listener; afterwards only listened topics are subscribed", async () => {
    const srv = await server();
    const job = newJob();
    const tasks = [0, 1].map(() => new Task(new Router()));
    const ts = [0, 1].map((i) => new RedisTransport({ nodeId: i, redisPort: srv.port, job, expect: [1 - i] }));
    open.push(...ts);
    tasks.forEach((t, i) => t.router.attach(ts[i]!));
    await Promise.all(ts.map((t) => t.open()));
    tasks.forEach((t) => t.start());
    try {
      tasks[1]!.emit("early", "Hi");
      await delay(100); // node 0 has no listener yet: the hold keeps the event
      const got = tasks[0]!.waitFor("early", { timeout: 5000 });
      assert.equal(await got, ["Hi"]);
      tasks[0]!.on("later", () => {});
      tasks[0]!.router.endStartup();
      assert.not.ok(ts[0]!.startupMode);
      await ts[0]!.whenSubscribed();
      const raw = createClient({ url: srv.url, RESP: 2 });
      await raw.connect();
      try {
        const mine = (await raw.pubSubChannels(`${redisNames(job).topicPrefix}*`)).map(String).sort();
        assert.ok(mine.includes(`${redisNames(job).topicPrefix}task.later`), mine.join(","));
        assert.not.ok(mine.includes(`${redisNames(job).topicPrefix}task.early`), mine.join(","));
        assert.is(Number(await raw.pubSubNumPat()), 1); // node 1 is still in start-up
      } finally {
        await raw.close();
      }
      const later = tasks[0]!.waitFor("later", { timeout: 5000 });
      tasks[1]!.emit("later", new Float32Array([1.5, 2.5]));
      const [arr] = await later;
      assert.instance(arr, Float32Array);
      assert.equal([...(arr as Float32Array)], [1.5, 2.5]);
    } finally {
      tasks.forEach((t) => t.stop());
      await Promise.all(tasks.map((t) => t.router.detach()));
    }
  });

  R("a Redis restart: subscriptions come back, and events published while it was down arrive once, in order", async () => {
    const srv = await startRedis();
    try {
      const job = newJob();
      const opts = { redisPort: srv.port, job, heartbeatInterval: 100, peerTimeout: 5000, connectTimeout: 10_000 };
      const a = new RedisTransport({ nodeId: 0, ...opts, expect: [1] });
      const b = new RedisTransport({ nodeId: 1, ...opts, expect: [0] });
      open.push(a, b);
      await Promise.all([a.open(), b.open()]);
      const got = collect(b);
      const left: PeerEvent[] = [];
      b.onPeer((e) => e.type === "left" && left.push(e));
      b.subscribe("s");
      b.endStartup(); // channel mode: the restored subscription is the channel's
      await b.whenSubscribed();
      let i = 0;
      const send = (n: number) => {
        for (let k = 0; k < n; k++) a.publish("s", cborCodec.encode(i++));
      };
      send(100);
      await until(() => got.length === 100, "100 before the restart");
      await srv.kill();
      const downFrom = i;
      // Published while Redis is down (some while the clients still think it is up).
      for (let k = 0; k < 10; k++) {
        send(10);
        await delay(20);
      }
      const downTo = i;
      await srv.restart();
      send(50); // published while the clients reconnect
      const total = i;
      await until(() => got.length >= total, `all ${total} after the restart`, 15_000);
      await delay(200);
      const seq = got.map((m) => cborCodec.decode(m.payload) as number);
      assert.equal(seq, Array.from({ length: total }, (_, k) => k), "once, in order");
      assert.ok(downTo - downFrom === 100);
      assert.equal(left, [], "a short outage is not a peer leaving");
      const raw = createClient({ url: srv.url, RESP: 2 });
      await raw.connect();
      try {
        const channels = (await raw.pubSubChannels(`${redisNames(job).topicPrefix}*`)).map(String);
        assert.equal(channels, [`${redisNames(job).topicPrefix}s`], "the subscription was restored");
      } finally {
        await raw.close();
      }
      // And the link goes on both ways.
      const gotA = collect(a);
      a.subscribe("back");
      await a.whenSubscribed();
      b.publish("back", bytes(1));
      await until(() => gotA.length === 1, "b to a after the restart");
    } finally {
      await Promise.all(open.splice(0).map((t) => t.close()));
      await srv.stop();
    }
  });

  R("while Redis is down, past maxQueuedBytes the oldest waiting events are dropped; the rest arrive in order", async () => {
    const srv = await startRedis();
    try {
      const job = newJob();
      const opts = { redisPort: srv.port, job, heartbeatInterval: 100, peerTimeout: 5000, connectTimeout: 10_000 };
      const max = 4096;
      const a = new RedisTransport({ nodeId: 0, ...opts, expect: [1], maxQueuedBytes: max });
      const b = new RedisTransport({ nodeId: 1, ...opts, expect: [0] });
      open.push(a, b);
      await Promise.all([a.open(), b.open()]);
      const got = collect(b);
      b.subscribe("q");
      b.endStartup();
      await b.whenSubscribed();
      let i = 0;
      const pad = "x".repeat(240); // more than 250 bytes per event
      const send = (n: number) => {
        for (let k = 0; k < n; k++) a.publish("q", cborCodec.encode({ i: i++, pad }));
      };
      send(20);
      await until(() => got.length === 20, "20 before the outage");
      await srv.kill();
      const downFrom = i;
      for (let k = 0; k < 20; k++) {
        send(5); // one message per tick, 100 in all while Redis is down
        await delay(10);
      }
      const downTo = i;
      await srv.restart();
      await withTimeout(a.drain(), 15_000, "a.drain() after the restart");
      send(5); // Redis is back: nothing is dropped any more
      const total = i;
      await until(() => got.length > 0 && (cborCodec.decode(got[got.length - 1]!.payload) as { i: number }).i === total - 1, "the last event", 15_000);
      const seq = got.map((m) => (cborCodec.decode(m.payload) as { i: number }).i);
      for (let k = 1; k < seq.length; k++) assert.ok(seq[k]! > seq[k - 1]!, `in order and once: ${seq.join(",")}`);
      assert.equal(seq.slice(0, 20), Array.from({ length: 20 }, (_, k) => k));
      assert.equal(seq.slice(-5), [total - 5, total - 4, total - 3, total - 2, total - 1]);
      // Of the outage's events only the newest survive: a run that ends with the last one sent.
      const kept = seq.filter((v) => v >= downFrom && v < downTo);
      // Each event takes more than 250 bytes of the queue, so at most max / 250 of them fit.
      assert.ok(kept.length > 0 && kept.length * 250 <= max, `kept ${kept.length} of ${downTo - downFrom}`);
      assert.equal(kept, Array.from({ length: kept.length }, (_, k) => downTo - kept.length + k), "the newest, without gaps");
    } finally {
      await Promise.all(open.splice(0).map((t) => t.close()));
      await srv.stop();
    }
  });

  R.after(async () => {
    if (shared) await (await shared).stop();
    shared = undefined;
  });

  R.run();

  const P = suite("Redis multi-process");
  let srv: RedisServer | undefined;
  P.before(async () => {
    srv = await startRedis();
  });
  P.after.each(() => killAll());
  P.after(async () => {
    await srv?.stop();
  });
  const lines = (s: string) => s.split("\n").filter(Boolean);
  const scenarios = testPath("_fixtures/redis_scenarios");

  P("the seed's third example with mqType redis prints Get msg: Hi, 20 runs in 20", async () => {
    let ok = 0;
    for (let i = 0; i < 20; i++) {
      const r = await runScript(testPath("_fixtures/redis_greet"), ["127.0.0.1", String(srv!.port)], {
        env: { DITASK_JOB: newJob() },
        timeoutMs: 30_000,
      });
      if (r.code === 0 && lines(r.stdout).includes("Get msg: Hi") && lines(r.stdout).includes("launcher done")) ok++;
      else console.error(r);
    }
    assert.is(ok, 20);
  });

  P("finish propagates over Redis: a peer's stop() ends node 0's run early (test_early_stop)", async () => {
    const r = await runScript(testPath("_fixtures/scenarios"), ["early_stop", JSON.stringify({ mqType: "redis", redisPort: srv!.port })], {
      env: { DITASK_JOB: newJob() },
      timeoutMs: 60_000,
    });
    assert.is(r.code, 0, r.stdout + r.stderr);
    const m = /node 0 totalStep (\d+)/.exec(r.stdout);
    assert.ok(m, r.stdout + r.stderr);
    assert.ok(Number(m![1]) < 20, `node 0 ran ${m![1]} steps`);
    assert.ok(lines(r.stdout).includes("node 1 totalStep 1"), r.stdout);
  });

  P("3 workers each emit 10,000 events to a 4th: every event arrives once, in order per sender", async () => {
    const r = await runScript(scenarios, ["load", JSON.stringify({ nParallelWorkers: 4, redisPort: srv!.port, count: 10_000 })], {
      env: { DITASK_JOB: newJob() },
      timeoutMs: 90_000,
    });
    assert.is(r.code, 0, r.stderr);
    assert.ok(lines(r.stdout).includes("node 3 got 30000 events, 0 bad, per sender 10000,10000,10000"), r.stdout + r.stderr);
  });

  P("a Node process and a Deno process share one job and exchange a Float32Array both ways", async () => {
    // Each runtime runs its own tree: Node the compiled .js, Deno the .ts sources.
    // Node runs the compiled tree (<root>/.test-dist, or wherever this file was compiled to).
    const nodeScript = runtimeKey === "node"
      ? scenarios
      : new URL("../../.test-dist/tests/_fixtures/redis_scenarios.js", import.meta.url).pathname;
    const denoScript = runtimeKey === "deno"
      ? scenarios
      : new URL("../../../tests/_fixtures/redis_scenarios.ts", import.meta.url).pathname;
    if (!existsSync(nodeScript) || !existsSync(denoScript)) {
      console.log(`SKIPPED mixed Node + Deno test: ${existsSync(nodeScript) ? denoScript : nodeScript} is missing (build first)`);
      return;
    }
    if (runtimeKey === "node" && !process.env.DITASK_DENO) {
      const local = new URL("../../../node_modules/.bin/deno", import.meta.url).pathname;
      if (existsSync(local)) process.env.DITASK_DENO = local;
    }
    const job = newJob();
    const common = { redisPort: srv!.port, nParallelWorkers: 1 };
    const [ra, rb] = await Promise.all([
      runScript(nodeScript, ["mixed", JSON.stringify({ ...common, nodeIds: 0, peer: 1 })], {
        runtime: "node",
        env: { DITASK_JOB: job },
        timeoutMs: 60_000,
      }),
      runScript(denoScript, ["mixed", JSON.stringify({ ...common, nodeIds: 1, peer: 0 })], {
        runtime: "deno",
        env: { DITASK_JOB: job },
        timeoutMs: 60_000,
      }),
    ]);
    assert.is(ra.code, 0, ra.stderr);
    assert.is(rb.code, 0, rb.stderr);
    assert.ok(lines(ra.stdout).includes("node 0 (node) got hello from deno node 1 intact=true"), ra.stdout + ra.stderr);
    assert.ok(lines(rb.stdout).includes("node 1 (deno) got hello from node node 0 intact=true"), rb.stdout + rb.stderr);
  });

  P.run();
}

/** Kill every server still running (when a suite failed before its `after`). */
export function stopAllRedis(): Promise<void> {
  return Promise.all(liveServers().map((s) => s.stop())).then(() => {});
}
