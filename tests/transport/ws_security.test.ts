// SPEC §6 "Authentication and TLS": the shared-secret handshake (HMAC challenge-response over
// both sides' nonces) and wss, tested with real transports and with a raw `ws` client that
// breaks the handshake on purpose.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Buffer } from "node:buffer";
import { randomBytes } from "node:crypto";
import { WsMeshTransport, type WsMeshOptions } from "../../lib/transport/ws/mod.ts";
import {
  CLOSE_AUTH,
  CLOSE_DUPLICATE_NODE,
  CLOSE_POLICY,
  encodeAuth,
  encodeBatch,
  encodeEvent,
  encodeHello,
  encodeResume,
  FRAME_AUTH,
  FRAME_HELLO,
  FRAME_RESUME,
} from "../../lib/transport/ws/protocol.ts";
import type { PeerEvent, TransportMessage } from "../../lib/transport/types.ts";
import { TransportError } from "../../lib/errors.ts";
import { setLogLevel } from "../../lib/log.ts";
import { delay, freePorts, selfSignedCert, withTimeout, until as waitUntil } from "../_helpers.ts";
import { authMac, captureProxy, type CaptureProxy, containsBytes, RawClient } from "../_fixtures/sec_raw.ts";

const SECRET = `ditask-test-secret-${randomBytes(6).toString("hex")}`;
const enc = new TextEncoder();
const bytes = (...v: number[]) => new Uint8Array(v);

const S = suite("ws security");

// Everything a test opens, closed after it whatever happened.
let transports: WsMeshTransport[] = [];
let clients: RawClient[] = [];
let proxies: CaptureProxy[] = [];
let cert = "";
let key = "";

S.before(() => {
  // Refused handshakes are logged at warn on purpose; one test turns logging on to check that.
  setLogLevel("silent");
  ({ cert, key } = selfSignedCert());
});

S.after.each(async () => {
  for (const c of clients) c.terminate();
  await Promise.all(transports.map((t) => withTimeout(t.close(), 5000, `close node ${t.nodeId}`)));
  await Promise.all(proxies.map((p) => p.close()));
  transports = [];
  clients = [];
  proxies = [];
});

S.after(() => {
  setLogLevel("warn");
});

function node(options: WsMeshOptions): WsMeshTransport {
  const t = new WsMeshTransport({ connectTimeout: 5000, ...options });
  transports.push(t);
  return t;
}

async function raw(address: string, options: { ca?: string } = {}): Promise<RawClient> {
  const c = await RawClient.open(address, options);
  clients.push(c);
  return c;
}

function collect(t: WsMeshTransport): TransportMessage[] {
  const got: TransportMessage[] = [];
  t.onMessage((m) => got.push({ topic: m.topic, payload: m.payload.slice(), from: m.from }));
  return got;
}

function until(cond: () => boolean, label: string, ms = 5000): Promise<void> {
  return waitUntil(cond, label, ms);
}

/** A listener (node 0) and a dialer (node 1) with these options, both opened. */
async function pair(a: Partial<WsMeshOptions>, b: Partial<WsMeshOptions>): Promise<[WsMeshTransport, WsMeshTransport]> {
  const na = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", expect: [1], ...a });
  await na.bind();
  const nb = node({ nodeId: 1, dial: [na.address!], ...b });
  await withTimeout(Promise.all([na.open(), nb.open()]), 8000, "both nodes open");
  return [na, nb];
}

/** One event each way arrives, from the right sender. */
async function exchange(a: WsMeshTransport, b: WsMeshTransport): Promise<void> {
  const ga = collect(a);
  const gb = collect(b);
  a.publish("sec.t", bytes(1, 2, 3));
  b.publish("sec.t", bytes(4, 5));
  await until(() => ga.length === 1 && gb.length === 1, "one event each way");
  assert.equal(gb[0], { topic: "sec.t", payload: bytes(1, 2, 3), from: a.nodeId });
  assert.equal(ga[0], { topic: "sec.t", payload: bytes(4, 5), from: b.nodeId });
}

/** A random 8-64 character session and a 16-64 character nonce, as a HELLO needs them. */
const session = () => randomBytes(8).toString("hex");
const nonce = () => randomBytes(16).toString("hex");

/** What a listener saw: messages and peer events. */
function watch(t: WsMeshTransport): { got: TransportMessage[]; peers: PeerEvent[] } {
  const peers: PeerEvent[] = [];
  t.onPeer((e) => peers.push(e));
  return { got: collect(t), peers };
}

// --- node ids -------------------------------------------------------------------------------

S("ids: a peer claiming this node's own id, or the id of a connected peer, is closed with 4001", async () => {
  const [a] = await pair({}, {});
  const seen = watch(a);
  // This node's own id.
  const own = await raw(a.address!);
  own.send(encodeHello(0, [], session(), nonce()));
  assert.is((await own.waitClose()).code, CLOSE_DUPLICATE_NODE);
  // The id of node 1, which is connected (another session: not a reconnect of node 1).
  const twin = await raw(a.address!);
  twin.send(encodeHello(1, [], session(), nonce()));
  twin.send(encodeResume("anything", 0));
  twin.send(encodeEvent(1, 1, "sec.spoof", bytes(6)));
  assert.is((await twin.waitClose()).code, CLOSE_DUPLICATE_NODE);
  assert.equal(seen.got, [], "nothing from the impostors was delivered");
  assert.equal(seen.peers, [], "node 1 did not leave or join again");
  assert.equal(a.peers, [1]);
});

S("ids: two nodes that dial each other at once keep one link; each event arrives once", async () => {
  const [pa, pb] = await freePorts(2);
  const a = node({ nodeId: 0, listen: `tcp://127.0.0.1:${pa}`, dial: [`tcp://127.0.0.1:${pb}`] });
  const b = node({ nodeId: 1, listen: `tcp://127.0.0.1:${pb}`, dial: [`tcp://127.0.0.1:${pa}`] });
  await Promise.all([a.bind(), b.bind()]);
  await withTimeout(Promise.all([a.open(), b.open()]), 8000, "both open");
  assert.equal([a.peers, b.peers], [[1], [0]]);
  await exchange(a, b);
  // More events after the duplicate link was closed: still exactly once each.
  const gb = collect(b);
  for (let i = 0; i < 100; i++) a.publish("sec.n", bytes(i));
  await until(() => gb.length >= 100, "100 events");
  await delay(50);
  assert.equal(gb.map((m) => m.payload[0]), Array.from({ length: 100 }, (_, i) => i));
});

// --- shared secret --------------------------------------------------------------------------

S("secret: two nodes with the same secret connect and deliver both ways", async () => {
  const [a, b] = await pair({ secret: SECRET }, { secret: SECRET });
  assert.equal(a.peers, [1]);
  assert.equal(b.peers, [0]);
  await exchange(a, b);
});

S("secret: mismatched secrets: the dialer's open() rejects with TransportError 4003 and nothing is delivered", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await a.bind();
  const seen = watch(a);
  const b = node({ nodeId: 1, dial: [a.address!], secret: `${SECRET}-other` });
  // Publishing before and while the handshake runs must not leak anything either.
  b.publish("sec.early", bytes(1));
  const err = await withTimeout(b.open().then(() => undefined, (e: unknown) => e), 6000, "dialer open() settles");
  assert.ok(err instanceof TransportError, `expected a TransportError, got ${String(err)}`);
  assert.is((err as TransportError).closeCode, CLOSE_AUTH);
  b.publish("sec.late", bytes(2));
  await delay(100);
  assert.equal(seen.got, []);
  assert.equal(seen.peers, []);
  assert.equal(a.peers, []);
});

S("secret: a raw client that knows no secret is closed (4003) after HELLO + RESUME, logged, and none of its events arrive", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await a.bind();
  const seen = watch(a);
  const c = await raw(a.address!);
  const hello = await c.next(FRAME_HELLO);
  assert.is(hello.nodeId, 0);
  // Capture the node's log for this refusal.
  const logged: string[] = [];
  const origError = console.error;
  console.error = (...args: unknown[]) => void logged.push(args.map(String).join(" "));
  setLogLevel("warn");
  try {
    c.send(encodeHello(7, [], session(), nonce()));
    // The accepting node proves nothing until the dialer has proven itself (so its proof cannot
    // be relayed); no AUTH from us: claim to be ready, and pipeline events right behind.
    c.send(encodeResume(hello.session, 0));
    c.send(encodeEvent(1, 7, "sec.evil", bytes(6, 6, 6)));
    c.send(encodeBatch(2, 7, ["sec.evil", bytes(6), "sec.evil", bytes(7)]));
    const closed = await c.waitClose();
    assert.ok([CLOSE_AUTH, CLOSE_POLICY].includes(closed.code), `close code ${closed.code}`);
    assert.is(closed.code, CLOSE_AUTH, "RESUME without AUTH is an authentication failure");
  } finally {
    console.error = origError;
    setLogLevel("silent");
  }
  await delay(50);
  assert.equal(seen.got, []);
  assert.equal(seen.peers, []);
  assert.ok(
    logged.some((l) => /closing a connection/.test(l) && /authenticat/.test(l)),
    `the refusal is logged; got ${JSON.stringify(logged)}`,
  );
  // No RESUME was sent to a client that never proved the secret.
  assert.not.ok(c.frames.some((f) => typeof f !== "string" && f.kind === FRAME_RESUME));
});

S("secret: a raw client that sends an EVENT right after HELLO (no AUTH) is closed (1008) and the event is dropped", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await a.bind();
  const seen = watch(a);
  const c = await raw(a.address!);
  c.send(encodeHello(7, [], session(), nonce()));
  c.send(encodeEvent(1, 7, "sec.evil", bytes(1)));
  c.send(encodeResume("anything", 0));
  const closed = await c.waitClose();
  assert.ok([CLOSE_AUTH, CLOSE_POLICY].includes(closed.code), `close code ${closed.code}`);
  assert.is(closed.code, CLOSE_POLICY, "an event frame before the handshake is a policy violation");
  await delay(50);
  assert.equal(seen.got, []);
  assert.equal(seen.peers, []);
});

S("secret: a wrong secret is refused with 4003", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await a.bind();
  const seen = watch(a);
  const c = await raw(a.address!);
  const theirs = await c.next(FRAME_HELLO);
  const mine = nonce();
  c.send(encodeHello(7, [], session(), mine));
  c.send(encodeAuth(authMac(`${SECRET}x`, mine, theirs.nonce, 7, 0)));
  c.send(encodeResume(theirs.session, 0));
  c.send(encodeEvent(1, 7, "sec.evil", bytes(1)));
  const closed = await c.waitClose();
  assert.is(closed.code, CLOSE_AUTH);
  await delay(50);
  assert.equal(seen.got, []);
  assert.equal(seen.peers, []);
  assert.not.ok(c.frames.some((f) => typeof f !== "string" && f.kind === FRAME_RESUME));
});

S("secret: a replayed AUTH from an earlier connection is refused with 4003", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await a.bind();
  const seen = watch(a);
  // Connection 1: a legitimate handshake (the test knows the secret). Its HELLO and AUTH are
  // what an eavesdropper would record.
  const c1 = await raw(a.address!);
  const h1 = await c1.next(FRAME_HELLO);
  const myNonce = nonce();
  const recordedHello = encodeHello(7, [], session(), myNonce);
  c1.send(recordedHello);
  const recordedAuth = encodeAuth(authMac(SECRET, myNonce, h1.nonce, 7, 0));
  c1.send(recordedAuth);
  // The node accepts that proof (so the recorded AUTH was valid): it answers with RESUME.
  const resume = await c1.next(FRAME_RESUME);
  assert.is(resume.seq, 0);
  await c1.close();
  // Connection 2: replay both recorded frames byte for byte.
  const c2 = await raw(a.address!);
  const h2 = await c2.next(FRAME_HELLO);
  assert.is.not(h2.nonce, h1.nonce, "each connection gets a fresh nonce");
  c2.send(recordedHello);
  c2.send(recordedAuth);
  c2.send(encodeResume(h2.session, 0));
  c2.send(encodeEvent(1, 7, "sec.replayed", bytes(1)));
  const closed = await c2.waitClose();
  assert.is(closed.code, CLOSE_AUTH);
  await delay(50);
  assert.equal(seen.got, []);
  assert.not.ok(c2.frames.some((f) => typeof f !== "string" && f.kind === FRAME_RESUME));
  assert.not.ok(seen.peers.some((e) => e.type === "joined"));
});

S("secret: the secret never appears in any byte a node sends", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", expect: [1], secret: SECRET });
  await a.bind();
  const proxy = await captureProxy(a.address!);
  proxies.push(proxy);
  // An honest node through the proxy: its whole conversation with `a` is captured.
  const b = node({ nodeId: 1, dial: [proxy.address], secret: SECRET });
  await withTimeout(Promise.all([a.open(), b.open()]), 8000, "open through the proxy");
  await exchange(a, b);
  // Raw clients: one without a secret, one with a wrong secret, one with the right one.
  const seenByRaw: Uint8Array[] = [];
  for (const mode of ["none", "wrong", "right"] as const) {
    const c = await raw(proxy.address);
    const theirs = await c.next(FRAME_HELLO);
    const mine = nonce();
    c.send(encodeHello(10, [], session(), mine));
    if (mode === "none") c.send(encodeResume(theirs.session, 0));
    else c.send(encodeAuth(authMac(mode === "right" ? SECRET : "not-it", mine, theirs.nonce, 10, 0)));
    if (mode === "right") {
      // The node proves itself only after our proof verified.
      assert.is((await c.next(FRAME_AUTH)).mac.byteLength, 32);
      await c.next(FRAME_RESUME);
      c.send(encodeResume(theirs.session, 0));
      await until(() => a.peers.includes(10), "the raw client joined");
      a.publish("sec.to-all", enc.encode("hello"));
      await c.waitFor(() => c.received.length >= 4, 2000, "an event for the raw client");
      await c.close();
    } else {
      assert.is((await c.waitClose()).code, CLOSE_AUTH);
    }
    seenByRaw.push(...c.received);
    if (c.closed) seenByRaw.push(enc.encode(c.closed.reason));
  }
  await b.close();
  const wire = proxy.bytes();
  assert.ok(wire.byteLength > 200, "the proxy captured the conversation");
  assert.ok(containsBytes(wire, enc.encode("sec.t")), "the capture holds the events' topics");
  const forms = [
    SECRET,
    Buffer.from(SECRET).toString("hex"),
    Buffer.from(SECRET).toString("base64"),
    SECRET.slice(-12), // a part of it (the random tail)
  ].map((s) => enc.encode(s));
  for (const form of forms) {
    assert.not.ok(containsBytes(wire, form), "secret bytes on the wire");
    for (const msg of seenByRaw) assert.not.ok(containsBytes(msg, form), "secret bytes in a frame the raw client received");
  }
});

// KNOWN LIB BUG (reported, not fixed here): a node sends its AUTH as soon as it gets a HELLO, before
// the other side proved anything, and the proof does not say which side dialed. An attacker that
// can reach two nodes X and Z dials both, hands Z's nonce to X as its own (claiming Z's id), gets
// X's AUTH back and replays it to Z as "node X": Z accepts, and the attacker can inject events as
// X without knowing the secret. Enable this test once lib/transport/ws/mod.ts is fixed.
S("secret: an AUTH relayed from another node (the attacker dials both) is refused", async () => {
  const x = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", secret: SECRET });
  const z = node({ nodeId: 2, listen: "tcp://127.0.0.1:0", secret: SECRET });
  await x.bind();
  await z.bind();
  const seen = watch(z);
  const toZ = await raw(z.address!);
  const helloZ = await toZ.next(FRAME_HELLO);
  const toX = await raw(x.address!);
  const helloX = await toX.next(FRAME_HELLO);
  toX.send(encodeHello(2, [], session(), helloZ.nonce)); // "I am node 2", with Z's nonce
  let authX: { mac: Uint8Array };
  try {
    authX = await toX.next(FRAME_AUTH, 1000);
  } catch {
    return; // X proves nothing before the other side did: the relay cannot even start
  }
  toZ.send(encodeHello(0, [], session(), helloX.nonce)); // "I am node 0", with X's nonce
  toZ.send(encodeAuth(authX.mac));
  toZ.send(encodeResume(helloZ.session, 0));
  toZ.send(encodeEvent(1, 0, "sec.injected", bytes(1)));
  await toZ.waitFor(() => toZ.closed !== undefined, 1000, "Z refuses").catch(() => {});
  await delay(50);
  assert.equal(seen.got, [], "an event injected as node 0 reached Z");
  assert.is(toZ.closed?.code, CLOSE_AUTH);
});

// --- TLS ------------------------------------------------------------------------------------

S("tls: two nodes over wss with a self-signed certificate (ca) deliver both ways", async () => {
  const tls = { cert, key, ca: cert };
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", expect: [1], tls });
  await a.bind();
  assert.match(a.address!, /^wss:\/\/127\.0\.0\.1:\d+$/);
  const b = node({ nodeId: 1, dial: [a.address!], tls });
  await withTimeout(Promise.all([a.open(), b.open()]), 8000, "open over wss");
  await exchange(a, b);
  // The server speaks TLS only: a plain ws:// client gets nowhere.
  const plain = await RawClient.open(a.address!.replace(/^wss:/, "tcp:"), { ms: 2000 }).then(
    (c) => (clients.push(c), "opened"),
    () => "refused",
  );
  assert.is(plain, "refused");
});

S("tls: a dialer that does not trust the certificate cannot connect", async () => {
  const a = node({ nodeId: 0, listen: "tcp://127.0.0.1:0", tls: { cert, key, ca: cert } });
  await a.bind();
  const seen = watch(a);
  for (const tls of [undefined, { cert, key }]) {
    // Without `ca` the system's CAs apply, and they do not know this self-signed certificate.
    const options: WsMeshOptions = { nodeId: 1, dial: [a.address!], connectTimeout: 800 };
    if (tls) options.tls = tls;
    const b = node(options);
    const started = Date.now();
    const err = await withTimeout(b.open().then(() => undefined, (e: unknown) => e), 5000, "open() settles");
    assert.ok(err instanceof TransportError, `expected a TransportError, got ${String(err)}`);
    assert.ok(Date.now() - started < 4000, `open() rejected after ${Date.now() - started} ms`);
    assert.match((err as Error).message, /within 800 ms/);
    await b.close();
  }
  assert.equal(seen.peers, []);
  assert.equal(a.peers, []);
});

S("tls: secret and TLS together: the right secret connects, a wrong one gets 4003", async () => {
  const tls = { cert, key, ca: cert };
  const [a, b] = await pair({ tls, secret: SECRET }, { tls, secret: SECRET });
  assert.match(a.address!, /^wss:/);
  await exchange(a, b);
  const seen = watch(a);
  const c = node({ nodeId: 2, dial: [a.address!], tls, secret: "wrong" });
  const err = await withTimeout(c.open().then(() => undefined, (e: unknown) => e), 6000, "open() settles");
  assert.ok(err instanceof TransportError);
  assert.is((err as TransportError).closeCode, CLOSE_AUTH);
  // A raw wss client that trusts the certificate but knows no secret is refused as well.
  const r = await raw(a.address!, { ca: cert });
  const h = await r.next(FRAME_HELLO);
  r.send(encodeHello(9, [], session(), nonce()));
  r.send(encodeResume(h.session, 0));
  r.send(encodeEvent(1, 9, "sec.evil", bytes(1)));
  assert.is((await r.waitClose()).code, CLOSE_AUTH);
  await delay(50);
  assert.equal(seen.got, []);
  assert.equal(a.peers, [1]);
});

S.run();
