import { Buffer } from "node:buffer";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import {
  encodeEvents,
  LARGE_PAYLOAD,
  encodeAck,
  encodeAuth,
  encodeResume,
  FRAME_ACK,
  FRAME_AUTH,
  FRAME_RESUME,
  encodeBatch,
  encodeEvent,
  encodeHello,
  FRAME_EVENT,
  FRAME_HELLO,
  parseAddress,
  parseFrame,
  PROTOCOL_VERSION,
  dialUrl,
  formatAddress,
  FrameSlab,
  IPC_PATH_MAX,
  wsMessage,
} from "../lib/transport/ws/protocol.ts";
import { loadWs } from "../lib/runtime.ts";

/** ws's frame parser (exported by ws, not declared by @types/ws). */
interface WsReceiver {
  on(event: "message", fn: (data: Uint8Array, isBinary: boolean) => void): void;
  on(event: "error", fn: (err: Error) => void): void;
  write(bytes: Uint8Array, cb: (err?: Error | null) => void): void;
}
const { Receiver } = (await loadWs()) as unknown as {
  Receiver: new (o: { isServer: boolean; binaryType: string; maxPayload: number }) => WsReceiver;
};

const P = suite("protocol");

P("HELLO round-trips; its bytes are the documented CBOR array", () => {
  const session = "s".repeat(8);
  const nonce = "n".repeat(16);
  const bytes = encodeHello(3, ["a"], session, nonce);
  // [0, 1, 3, ["a"], "ssssssss", "nnnnnnnnnnnnnnnn"]
  assert.equal(
    [...bytes],
    [0x86, 0x00, PROTOCOL_VERSION, 0x03, 0x81, 0x61, 0x61, 0x68, ...Array(8).fill(0x73), 0x70, ...Array(16).fill(0x6e)],
  );
  assert.equal(parseFrame(bytes), { kind: FRAME_HELLO, version: PROTOCOL_VERSION, nodeId: 3, labels: ["a"], session, nonce });
});

P("ACK, AUTH and RESUME round-trip", () => {
  assert.equal(parseFrame(encodeAck(9)), { kind: FRAME_ACK, seq: 9 });
  const mac = new Uint8Array(32).fill(7);
  assert.equal(parseFrame(encodeAuth(mac)), { kind: FRAME_AUTH, mac });
  assert.equal(parseFrame(encodeResume("abcdefgh", 4)), { kind: FRAME_RESUME, session: "abcdefgh", seq: 4 });
  assert.match(parseFrame(encodeAuth(new Uint8Array(3))) as string, /32 bytes/);
});

P("a HELLO of another protocol version parses as such, whatever its layout", () => {
  const f = parseFrame(new Uint8Array([0x82, 0x00, 0x09]));
  assert.equal((f as { version: number }).version, 9);
});

P("EVENT carries seq, sender, topic and the payload bytes", () => {
  const f = parseFrame(encodeEvent(7, 2, "task.x", new Uint8Array([1, 2])));
  assert.equal(f, { kind: FRAME_EVENT, seq: 7, from: 2, items: ["task.x", new Uint8Array([1, 2])] });
  // Hand-built: [1, 1, 0, "t", h'09']
  const hand = new Uint8Array([0x85, 0x01, 0x01, 0x00, 0x61, 0x74, 0x41, 0x09]);
  assert.equal(parseFrame(hand), { kind: FRAME_EVENT, seq: 1, from: 0, items: ["t", new Uint8Array([9])] });
});

P("topics decode right however often they repeat, also past the decoder's memory of recent ones", () => {
  // 40 topics of equal and different lengths, some differing in one byte, some not ASCII.
  const topics = Array.from({ length: 40 }, (_, i) => (i % 5 === 4 ? `tâche.${i}` : `task.t${String(i).padStart(2, "0")}`));
  const frames = topics.map((t, i) => Buffer.from(encodeEvents(i + 1, 3, [t, new Uint8Array([i])]) as Uint8Array));
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < frames.length; i++) {
      const k = round === 1 ? frames.length - 1 - i : i;
      const f = parseFrame(frames[k]!);
      assert.ok(typeof f !== "string" && f.kind === FRAME_EVENT, String(f));
      assert.is((f as { items: unknown[] }).items[0], topics[k]);
    }
  }
  // A frame whose topic bytes are then overwritten: the remembered topic is a copy, not a view.
  const b = Buffer.from(encodeEvents(1, 3, ["task.zz", new Uint8Array([1])]) as Uint8Array);
  assert.is((parseFrame(b) as { items: unknown[] }).items[0], "task.zz");
  b[b.indexOf("zz")] = "y".charCodeAt(0);
  assert.is((parseFrame(b) as { items: unknown[] }).items[0], "task.yz");
  assert.is((parseFrame(Buffer.from(encodeEvents(1, 3, ["task.zz", new Uint8Array([1])]) as Uint8Array)) as { items: unknown[] }).items[0], "task.zz");
});

P("encodeEvents() writes the same bytes as cbor-x; a large single payload is split off, not copied", () => {
  const items = ["task.a", new Uint8Array([1, 2]), "b", new Uint8Array(300)];
  assert.equal([...(encodeEvents(70000, 3, items) as Uint8Array)], [...encodeBatch(70000, 3, items)]);
  assert.equal([...(encodeEvents(1, 0, ["t", new Uint8Array([9])]) as Uint8Array)], [...encodeEvent(1, 0, "t", new Uint8Array([9]))]);
  const big = new Uint8Array(LARGE_PAYLOAD + 1).fill(5);
  const parts = encodeEvents(2, 1, ["big", big]);
  assert.ok(Array.isArray(parts));
  const [head, payload] = parts as [Uint8Array, Uint8Array];
  assert.is(payload, big);
  const whole = new Uint8Array(head.length + payload.length);
  whole.set(head);
  whole.set(payload, head.length);
  // The head is padded (longer integer encodings) to a multiple of 8 bytes, so the payload lands aligned.
  assert.is(head.length % 8, 0);
  const f = parseFrame(whole) as unknown as { seq: number; from: number; items: [string, Uint8Array] };
  assert.equal([f.seq, f.from, f.items[0], f.items[1].byteLength], [2, 1, "big", big.byteLength]);
  assert.is(f.items[1].byteOffset % 8, 0);
  for (const [seq, topic] of [[1, "t"], [70000, "task.trajectory"], [2 ** 40, "x".repeat(30)]] as const) {
    const [h] = encodeEvents(seq, 3, [topic, big]) as [Uint8Array, Uint8Array];
    assert.is(h.length % 8, 0, `${seq} ${topic}`);
  }
});

P("a message in fragments: a split EVENT's payload fragment is used as is; other splits are joined", () => {
  const big = new Uint8Array(LARGE_PAYLOAD + 8).map((_, i) => i & 0xff);
  const [head, payload] = encodeEvents(9, 2, ["task.w", big]) as [Uint8Array, Uint8Array];
  const f = parseFrame([head, payload]) as unknown as { kind: number; seq: number; from: number; items: [string, Uint8Array] };
  assert.equal([f.kind, f.seq, f.from, f.items[0]], [FRAME_EVENT, 9, 2, "task.w"]);
  assert.is(f.items[1].buffer, big.buffer, "the payload fragment is not copied");
  // Split anywhere else (as a proxy could re-fragment): joined, same result.
  const whole = new Uint8Array(head.length + payload.length);
  whole.set(head);
  whole.set(payload, head.length);
  for (const cuts of [[3], [head.length + 5], [1, head.length, head.length + 100]]) {
    const frags: Uint8Array[] = [];
    let at = 0;
    for (const c of [...cuts, whole.length]) {
      frags.push(whole.subarray(at, c));
      at = c;
    }
    const g = parseFrame(frags) as unknown as { seq: number; items: [string, Uint8Array] };
    assert.is(g.seq, 9, `cuts ${cuts}`);
    assert.equal([...g.items[1].subarray(0, 300)], [...big.subarray(0, 300)], `cuts ${cuts}`);
    assert.is(g.items[1].byteLength, big.byteLength);
  }
  // A head whose payload length does not match its fragment is joined and then refused.
  const wrong = parseFrame([head, payload.subarray(1)]);
  assert.type(wrong, "string");
  // A BATCH in fragments is joined and parsed.
  const batch = encodeEvents(4, 1, ["a", new Uint8Array([1]), "b", new Uint8Array([2])]) as Uint8Array;
  const b = parseFrame([batch.subarray(0, 5), batch.subarray(5)]) as unknown as { seq: number; items: unknown[] };
  assert.equal([b.seq, b.items.length], [4, 4]);
});

P("BATCH parses into topic/payload pairs", () => {
  const f = parseFrame(encodeBatch(5, 1, ["a", new Uint8Array([1]), "b", new Uint8Array([2])]));
  assert.equal(f, { kind: FRAME_EVENT, seq: 5, from: 1, items: ["a", new Uint8Array([1]), "b", new Uint8Array([2])] });
});

P("bad frames are reported, never thrown", () => {
  const cases: Array<[number[], RegExp]> = [
    [[0xff], /malformed CBOR/],
    [[0x85, 0x01], /ends early/], // truncated
    [[0x85, 0x01, 0x01, 0x00, 0x61, 0x74, 0x45, 0x01], /ends early/], // payload longer than the frame
    [[0x85, 0x01, 0x01, 0x00, 0x62, 0xc3, 0x28, 0x40], /UTF-8/],
    [[0x05], /not a CBOR array/],
    [[0x80], /not a CBOR array/],
    [[0x81, 0x09], /unknown frame kind 9/],
    [[0x83, 0x00, 0x01, 0x02], /HELLO must have 6 items/],
    [[0x86, 0x00, 0x01, 0x20, 0x80, 0x60, 0x60], /node id/], // node id -1
    [[0x86, 0x00, 0x01, 0x01, 0x81, 0x01, 0x60, 0x60], /labels/],
    [[0x86, 0x00, 0x01, 0x01, 0x80, 0x61, 0x73, 0x60], /session/],
    [[0x82, 0x03, 0x20], /ACK/],
    [[0x82, 0x05, 0x01], /RESUME/],
    [[0x85, 0x01, 0x00, 0x00, 0x61, 0x74, 0x40], /seq/], // seq 0
    [[0x85, 0x01, 0x01, 0x00, 0x01, 0x40], /topic/],
    [[0x85, 0x01, 0x01, 0x00, 0x61, 0x74, 0x01], /payload/],
    [[0x84, 0x02, 0x01, 0x00, 0x81, 0x61, 0x74], /pairs/],
  ];
  for (const [bytes, re] of cases) {
    const r = parseFrame(new Uint8Array(bytes));
    assert.type(r, "string", `bytes ${bytes}`);
    assert.match(r as string, re);
  }
});

P("parseAddress() accepts tcp, ws, wss, ipc and IPv6; rejects the rest with TypeError", () => {
  assert.equal(parseAddress("tcp://127.0.0.1:50515"), { kind: "tcp", host: "127.0.0.1", port: 50515, tls: false });
  assert.equal(parseAddress("ws://host-1:80"), { kind: "tcp", host: "host-1", port: 80, tls: false });
  assert.equal(parseAddress("wss://h:443"), { kind: "tcp", host: "h", port: 443, tls: true });
  assert.equal(parseAddress("tcp://[::1]:9"), { kind: "tcp", host: "::1", port: 9, tls: false });
  assert.equal(parseAddress("ipc:///tmp/x.ipc"), { kind: "ipc", path: "/tmp/x.ipc" });
  assert.equal(parseAddress("tcp://h:0", { listen: true }), { kind: "tcp", host: "h", port: 0, tls: false });
  for (const bad of ["", "h:1", "tcp://h", "tcp://h:0", "tcp://h:70000", "http://h:1", "ipc://rel.ipc"]) {
    assert.throws(() => parseAddress(bad), (e: unknown) => e instanceof TypeError && (e as Error).message.includes(`"${bad}"`), bad);
  }
});

P("parseAddress() refuses an ipc path the kernel would cut short (longer than IPC_PATH_MAX bytes)", () => {
  const fits = "/" + "d".repeat(IPC_PATH_MAX - 1);
  assert.equal(parseAddress(`ipc://${fits}`), { kind: "ipc", path: fits });
  // Counted in bytes: "é" is two.
  for (const long of [fits + "x", "/" + "é".repeat(Math.ceil(IPC_PATH_MAX / 2))]) {
    assert.throws(
      () => parseAddress(`ipc://${long}`),
      (e: unknown) => e instanceof TypeError && new RegExp(`is ${Buffer.byteLength(long)} bytes.*limited to ${IPC_PATH_MAX} bytes`).test((e as Error).message),
    );
  }
});

P("dialUrl() and formatAddress()", () => {
  assert.is(dialUrl(parseAddress("tcp://[::1]:9")), "ws://[::1]:9/");
  assert.is(dialUrl(parseAddress("ipc:///tmp/a.ipc")), "ws+unix:///tmp/a.ipc:/");
  assert.is(formatAddress(parseAddress("ws://h:1")), "tcp://h:1");
  assert.is(formatAddress(parseAddress("wss://h:1")), "wss://h:1");
});

/** What ws's own parser makes of `bytes`, as the server side (which requires masked frames) or the client side. */
function wsParse(bytes: Uint8Array, isServer: boolean): Promise<{ messages: Uint8Array[]; error: string | undefined }> {
  const receiver = new Receiver({ isServer, binaryType: "nodebuffer", maxPayload: 0 });
  const messages: Uint8Array[] = [];
  receiver.on("message", (data: Uint8Array, isBinary: boolean) => {
    assert.ok(isBinary);
    messages.push(data);
  });
  receiver.on("error", () => {}); // also given to the write's callback
  return new Promise((resolve) => receiver.write(bytes, (err) => resolve({ messages, error: err?.message })));
}

P("wsMessage() wraps a frame in a WebSocket message that ws parses, in place, for either side", async () => {
  const slab = new FrameSlab();
  // Sizes for each length form: 7-bit, 16-bit, 64-bit (a batch larger than 64 KiB).
  const frames = [
    encodeEvents(1, 3, ["t", new Uint8Array(10).fill(1)], slab),
    encodeEvents(2, 3, ["t", new Uint8Array(300).fill(2)], slab),
    encodeEvents(3, 3, ["t", new Uint8Array(3000).fill(3), "u", new Uint8Array(3000).fill(4)], slab),
    encodeEvents(4, 3, Array.from({ length: 40 }, (_, i) => [`t${i}`, new Uint8Array(2000).fill(i)]).flat()),
  ] as Uint8Array[];
  assert.ok(frames[3]!.byteLength > 0x10000);
  for (const masked of [true, false]) {
    const copies = frames.map((f) => Uint8Array.from(f));
    for (const [i, frame] of frames.entries()) {
      const msg = wsMessage(frame, masked);
      assert.is(msg.buffer, frame.buffer, "the header goes into the room before the frame: no copy");
      assert.is(msg.byteOffset + msg.byteLength, frame.byteOffset + frame.byteLength);
      const { messages, error } = await wsParse(msg, masked);
      assert.is(error, undefined, `frame ${i}, masked ${masked}`);
      assert.is(messages.length, 1);
      assert.equal(new Uint8Array(messages[0]!), copies[i], `frame ${i}, masked ${masked}`);
      // ws refuses a client frame without the mask bit, and a server frame with it.
      assert.match((await wsParse(msg, !masked)).error ?? "", /MASK must be/, `frame ${i}, masked ${masked}, wrong side`);
    }
    // Writing one frame's header left the other frames of the slab as they were.
    for (const [i, frame] of frames.entries()) assert.equal(Uint8Array.from(frame), copies[i], `frame ${i} after all headers`);
  }
});

P.run();
