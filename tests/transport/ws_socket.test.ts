// The WebSocket layer under the mesh (lib/transport/ws/socket.ts), checked against RFC 6455 with a
// hand-made client: npm `ws` on Node, ditask's own reader and writer over Deno.Conn on Deno. The
// same expectations on both, so the two stay interchangeable (a mesh can mix them).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Buffer } from "node:buffer";
import { createHash, randomBytes } from "node:crypto";
import { connect as netConnect, createServer, type Server, type Socket } from "node:net";
import { loadSocketKit } from "../../lib/runtime.ts";
import type { MeshServer, MeshSocket } from "../../lib/transport/ws/socket.ts";
import { encodeEvents, FrameSlab, parseAddress } from "../../lib/transport/ws/protocol.ts";
import { until, withTimeout } from "../_helpers.ts";

const W = suite("WebSocket layer (RFC 6455)");
const kit = await loadSocketKit();
const cleanups: Array<() => unknown> = [];
W.after.each(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Received {
  fragments: Uint8Array[];
  binary: boolean;
}

/** A kit server on a free port that records every socket, message and close. */
async function serve(maxPayload = 64 * 1024 * 1024) {
  const sockets: MeshSocket[] = [];
  const messages: Received[] = [];
  const closes: Array<{ code: number; reason: string }> = [];
  const errors: Error[] = [];
  const server: MeshServer = await kit.listen(parseAddress("tcp://127.0.0.1:0", { listen: true }), {
    maxPayload,
    timeout: 5000,
    admit: () => true,
    accept(socket) {
      sockets.push(socket);
      socket.on("message", (fragments, binary) => messages.push({ fragments, binary }));
      socket.on("close", (code, reason) => closes.push({ code, reason }));
      socket.on("error", (err) => errors.push(err));
      socket.start();
    },
    fail: (err) => errors.push(err),
    note: () => {},
  });
  cleanups.push(() => server.close());
  for (const s of sockets) cleanups.push(() => s.terminate());
  return { server, sockets, messages, closes, errors, address: `tcp://127.0.0.1:${server.port}` };
}

const join = (parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));

/** A client frame: FIN and opcode in `first`, masked with `key` (RFC 6455 §5.2). */
function frame(first: number, payload: Uint8Array, key: Uint8Array | null = randomBytes(4), lenOverride?: number): Uint8Array {
  const n = lenOverride ?? payload.byteLength;
  const head: number[] = [first];
  const m = key ? 0x80 : 0;
  if (n < 126) head.push(m | n);
  else if (n < 0x10000) head.push(m | 126, n >> 8, n & 255);
  else {
    head.push(m | 127);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(n));
    head.push(...b);
  }
  const body = new Uint8Array(payload);
  if (key) {
    head.push(...key);
    for (let i = 0; i < body.length; i++) body[i]! ^= key[i & 3]!;
  }
  return join([new Uint8Array(head), body]);
}

interface ServerFrame {
  op: number;
  payload: Uint8Array;
}

/** A raw TCP client that upgrades by hand and parses the server's frames. */
class RawWs {
  readonly frames: ServerFrame[] = [];
  ended = false;
  #buf = new Uint8Array(0);
  readonly sock: Socket;
  private constructor(sock: Socket) {
    this.sock = sock;
  }

  static open(address: string, request?: string): Promise<{ client: RawWs; status: string }> {
    const { port } = parseAddress(address) as { port: number };
    return new Promise((resolve, reject) => {
      const sock = netConnect(port, "127.0.0.1");
      const client = new RawWs(sock);
      cleanups.push(() => sock.destroy());
      let head = "";
      let upgraded = false;
      const key = randomBytes(16).toString("base64");
      sock.on("connect", () =>
        sock.write(request ?? `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`)
      );
      sock.on("error", reject);
      sock.on("end", () => {
        client.ended = true;
        if (!upgraded) resolve({ client, status: head.split("\r\n")[0] ?? "" });
      });
      sock.on("data", (d: Buffer) => {
        if (upgraded) return client.#take(d);
        head += d.toString("latin1");
        const end = head.indexOf("\r\n\r\n");
        if (end < 0) return;
        const status = head.split("\r\n")[0]!;
        if (!status.startsWith("HTTP/1.1 101")) return;
        upgraded = true;
        const accept = /sec-websocket-accept: *(\S+)/i.exec(head)?.[1];
        const want = createHash("sha1").update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
        if (accept !== want) reject(new Error(`bad Sec-WebSocket-Accept ${accept}`));
        client.#take(Buffer.from(head.slice(end + 4), "latin1"));
        resolve({ client, status });
      });
    });
  }

  #take(d: Uint8Array): void {
    this.#buf = join([this.#buf, d]);
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) return;
      let len = b[1]! & 0x7f;
      let at = 2;
      if (b[1]! & 0x80) throw new Error("the server masked a frame");
      if (len === 126) {
        if (b.length < 4) return;
        len = (b[2]! << 8) | b[3]!;
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(Buffer.from(b.subarray(2, 10)).readBigUInt64BE());
        at = 10;
      }
      if (b.length < at + len) return;
      this.frames.push({ op: b[0]! & 0x0f, payload: b.slice(at, at + len) });
      this.#buf = b.slice(at + len);
    }
  }

  send(bytes: Uint8Array): void {
    this.sock.write(bytes);
  }

  /** The first close frame's code and reason. */
  async closeFrame(): Promise<{ code: number; reason: string }> {
    await until(() => this.frames.some((f) => f.op === 8) || this.ended, "a close frame", 5000);
    const f = this.frames.find((f) => f.op === 8);
    if (!f) throw new Error("the server ended the connection without a close frame");
    return { code: f.payload.length >= 2 ? (f.payload[0]! << 8) | f.payload[1]! : 1005, reason: Buffer.from(f.payload.subarray(2)).toString() };
  }
}

async function connected(maxPayload?: number) {
  const s = await serve(maxPayload);
  const { client } = await RawWs.open(s.address);
  await until(() => s.sockets.length === 1, "the server accepted the connection");
  return { ...s, client };
}

W("a masked message in fragments, with a ping between them, arrives whole; the ping is answered", async () => {
  const { client, messages } = await connected();
  const data = randomBytes(3000);
  client.send(frame(0x02, data.subarray(0, 1000))); // binary, not FIN
  client.send(frame(0x89, Buffer.from("are you there"))); // ping
  client.send(frame(0x00, data.subarray(1000, 2000))); // continuation
  client.send(frame(0x80, data.subarray(2000))); // continuation, FIN
  // A text message split inside a two-byte UTF-8 sequence.
  const text = Buffer.from("héllo wörld");
  client.send(frame(0x01, text.subarray(0, 2)));
  client.send(frame(0x80, text.subarray(2)));
  await until(() => messages.length === 2, "both messages");
  assert.equal(join(messages[0]!.fragments), new Uint8Array(data));
  assert.is(messages[0]!.binary, true);
  assert.is(Buffer.from(join(messages[1]!.fragments)).toString(), "héllo wörld");
  assert.is(messages[1]!.binary, false);
  await until(() => client.frames.some((f) => f.op === 10), "a pong");
  const pong = client.frames.find((f) => f.op === 10)!;
  assert.is(Buffer.from(pong.payload).toString(), "are you there");
});

W("messages cut into pieces of any size arrive intact, and stay intact while later ones arrive", async () => {
  const { client, messages } = await connected();
  // Small and large messages (large ones are read straight into a buffer of their own on Deno),
  // one fragmented with a large first fragment; the bytes go out in pieces of 1 byte to 40 KiB.
  const sizes = [0, 1, 125, 126, 65535, 65536, 16 * 1024, 70_000, 1 << 20, 300, 5, 2000, 9000];
  const sent: Uint8Array[] = [];
  const wire: Uint8Array[] = [];
  for (let i = 0; i < 200; i++) {
    const n = i < sizes.length ? sizes[i]! : (i * 7919) % 3000;
    const data = new Uint8Array(randomBytes(n));
    sent.push(data);
    wire.push(frame(0x82, data, i % 3 === 0 ? new Uint8Array(4) : randomBytes(4)));
  }
  const big = new Uint8Array(randomBytes(20_000));
  const tail = new Uint8Array(randomBytes(50));
  sent.push(join([big, tail]));
  wire.push(frame(0x02, big), frame(0x80, tail));
  for (let i = 0; i < 50; i++) {
    const data = new Uint8Array(randomBytes(100 + i));
    sent.push(data);
    wire.push(frame(0x82, data));
  }
  const bytes = join(wire);
  let seed = 7;
  for (let at = 0; at < bytes.length;) {
    seed = (seed * 1103515245 + 12345) >>> 0;
    const n = 1 + (seed % (seed & 1 ? 40 * 1024 : 64));
    client.send(bytes.subarray(at, at + n));
    at += n;
  }
  await until(() => messages.length === sent.length, `all ${sent.length} messages`, 20_000);
  // Checked only now: a view delivered early must not have been overwritten by later reads.
  for (let i = 0; i < sent.length; i++) {
    const got = join(messages[i]!.fragments);
    if (Buffer.compare(got, sent[i]!) !== 0) assert.unreachable(`message ${i} (${sent[i]!.length} bytes) differs`);
  }
});

W("a large first fragment stays intact while control frames arrive before the message ends", async () => {
  const { client, messages } = await connected();
  const first = new Uint8Array(randomBytes(20_000));
  const last = new Uint8Array(randomBytes(10));
  // The fragment and a ping, then (once the pong shows they were read) more pings: were the
  // fragment a view of a read buffer that is reused, they would overwrite it.
  client.send(join([frame(0x02, first), frame(0x89, new Uint8Array(1))]));
  await until(() => client.frames.filter((f) => f.op === 10).length === 1, "the first pong");
  for (let i = 0; i < 20; i++) client.send(frame(0x89, new Uint8Array(125).fill(i)));
  await until(() => client.frames.filter((f) => f.op === 10).length === 21, "every pong");
  client.send(frame(0x80, last));
  await until(() => messages.length === 1, "the message");
  assert.equal(join(messages[0]!.fragments), join([first, last]));
});

W("the closing handshake: the code and reason reach the other side, and it answers with the same code", async () => {
  // Client first.
  const a = await connected();
  a.client.send(frame(0x88, join([new Uint8Array([0x10, 0xe1]), Buffer.from("bye")]))); // 4321
  assert.equal(await a.client.closeFrame(), { code: 4321, reason: "bye" });
  await until(() => a.closes.length === 1, "the server's close event");
  assert.equal(a.closes[0], { code: 4321, reason: "bye" });
  await until(() => a.client.ended, "the server ended the connection");
  assert.is(a.sockets[0]!.readyState, 3);

  // Server first: the client answers, then both ends see the code.
  const b = await connected();
  b.sockets[0]!.close(4002, "version");
  assert.equal(await b.client.closeFrame(), { code: 4002, reason: "version" });
  assert.is(b.sockets[0]!.readyState, 2);
  b.client.send(frame(0x88, new Uint8Array([0x0f, 0xa2])));
  b.client.sock.end();
  await until(() => b.closes.length === 1, "the server's close event");
  assert.is(b.closes[0]!.code, 4002);

  // An empty close frame (no status, 1005) is answered with an empty one.
  const d = await connected();
  d.client.send(frame(0x88, new Uint8Array(0)));
  assert.equal(await d.client.closeFrame(), { code: 1005, reason: "" });
  await until(() => d.closes.length === 1, "the server's close event");
  assert.is(d.closes[0]!.code, 1005);

  // A reason longer than a close frame holds is cut at a character boundary (valid UTF-8).
  const e = await connected();
  e.sockets[0]!.close(4000, "é".repeat(100));
  assert.equal(await e.client.closeFrame(), { code: 4000, reason: "é".repeat(61) });

  // A connection that just drops: 1006.
  const c = await connected();
  c.client.sock.destroy();
  await until(() => c.closes.length === 1, "the server's close event");
  assert.is(c.closes[0]!.code, 1006);
});

W("frames that break the protocol close the connection with 1002, 1007 or 1009", async () => {
  const cases: Array<[string, Uint8Array, number]> = [
    ["RSV1 without an extension", frame(0xc2, new Uint8Array(3)), 1002],
    ["an unmasked client frame", frame(0x82, new Uint8Array(3), null), 1002],
    ["a continuation with nothing to continue", frame(0x80, new Uint8Array(3)), 1002],
    ["opcode 3", frame(0x83, new Uint8Array(3)), 1002],
    ["a ping of 126 bytes", frame(0x89, new Uint8Array(126)), 1002],
    ["a fragmented ping", frame(0x09, new Uint8Array(3)), 1002],
    ["a new message inside a fragmented one", join([frame(0x02, new Uint8Array(3)), frame(0x82, new Uint8Array(3))]), 1002],
    ["a close frame with code 1005", frame(0x88, new Uint8Array([0x03, 0xed])), 1002],
    ["a close frame of one byte", frame(0x88, new Uint8Array([3])), 1002],
    ["invalid UTF-8 in a text message", frame(0x81, new Uint8Array([0xc3, 0x28])), 1007],
    ["a message over maxPayload", frame(0x82, new Uint8Array(1001)), 1009],
    ["fragments that add up to more than maxPayload", join([frame(0x02, new Uint8Array(600)), frame(0x80, new Uint8Array(600))]), 1009],
    ["a header declaring 2^63 bytes", frame(0x82, new Uint8Array(0), randomBytes(4), 2 ** 63), 1009],
  ];
  for (const [what, bytes, code] of cases) {
    const { client, closes, errors } = await connected(1000);
    client.send(bytes);
    const got = await withTimeout(client.closeFrame(), 5000, what);
    assert.is(got.code, code, what);
    // The client does not answer: the server's own close code is 1006 (no close frame received).
    await until(() => closes.length === 1, `${what}: the server's close event`);
    assert.is(closes[0]!.code, 1006, `${what}: the server's close code`);
    assert.ok(errors.length >= 1, `${what}: an error event`);
    for (const c of cleanups.splice(0).reverse()) await c();
  }
});

W("a request that is not an upgrade gets 426; a bad upgrade request gets 400", async () => {
  const { address } = await serve();
  const plain = await RawWs.open(address, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  assert.match(plain.status, /^HTTP\/1\.1 426/);
  const badKey = await RawWs.open(address, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n");
  assert.match(badKey.status, /^HTTP\/1\.1 400/);
});

W("dial: messages, frames with headroom and fragments both ways between two kit sockets", async () => {
  const s = await serve();
  const client = await kit.dial(parseAddress(s.address), { maxPayload: 1 << 24, timeout: 5000 });
  cleanups.push(() => client.terminate());
  const got: Received[] = [];
  client.on("message", (fragments, binary) => got.push({ fragments, binary }));
  client.start();
  await until(() => s.sockets.length === 1, "accepted");
  const big = new Uint8Array(randomBytes(200_000));
  // sendFrame writes the WebSocket header into the room before the frame: one frame per sender.
  const framed = () => encodeEvents(1, 0, ["t", new Uint8Array([1, 2, 3])], new FrameSlab()) as Uint8Array;
  for (const from of [client, s.sockets[0]!]) {
    from.send(new Uint8Array([9, 9]));
    from.sendFrame(framed());
    from.send(new Uint8Array([7]), false);
    from.send(big, true);
  }
  await until(() => s.messages.length === 3 && got.length === 3, "three messages each way");
  for (const list of [s.messages, got]) {
    assert.equal(join(list[0]!.fragments), new Uint8Array([9, 9]));
    assert.equal(join(list[1]!.fragments), new Uint8Array(framed()));
    assert.is(list[2]!.fragments.length, 2, "a message sent in two fragments arrives as two");
    assert.equal(join(list[2]!.fragments), join([new Uint8Array([7]), big]));
  }
  let pongs = 0;
  client.on("pong", () => pongs++);
  client.ping();
  await until(() => pongs === 1, "the pong");
  client.close(1000, "done");
  await until(() => s.closes.length === 1, "the server saw the close");
  assert.equal(s.closes[0], { code: 1000, reason: "done" });
});

W("dial fails with a clear error: not a WebSocket server, and a server that never answers", async () => {
  const servers: Server[] = [];
  const listen = (onConn: (c: Socket) => void) =>
    new Promise<number>((resolve) => {
      const srv = createServer(onConn);
      servers.push(srv);
      srv.listen(0, "127.0.0.1", () => resolve((srv.address() as { port: number }).port));
    });
  const conns: Socket[] = [];
  cleanups.push(() => {
    for (const c of conns) c.destroy();
    return Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  });
  const http = await listen((c) => {
    conns.push(c);
    c.once("data", () => c.end("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
  });
  const silent = await listen((c) => void conns.push(c));
  const e1 = await kit.dial(parseAddress(`tcp://127.0.0.1:${http}`), { maxPayload: 1000, timeout: 5000 }).then(() => undefined, (e: Error) => e);
  assert.match(String(e1?.message), /Unexpected server response: 200/);
  const started = Date.now();
  const e2 = await kit.dial(parseAddress(`tcp://127.0.0.1:${silent}`), { maxPayload: 1000, timeout: 300 }).then(() => undefined, (e: Error) => e);
  assert.match(String(e2?.message), /handshake has timed out/);
  assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
});

W.run();
