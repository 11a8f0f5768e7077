// One suite body that every transport must pass: the in-memory hub, the WebSocket mesh, Redis.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { PeerEvent, Transport, TransportMessage } from "../../lib/transport/types.ts";
import { until, withTimeout } from "../_helpers.ts";

/** A set of connected transports made for one test. */
export interface Cluster {
  nodes: Transport[];
  /** Close every node (idempotent) and free what the cluster used. */
  close(): Promise<void>;
}

/** Make `n` transports with node ids 0..n-1, opened and all connected to each other. */
export type ClusterFactory = (n: number) => Promise<Cluster>;

function collect(t: Transport): TransportMessage[] {
  const got: TransportMessage[] = [];
  t.onMessage((m) => got.push({ topic: m.topic, payload: m.payload.slice(), from: m.from }));
  return got;
}


const bytes = (...v: number[]) => new Uint8Array(v);

/** Register the contract suite for a transport. */
export function defineTransportContract(name: string, make: ClusterFactory): void {
  const C = suite(`Transport contract: ${name}`);
  let cluster: Cluster | undefined;
  C.after.each(async () => {
    await cluster?.close();
    cluster = undefined;
  });

  C("publish() reaches every other node, never the sender", async () => {
    cluster = await make(3);
    const [a, b, c] = cluster.nodes as [Transport, Transport, Transport];
    const ga = collect(a), gb = collect(b), gc = collect(c);
    a.subscribe("t");
    b.subscribe("t");
    c.subscribe("t");
    a.publish("t", bytes(1, 2, 3));
    await until(() => gb.length === 1 && gc.length === 1, "delivery to b and c");
    assert.equal(gb[0], { topic: "t", payload: bytes(1, 2, 3), from: 0 });
    assert.equal(gc[0], { topic: "t", payload: bytes(1, 2, 3), from: 0 });
    // A marker from b proves that a had time to receive anything it would wrongly get.
    b.publish("t", bytes(9));
    await until(() => ga.length === 1, "marker to a");
    assert.equal(ga.map((m) => m.from), [1]);
  });

  C("peers lists the other nodes", async () => {
    cluster = await make(3);
    for (const t of cluster.nodes) {
      assert.equal([...t.peers].sort(), [0, 1, 2].filter((id) => id !== t.nodeId));
    }
  });

  C("order per sender is kept under a burst of 5000 messages from two senders", async () => {
    cluster = await make(3);
    const [a, b, c] = cluster.nodes as [Transport, Transport, Transport];
    c.subscribe("n");
    const got = collect(c);
    for (let i = 0; i < 5000; i++) {
      a.publish("n", bytes(i & 255, i >> 8));
      b.publish("n", bytes(i & 255, i >> 8));
    }
    await until(() => got.length === 10_000, "10000 messages", 20_000);
    for (const from of [0, 1]) {
      const seq = got.filter((m) => m.from === from).map((m) => m.payload[0]! + (m.payload[1]! << 8));
      assert.equal(seq, Array.from({ length: 5000 }, (_, i) => i), `order from ${from}`);
    }
  });

  C("a 4 MiB payload arrives intact; publish's done callback runs once", async () => {
    cluster = await make(2);
    const [a, b] = cluster.nodes as [Transport, Transport];
    b.subscribe("big");
    const got = collect(b);
    const big = new Uint8Array(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 997) big[i] = i % 251;
    // `done` says when a transport no longer reads the bytes (the codec's pool reuses them then).
    let done = 0;
    a.publish("big", big, () => done++);
    await until(() => got.length === 1 && done > 0, "4 MiB payload and its done callback");
    assert.is(got[0]!.payload.byteLength, big.byteLength);
    assert.ok(got[0]!.payload.every((v, i) => v === big[i]));
    // Exactly once: a marker published after it has arrived, and done has not run again.
    a.publish("big", bytes(1));
    await until(() => got.length === 2, "marker");
    assert.is(done, 1);
  });

  C("topics stay apart", async () => {
    cluster = await make(2);
    const [a, b] = cluster.nodes as [Transport, Transport];
    b.subscribe("x");
    b.subscribe("y");
    const got = collect(b);
    a.publish("x", bytes(1));
    a.publish("y", bytes(2));
    await until(() => got.length === 2, "two topics");
    assert.equal(got.map((m) => [m.topic, m.payload[0]]), [["x", 1], ["y", 2]]);
  });

  C("close() reports the peer as left on the others and is idempotent", async () => {
    cluster = await make(2);
    const [a, b] = cluster.nodes as [Transport, Transport];
    const events: PeerEvent[] = [];
    a.onPeer((e) => events.push(e));
    await withTimeout(b.close(), 5000, "close");
    await withTimeout(b.close(), 5000, "second close");
    await until(() => events.some((e) => e.type === "left" && e.nodeId === 1), "left event");
    assert.equal(a.peers, []);
    // Publishing to nobody is not an error.
    a.publish("t", bytes(1));
  });

  C("messages published right before close() still arrive", async () => {
    cluster = await make(2);
    const [a, b] = cluster.nodes as [Transport, Transport];
    b.subscribe("last");
    const got = collect(b);
    for (let i = 0; i < 100; i++) a.publish("last", bytes(i));
    await withTimeout(a.close(), 5000, "close");
    await until(() => got.length === 100, "100 messages before close");
    assert.equal(got.map((m) => m.payload[0]), Array.from({ length: 100 }, (_, i) => i));
  });

  C.run();
}
