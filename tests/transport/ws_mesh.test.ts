import { suite } from "uvu";
import * as assert from "uvu/assert";
import { WebSocket } from "ws";
import { TransportError } from "../../lib/errors.ts";
import { runtimeKey } from "../../lib/runtime.ts";
import { WsMeshTransport } from "../../lib/transport/ws/mod.ts";
import { encodeEvents, encodeHello, encodeResume, type EventsFrame, FRAME_BATCH, FRAME_EVENT, FRAME_HELLO, LARGE_PAYLOAD, parseFrame } from "../../lib/transport/ws/protocol.ts";
import { log, LOG_LEVELS, setLogLevel } from "../../lib/log.ts";
import { until } from "../_helpers.ts";
import { defineTransportContract } from "./contract.ts";

/** n mesh nodes on loopback with free ports: node i dials nodes 0..i-1. */
export async function meshCluster(n: number, protocol: "tcp" | "ipc" = "tcp") {
  const nodes: WsMeshTransport[] = [];
  const ids = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < n; i++) {
    const listen = protocol === "tcp"
      ? "tcp://127.0.0.1:0"
      : `ipc://${(await import("node:os")).tmpdir()}/ditask_test_${process.pid}_${Date.now()}_${i}.ipc`;
    const t = new WsMeshTransport({
      nodeId: i,
      listen,
      dial: nodes.map((p) => p.address!),
      expect: ids.filter((id) => id !== i),
      connectTimeout: 10_000,
    });
    await t.bind();
    nodes.push(t);
  }
  await Promise.all(nodes.map((t) => t.open()));
  return { nodes, close: async () => void (await Promise.all(nodes.map((t) => t.close()))) };
}

defineTransportContract("WsMeshTransport (tcp)", (n) => meshCluster(n, "tcp"));
defineTransportContract("WsMeshTransport (ipc)", (n) => meshCluster(n, "ipc"));

const F = suite("WsMeshTransport framing");

/** A mesh node and a raw WebSocket peer (node 9) that records the event frames it receives. */
async function rawPeer() {
  const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", connectTimeout: 10_000 });
  await a.open();
  const ws = new WebSocket(a.address!.replace("tcp://", "ws://"), { perMessageDeflate: false });
  const frames: EventsFrame[] = [];
  ws.on("error", () => {});
  ws.on("message", (d) => {
    const f = parseFrame(new Uint8Array(d as Buffer));
    if (typeof f === "string") return;
    if (f.kind === FRAME_HELLO) ws.send(encodeResume(f.session, 0));
    else if (f.kind === FRAME_EVENT) frames.push(f);
  });
  ws.once("open", () => ws.send(encodeHello(9, [], "rawsession", "n".repeat(16))));
  const close = async () => {
    ws.terminate();
    await a.close();
  };
  try {
    await until(() => a.peers.includes(9), "the raw peer joined");
  } catch (err) {
    await close();
    throw err;
  }
  return { a, ws, frames, close };
}

F("the constructor refuses a lone string for dial or labels and expect ids that are not node ids", () => {
  const refused: Array<[object, RegExp]> = [
    [{ dial: "tcp://127.0.0.1:1" }, /Invalid dial "tcp:\/\/127.0.0.1:1": expected a list of strings, such as \["tcp:\/\/127.0.0.1:1"\]/],
    [{ dial: [5] }, /Invalid dial: 5 is not a string/],
    [{ labels: "gpu" }, /Invalid labels "gpu": expected a list of strings/],
    [{ expect: 1 }, /Invalid expect 1: expected a list of node ids/],
    [{ expect: ["1"] }, /Invalid expect \["1"\]: expected a list of node ids/],
    [{ expect: [-1] }, /Invalid expect \[-1\]/],
  ];
  for (const [o, re] of refused) {
    assert.throws(() => new WsMeshTransport({ nodeId: 0, ...o } as never), (e: unknown) => e instanceof TypeError && re.test((e as Error).message), JSON.stringify(o));
  }
  const t = new WsMeshTransport({ nodeId: 0, dial: ["tcp://127.0.0.1:1"], labels: ["gpu"], expect: [1] });
  assert.equal(t.labels, ["gpu"]);
});

F("a lone publish goes out at once; the rest of the same tick goes out together at its end", async () => {
  const { a, frames, close } = await rawPeer();
  try {
    a.publish("t", new Uint8Array([1]));
    a.publish("t", new Uint8Array([2]));
    a.publish("t", new Uint8Array([3]));
    await until(() => frames.reduce((n, f) => n + f.items.length / 2, 0) >= 3, "3 events");
    assert.equal(frames.map((f) => f.items.length / 2), [1, 2], "the first at once, then the other two in one frame");
    assert.equal(frames.flatMap((f) => f.items.filter((_, i) => i % 2 === 1).map((p) => (p as Uint8Array)[0])), [1, 2, 3]);
  } finally {
    await close();
  }
});

F("replies published while a received frame is delivered go out together, in one frame, right after it", async () => {
  const { a, ws, frames, close } = await rawPeer();
  try {
    a.onMessage((m) => a.publish("echo", m.payload));
    // One BATCH frame of 20 events from node 9: node 0 echoes each as it is delivered.
    const items: Array<string | Uint8Array> = [];
    for (let i = 0; i < 20; i++) items.push("ping", new Uint8Array([i]));
    ws.send(encodeEvents(1, 9, items) as Uint8Array);
    await until(() => frames.reduce((n, f) => n + f.items.length / 2, 0) >= 20, "20 echoes");
    assert.is(frames.length, 1, `the echoes came in ${frames.length} frames`);
    assert.equal(frames[0]!.items.filter((_, i) => i % 2 === 1).map((p) => (p as Uint8Array)[0]), Array.from({ length: 20 }, (_, i) => i));
    assert.is(frames[0]!.seq, 1);
  } finally {
    await close();
  }
});

F("small frames (one socket write) and large events (ws fragments) keep their order, both ways", async () => {
  // Node 1 dials node 0: each direction is tested, the dialer's masked frames and the acceptor's.
  const { nodes, close } = await meshCluster(2);
  try {
    const N = 60;
    const size = (i: number) => (i % 3 === 1 ? LARGE_PAYLOAD + 4 : 8);
    const got: Array<Array<[number, number]>> = [[], []];
    for (const t of nodes) {
      t.subscribe("seq");
      t.onMessage((m) => got[t.nodeId]!.push([new DataView(m.payload.buffer, m.payload.byteOffset).getUint32(0), m.payload.byteLength]));
    }
    for (let i = 0; i < N; i++) {
      for (const t of nodes) {
        const b = new Uint8Array(size(i));
        new DataView(b.buffer).setUint32(0, i);
        t.publish("seq", b);
      }
      // Some events alone in their tick (sent at once), some several to a tick (one frame).
      if (i % 4 === 3) await new Promise((r) => setImmediate(r));
    }
    await until(() => got[0]!.length >= N && got[1]!.length >= N, "every event both ways");
    const want = Array.from({ length: N }, (_, i) => [i, size(i)]);
    assert.equal(got[0], want, "dialer to acceptor");
    assert.equal(got[1], want, "acceptor to dialer");
  } finally {
    await close();
  }
});

F("one-buffer events frames go to the socket directly, not through ws.send, on either side of a link", async () => {
  // What ws.send is asked to carry; the mesh's own writes bypass it. Without its socket (a link
  // whose socket was not seen), every events frame would come through here and still arrive.
  // (A large event's two fragments do go through ws.send.)
  const send = WebSocket.prototype.send;
  const viaWs: string[] = [];
  WebSocket.prototype.send = function (this: WebSocket, data: unknown, ...rest: unknown[]) {
    const b = data as Uint8Array;
    const opts = rest[0] as { fin?: boolean } | undefined;
    if (opts?.fin === false) viaWs.push("head fragment");
    else if (b instanceof Uint8Array && b.length > 1 && (b[1] === FRAME_EVENT || b[1] === FRAME_BATCH)) viaWs.push(`frame ${b[1]}`);
    return (send as (...a: unknown[]) => void).call(this, data, ...rest);
  } as typeof send;
  const { nodes, close } = await meshCluster(2);
  try {
    const got = [0, 0];
    for (const t of nodes) {
      t.subscribe("x");
      t.onMessage(() => got[t.nodeId]!++);
    }
    for (const t of nodes) {
      t.publish("x", new Uint8Array(8)); // alone in its tick: an EVENT frame
      await new Promise((r) => setImmediate(r));
      t.publish("x", new Uint8Array(8)); // two in one tick: a BATCH frame
      t.publish("x", new Uint8Array(8));
      await new Promise((r) => setImmediate(r));
      t.publish("x", new Uint8Array(LARGE_PAYLOAD)); // a head and a payload, through ws.send
    }
    await until(() => got[0] === 4 && got[1] === 4, "every event both ways");
    // On Deno the mesh does not run on ws at all (lib/transport/ws/deno_ws.ts).
    const expected = runtimeKey === "deno" ? [] : ["head fragment", "head fragment"];
    assert.equal(viaWs, expected, "only the large events' heads, one each way");
  } finally {
    WebSocket.prototype.send = send;
    await close();
  }
});

F("a long event name counts against maxPayload too: refused at publish with a short message; the link stays", async () => {
  const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", maxPayload: 300_000, connectTimeout: 10_000 });
  await a.bind();
  const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!], maxPayload: 300_000, connectTimeout: 10_000 });
  const got: string[] = [];
  a.onMessage((m) => got.push(m.topic));
  try {
    await Promise.all([a.open(), b.open()]);
    // Before: it was sent, A closed the link (1009), B redialed and resent it, forever, and
    // every later event waited behind it.
    const long = "n".repeat(400_000);
    let err: unknown;
    try {
      b.publish(long, new Uint8Array(10));
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof TransportError && err.code === "ERR_DITASK_TOO_LARGE", String(err));
    const message = (err as Error).message;
    assert.match(message, /its name \(400000 bytes\) and payload \(10 bytes\)/);
    assert.ok(message.length < 400, `the message quotes the whole name (${message.length} characters)`);
    b.publish("after", new Uint8Array(10));
    await until(() => got.length === 1, "the next event");
    assert.equal(got, ["after"]);
    assert.equal([a.peers, b.peers], [[1], [0]]);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

F("a peer with a smaller maxPayload that refuses a frame (1009) is named in one warning; the redials back off", async () => {
  const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", maxPayload: 100_000, connectTimeout: 10_000 });
  await a.bind();
  const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!], connectTimeout: 10_000 });
  const logged: string[] = [];
  const origError = console.error;
  const before = [...LOG_LEVELS].reverse().find((l) => log.enabled(l)) ?? "silent";
  setLogLevel("info");
  console.error = (...args: unknown[]) => void logged.push(args.map(String).join(" "));
  try {
    await Promise.all([a.open(), b.open()]);
    b.publish("t", new Uint8Array(200_000)); // within b's maxPayload, over a's
    // Before: only "link to node 0 dropped (1009)" at info level, on every redial.
    await until(() => logged.some((l) => l.includes("refused a frame as larger than its maxPayload")), "the warning");
    const line = logged.find((l) => l.includes("refused a frame"))!;
    assert.match(line, /node 0 refused a frame as larger than its maxPayload \(1009\), and this node's is 268435456 bytes; give every node the same maxPayload/);
    // How often it redials over the next second is the behaviour under test: this waits on purpose.
    const from = logged.length;
    await new Promise((r) => setTimeout(r, 1000));
    const later = logged.slice(from);
    // Before the backoff, B redialed at once after each refusal: hundreds of links a second,
    // each with its own warning.
    assert.is(later.filter((l) => l.includes("refused a frame")).length, 0, "one warning per peer");
    const redials = later.filter((l) => l.includes("dropped (1009); redialing")).length;
    assert.ok(redials <= 12, `${redials} redials in 1 s`);
  } finally {
    console.error = origError;
    setLogLevel(before);
    await Promise.all([a.close(), b.close()]);
  }
});

F("a tick's events that add up to more than maxPayload go out in several frames, in order", async () => {
  const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", maxPayload: 100_000, connectTimeout: 10_000 });
  await a.bind();
  const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!], maxPayload: 100_000, connectTimeout: 10_000 });
  const got: number[] = [];
  a.onMessage((m) => got.push(m.payload[0]! | (m.payload[1]! << 8)));
  const left: number[] = [];
  a.onPeer((e) => e.type === "left" && left.push(e.nodeId));
  try {
    await Promise.all([a.open(), b.open()]);
    // Before: they went as one frame of about 200 kB; A closed the link (1009) and B resent it,
    // forever: one event of the 300 arrived.
    for (let i = 0; i < 300; i++) {
      const p = new Uint8Array(1000);
      p[0] = i & 255;
      p[1] = i >> 8;
      b.publish("t", p);
    }
    await until(() => got.length === 300, "all 300 events");
    assert.equal(got, Array.from({ length: 300 }, (_, i) => i));
    assert.equal(left, [], "the link never dropped");
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

F("an event that could never be delivered (over maxPayload or maxOutboxBytes) is refused at publish; the link stays", async () => {
  const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", maxPayload: 300_000, connectTimeout: 10_000 });
  await a.bind();
  const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!], maxOutboxBytes: 200_000, connectTimeout: 10_000 });
  const got: Array<[number, number]> = [];
  a.onMessage((m) => got.push([0, m.payload.byteLength]));
  b.onMessage((m) => got.push([1, m.payload.byteLength]));
  const tooLarge = (limit: string) => (e: unknown) =>
    e instanceof TransportError && e.code === "ERR_DITASK_TOO_LARGE" && e.message.includes(limit) && e.message.includes('"t"');
  try {
    await Promise.all([a.open(), b.open()]);
    let done = 0;
    // Before: the peer closed the link (1009) or was dropped as a slow consumer, and the event was lost.
    assert.throws(() => a.publish("t", new Uint8Array(400_000), () => done++), tooLarge("maxPayload (300000 bytes)"));
    assert.throws(() => b.publish("t", new Uint8Array(250_000)), tooLarge("maxOutboxBytes (200000 bytes)"));
    a.publish("t", new Uint8Array(250_000), () => done++);
    b.publish("t", new Uint8Array(150_000));
    await until(() => got.length === 2 && done === 1, "the events within the limits arrived");
    assert.equal(got.sort(), [[0, 150_000], [1, 250_000]]);
    assert.equal([a.peers, b.peers], [[1], [0]]);
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
});

F.run();
