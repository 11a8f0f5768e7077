// The mesh wire protocol: pure functions, no I/O.
//
// Every WebSocket message is one binary frame: a CBOR array whose first item is the frame kind.
//
//   HELLO  [0, version, nodeId, labels, session, nonce]  both ends, right after the socket opens
//   EVENT  [1, seq, from, topic, payload]        one event; payload = the CBOR-encoded arguments
//   BATCH  [2, seq, from, [topic, payload, ...]] several events of one tick; seq is the first one's
//   ACK    [3, seq]                              every event up to seq has arrived (cumulative)
//   AUTH   [4, mac]                              proof of the shared secret (only with a secret)
//   RESUME [5, session, seq]                     "of your session `session` I have every event up
//                                                 to seq": the link is ready; resend what is after
//
// - version: PROTOCOL_VERSION; a peer with another version is refused (close 4002).
// - nodeId / from: the sender's node id (an integer >= 0). `from` must equal the id the link's
//   HELLO announced, otherwise the frame is dropped (a spoofed sender).
// - session: a random id per transport instance (per process). A reconnect of the same session
//   resumes where it stopped; a new session (a restarted process) starts its sequence afresh.
// - nonce: random bytes; with a secret, AUTH's mac is HMAC-SHA256(secret, "ditask-auth-v1", role,
//   sender nonce, receiver nonce, sender id, receiver id) (see authMac), so a recorded AUTH never
//   verifies again and the secret never crosses the wire.
// - seq: per peer session pair and direction, starting at 1 and growing by 1 per event (a BATCH
//   of k events covers seq .. seq + k - 1). The sender keeps every event until it is
//   acknowledged and resends the unacknowledged ones after a reconnect; the receiver drops an
//   event whose seq it has already seen, so each event is delivered exactly once, in order.
// - topic: `task.<event>` for task events, or a router topic.
// - payload: a CBOR byte string, kept as bytes so that a receiver can drop topics it does not
//   listen to without decoding their arguments.
//
// Handshake: each end sends HELLO. Without a secret, each sends RESUME on the other's HELLO. With a
// secret, the dialer sends AUTH on the acceptor's HELLO; the acceptor verifies it, then sends its
// own AUTH and RESUME; the dialer verifies that and sends RESUME. A link is ready for events when
// the other's RESUME arrived. Anything else before that closes the connection (1008, or 4003 for
// a missing or wrong proof).
//
// Close codes: 1000 normal (a peer that shuts down: it is not redialed), 1008 policy (bad frame,
// frame before the handshake, handshake timeout), 1009 frame too large, 4001 duplicate or own
// node id, 4002 protocol version mismatch, 4003 authentication failed, 4004 slow consumer (its
// unacknowledged backlog passed maxOutboxBytes).

import { Buffer } from "node:buffer";
import process from "node:process";
import { createHmac } from "node:crypto";
import { alignedSizes, HEAD_SIZES, headSize, writeHead } from "../../cbor_head.ts";
import { createCborCodec } from "../../codec.ts";

/** The version every HELLO carries. */
export const PROTOCOL_VERSION = 1;

/** Frame kinds. */
export const FRAME_HELLO = 0;
export const FRAME_EVENT = 1;
export const FRAME_BATCH = 2;
export const FRAME_ACK = 3;
export const FRAME_AUTH = 4;
export const FRAME_RESUME = 5;

/** Close codes used by the mesh. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_BIG = 1009;
export const CLOSE_DUPLICATE_NODE = 4001;
export const CLOSE_VERSION = 4002;
export const CLOSE_AUTH = 4003;
export const CLOSE_SLOW = 4004;

/** A parsed HELLO frame. */
export interface HelloFrame {
  kind: typeof FRAME_HELLO;
  version: number;
  nodeId: number;
  labels: string[];
  session: string;
  nonce: string;
}

/** A parsed ACK frame. */
export interface AckFrame {
  kind: typeof FRAME_ACK;
  seq: number;
}

/** A parsed AUTH frame. */
export interface AuthFrame {
  kind: typeof FRAME_AUTH;
  mac: Uint8Array;
}

/** A parsed RESUME frame. */
export interface ResumeFrame {
  kind: typeof FRAME_RESUME;
  session: string;
  seq: number;
}

/** A parsed EVENT or BATCH frame, as a list of events. */
export interface EventsFrame {
  kind: typeof FRAME_EVENT;
  seq: number;
  from: number;
  /** topic, payload, topic, payload, ... */
  items: Array<string | Uint8Array>;
}

/** Any parsed frame. */
export type Frame = HelloFrame | EventsFrame | AckFrame | AuthFrame | ResumeFrame;

// Byte strings decode as views into the received message (no copy).
const envelope = createCborCodec({ tagUint8Array: false });

/** A plain `Uint8Array` view of the same bytes (Node decodes byte strings as `Buffer`s). */
export function toBytes(b: Uint8Array): Uint8Array {
  return b.constructor === Uint8Array ? b : new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

function isNodeId(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** Encode a HELLO frame. */
export function encodeHello(nodeId: number, labels: string[], session: string, nonce: string): Uint8Array {
  return envelope.encode([FRAME_HELLO, PROTOCOL_VERSION, nodeId, labels, session, nonce]);
}

/**
 * The AUTH proof: HMAC-SHA256(secret, "ditask-auth-v1", role, sender nonce, receiver nonce, sender
 * id, receiver id), newline-separated. `role` is the sender's side of the connection: the dialer
 * proves itself first; the accepting side answers only after verifying it, so neither side's
 * proof can be relayed to a third node.
 */
export function authMac(
  secret: string,
  role: "dialer" | "acceptor",
  fromNonce: string,
  toNonce: string,
  from: number,
  to: number,
): Uint8Array {
  return new Uint8Array(
    createHmac("sha256", secret).update(`ditask-auth-v1\n${role}\n${fromNonce}\n${toNonce}\n${from}\n${to}`).digest(),
  );
}

/** Encode an ACK frame. */
export function encodeAck(seq: number): Uint8Array {
  return envelope.encode([FRAME_ACK, seq]);
}

/** Encode an AUTH frame. */
export function encodeAuth(mac: Uint8Array): Uint8Array {
  return envelope.encode([FRAME_AUTH, mac]);
}

/** Encode a RESUME frame. */
export function encodeResume(session: string, seq: number): Uint8Array {
  return envelope.encode([FRAME_RESUME, session, seq]);
}

// EVENT and BATCH frames are the hot path: they are written and read by hand (plain CBOR, the same
// bytes cbor-x would produce), into one buffer of the exact size, with no intermediate objects.

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true });
// CBOR text items (head + UTF-8) of recent topics.
const topicItems = new Map<string, Uint8Array>();

function topicItem(topic: string): Uint8Array {
  let item = topicItems.get(topic);
  if (item) return item;
  const bytes = utf8.encode(topic);
  item = new Uint8Array(headSize(bytes.length) + bytes.length);
  item.set(bytes, writeHead(item, 0, 3, bytes.length));
  if (topicItems.size >= 4096) topicItems.clear();
  topicItems.set(topic, item);
  return item;
}

/**
 * Memory for one peer's small frames, carved out of slabs: an ArrayBuffer of its own per frame
 * cost about 1.2 µs per frame. A slab is freed once none of its frames is kept; a peer
 * acknowledges its frames in order and a slab holds that peer's frames only, so what a slow peer
 * keeps pins its counted bytes plus at most one slab. (Not Node's shared Buffer pool: a kept frame
 * must not pin a pool slab that other code filled.)
 */
export class FrameSlab {
  static readonly BYTES = 64 * 1024;
  /** Larger frames get a buffer of their own (one frame of this size already amortises it). */
  static readonly MAX_FRAME = 4 * 1024;
  #slab: Uint8Array = new Uint8Array(0);
  #used = 0;

  /** `size` bytes, not zero-filled, with {@link WS_HEADROOM} bytes of their own before them. */
  alloc(size: number): Uint8Array {
    if (size > FrameSlab.MAX_FRAME) return allocFrame(size);
    let start = this.#used + WS_HEADROOM;
    if (start + size > this.#slab.byteLength) {
      this.#slab = Buffer.allocUnsafeSlow(FrameSlab.BYTES);
      start = WS_HEADROOM;
    }
    this.#used = start + size;
    return this.#slab.subarray(start, start + size);
  }
}

/**
 * Room kept free before every frame {@link encodeEvents} returns as one buffer: the longest
 * WebSocket header of a masked binary message (2 + 8 length bytes + 4 mask bytes), which
 * {@link wsMessage} writes there, so a frame goes to the socket as one buffer without a copy.
 */
export const WS_HEADROOM = 14;

/** A buffer of its own for a frame of `size` bytes, with {@link WS_HEADROOM} before it. */
function allocFrame(size: number): Uint8Array {
  return Buffer.allocUnsafeSlow(WS_HEADROOM + size).subarray(WS_HEADROOM);
}

/**
 * A complete WebSocket message (one unfragmented binary frame) holding `frame`: its header is
 * written into the {@link WS_HEADROOM} bytes before `frame`, which only {@link encodeEvents}
 * guarantees. `masked` (a dialer's frames, RFC 6455 §5.3) sets the mask bit with an all-zero key,
 * so the payload is sent as is; a receiver skips unmasking for that key, as it does for the mesh's
 * frames sent through ws with a zero `generateMask`.
 *
 * Writing this to the socket is what `ws.send` does for a binary message, minus its head and data
 * going out as two buffers (a writev through Node's stream machinery) and its per-send options.
 *
 * @example
 * ```ts
 * socket.write(wsMessage(encodeEvents(seq, nodeId, ["topic", payload], slab) as Uint8Array, true));
 * ```
 */
export function wsMessage(frame: Uint8Array, masked: boolean): Buffer {
  const n = frame.byteLength;
  const start = frame.byteOffset - wsHeadSize(n, masked);
  const out = Buffer.from(frame.buffer, start, frame.byteOffset + n - start);
  writeWsHead(out, 0x82, n, masked); // FIN, binary
  return out;
}

/** The size of a WebSocket frame header for a payload of `n` bytes (RFC 6455 §5.2). */
export function wsHeadSize(n: number, masked: boolean): number {
  return 2 + (n < 126 ? 0 : n < 0x10000 ? 2 : 8) + (masked ? 4 : 0);
}

/**
 * Write a WebSocket frame header at the start of `out`: `first` is the FIN bit and the opcode,
 * `n` the payload length. `masked` sets the mask bit with an all-zero key (the payload goes as it
 * is); see {@link wsMessage}.
 */
export function writeWsHead(out: Uint8Array, first: number, n: number, masked: boolean): void {
  out[0] = first;
  const m = masked ? 0x80 : 0;
  let at = 2;
  if (n < 126) out[1] = m | n;
  else if (n < 0x10000) {
    out[1] = m | 126;
    out[2] = n >> 8;
    out[3] = n & 255;
    at = 4;
  } else {
    out[1] = m | 127;
    const hi = Math.floor(n / 0x100000000);
    const lo = n >>> 0;
    out[2] = hi >>> 24;
    out[3] = (hi >>> 16) & 255;
    out[4] = (hi >>> 8) & 255;
    out[5] = hi & 255;
    out[6] = lo >>> 24;
    out[7] = (lo >>> 16) & 255;
    out[8] = (lo >>> 8) & 255;
    out[9] = lo & 255;
    at = 10;
  }
  if (masked) out.fill(0, at, at + 4);
}

/** Payloads at least this large are sent as a WebSocket fragment of their own, not copied into the frame. */
export const LARGE_PAYLOAD = 64 * 1024;

/**
 * Encode a frame of events: an EVENT frame for one, a BATCH frame for several. `items` is topic,
 * payload, topic, payload, ...; `seq` is the first event's sequence number. With `slab`, a small
 * frame is a piece of the peer's slab (see {@link FrameSlab}); without, a buffer of its own. Either
 * way {@link WS_HEADROOM} bytes before it are free for {@link wsMessage}.
 *
 * @returns One buffer; or, for a single event whose payload is at least {@link LARGE_PAYLOAD}
 *   bytes, the frame's head and the payload itself, to be sent as two fragments of one message
 *   (so the payload is never copied).
 */
export function encodeEvents(
  seq: number,
  from: number,
  items: Array<string | Uint8Array>,
  slab?: FrameSlab,
): Uint8Array | [Uint8Array, Uint8Array] {
  const n = items.length / 2;
  if (n === 1 && (items[1] as Uint8Array).byteLength >= LARGE_PAYLOAD) {
    return splitEvent(seq, from, items[0] as string, items[1] as Uint8Array);
  }
  let size = 1 + 1 + headSize(seq) + headSize(from) + (n === 1 ? 0 : headSize(items.length));
  for (let i = 0; i < items.length; i += 2) {
    const len = (items[i + 1] as Uint8Array).byteLength;
    size += topicItem(items[i] as string).byteLength + headSize(len) + len;
  }
  // Not zero-filled: every byte is written below (a fresh zeroed buffer costs ~1 ms per MiB).
  const buf = slab ? slab.alloc(size) : allocFrame(size);
  buf[0] = n === 1 ? 0x85 : 0x84;
  buf[1] = n === 1 ? FRAME_EVENT : FRAME_BATCH;
  let pos = writeHead(buf, 2, 0, seq);
  pos = writeHead(buf, pos, 0, from);
  if (n > 1) pos = writeHead(buf, pos, 4, items.length);
  for (let i = 0; i < items.length; i += 2) {
    const t = topicItem(items[i] as string);
    buf.set(t, pos);
    pos += t.byteLength;
    const payload = items[i + 1] as Uint8Array;
    pos = writeHead(buf, pos, 2, payload.byteLength);
    buf.set(payload, pos);
    pos += payload.byteLength;
  }
  return buf;
}

/**
 * The head of an EVENT frame whose payload is sent as a fragment of its own. Its integers are
 * encoded just long enough that the head's length is a multiple of 8: the payload then starts
 * 8-aligned in the received message, and a typed array at the start of the arguments (at offset
 * 8 for a single typed-array argument) decodes as a view instead of a copy.
 */
function splitEvent(seq: number, from: number, topic: string, payload: Uint8Array): [Uint8Array, Uint8Array] {
  // Large payloads only: encoding the topic again costs nothing next to them.
  const tBytes = utf8.encode(topic);
  const tLen = tBytes.byteLength;
  const len = payload.byteLength;
  const args = [seq, from, tLen, len];
  // Lengthen the four integer heads (sequence, sender, topic length, payload length); sizes 1, 2,
  // 3, 5 and 9 reach every remainder, so a choice always exists.
  const sizes = alignedSizes(2 + tLen, args.map((v) => HEAD_SIZES.filter((h) => h >= headSize(v))))!;
  const head: Uint8Array = Buffer.allocUnsafeSlow(2 + sizes[0]! + sizes[1]! + sizes[2]! + tLen + sizes[3]!);
  head[0] = 0x85;
  head[1] = FRAME_EVENT;
  let pos = writeHead(head, 2, 0, seq, sizes[0]);
  pos = writeHead(head, pos, 0, from, sizes[1]);
  pos = writeHead(head, pos, 3, tLen, sizes[2]);
  head.set(tBytes, pos);
  writeHead(head, pos + tLen, 2, len, sizes[3]);
  return [head, payload];
}

/** Encode an EVENT frame as one buffer. */
export function encodeEvent(seq: number, from: number, topic: string, payload: Uint8Array): Uint8Array {
  return envelope.encode([FRAME_EVENT, seq, from, topic, payload]);
}

/** Encode a BATCH frame of `items` (topic, payload, topic, payload, ...) as one buffer. */
export function encodeBatch(seq: number, from: number, items: Array<string | Uint8Array>): Uint8Array {
  return envelope.encode([FRAME_BATCH, seq, from, items]);
}

/** Read a CBOR head of major type `major` at `pos`; returns [value, next position] or a reason. */
function readHead(b: Uint8Array, pos: number, major: number, what: string): [number, number] | string {
  if (pos >= b.length) return `${what}: frame ends early`;
  const first = b[pos]!;
  if (first >> 5 !== major) return `${what}: wrong CBOR type`;
  const info = first & 31;
  if (info < 24) return [info, pos + 1];
  const len = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : 0;
  if (len === 0) return `${what}: indefinite or reserved length`;
  if (pos + 1 + len > b.length) return `${what}: frame ends early`;
  let v = 0;
  for (let i = 1; i <= len; i++) v = v * 256 + b[pos + i]!;
  if (!Number.isSafeInteger(v)) return `${what}: too large`;
  return [v, pos + 1 + len];
}

// Topics repeat: the last few decoded ones are kept with their bytes, so a known topic costs a
// byte comparison instead of a view, an array-like call and a new string per event.
const RECENT_TEXTS = 16;
const recentBytes: Uint8Array[] = [];
const recentStrings: string[] = [];
let recentNext = 0;

function recentText(b: Uint8Array, start: number, len: number): string | undefined {
  outer: for (let k = 0; k < recentBytes.length; k++) {
    const r = recentBytes[k]!;
    if (r.length !== len) continue;
    for (let i = 0; i < len; i++) if (r[i] !== b[start + i]) continue outer;
    return recentStrings[k];
  }
  return undefined;
}

function rememberText(b: Uint8Array, start: number, len: number, text: string): string {
  if (len > 64) return text;
  recentBytes[recentNext] = Uint8Array.prototype.slice.call(b, start, start + len); // a copy (Buffer#slice is a view)
  recentStrings[recentNext] = text;
  recentNext = (recentNext + 1) % RECENT_TEXTS;
  return text;
}

function readText(b: Uint8Array, pos: number, what: string): [string, number] | string {
  const h = readHead(b, pos, 3, what);
  if (typeof h === "string") return h;
  const [len, start] = h;
  if (start + len > b.length) return `${what}: frame ends early`;
  const known = recentText(b, start, len);
  if (known !== undefined) return [known, start + len];
  let ascii = len <= 128;
  for (let i = start; ascii && i < start + len; i++) if (b[i]! >= 0x80) ascii = false;
  if (ascii) return [rememberText(b, start, len, String.fromCharCode.apply(null, b.subarray(start, start + len) as unknown as number[])), start + len];
  try {
    return [utf8Decoder.decode(b.subarray(start, start + len)), start + len];
  } catch {
    return `${what}: invalid UTF-8`;
  }
}

/**
 * Parse an EVENT or BATCH frame by hand (the hot path); the payloads are views into `b`. With
 * `tail`, `b` must be an EVENT frame that ends with its payload's head, and `tail` is the payload.
 */
function parseEvents(b: Uint8Array, tail?: Uint8Array): EventsFrame | string {
  const batch = b[1] === FRAME_BATCH;
  if (tail && batch) return "BATCH split over fragments";
  if (b[0] !== (batch ? 0x84 : 0x85)) return batch ? "BATCH must have 4 items" : "EVENT must have 5 items";
  const what = batch ? "BATCH" : "EVENT";
  const s = readHead(b, 2, 0, `${what} seq`);
  if (typeof s === "string") return s;
  if (s[0] < 1) return `${what} seq is not an integer >= 1`;
  const f = readHead(b, s[1], 0, `${what} sender`);
  if (typeof f === "string") return f;
  if (f[0] > 0xffffffff) return `${what} sender is not an integer >= 0`;
  let pos = f[1];
  let count = 2;
  if (batch) {
    const h = readHead(b, pos, 4, "BATCH items");
    if (typeof h === "string") return "BATCH items are not topic/payload pairs";
    [count, pos] = h;
    if (count === 0 || count % 2 !== 0) return "BATCH items are not topic/payload pairs";
    if (count > b.length) return "BATCH items: frame ends early";
  }
  const items: Array<string | Uint8Array> = new Array(count);
  for (let i = 0; i < count; i += 2) {
    const t = readText(b, pos, `${what} topic`);
    if (typeof t === "string") return t;
    items[i] = t[0];
    const p = readHead(b, t[1], 2, `${what} payload`);
    if (typeof p === "string") return p;
    const [len, start] = p;
    if (tail) {
      if (start !== b.length || len !== tail.byteLength) return `${what} payload: does not match its fragment`;
      items[1] = toBytes(tail);
      return { kind: FRAME_EVENT, seq: s[0], from: f[0], items };
    }
    if (start + len > b.length) return `${what} payload: frame ends early`;
    items[i + 1] = new Uint8Array(b.buffer, b.byteOffset + start, len);
    pos = start + len;
  }
  if (pos !== b.length) return `${what}: trailing bytes`;
  return { kind: FRAME_EVENT, seq: s[0], from: f[0], items };
}

function isEventsHead(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && (bytes[1] === FRAME_EVENT || bytes[1] === FRAME_BATCH) && (bytes[0]! >> 5) === 4;
}

/**
 * Parse and check one received message: its bytes, or the fragments it arrived in.
 *
 * @returns The frame, or a string that says why the bytes are not a valid frame.
 */
export function parseFrame(message: Uint8Array | Uint8Array[]): Frame | string {
  let bytes: Uint8Array;
  if (!Array.isArray(message)) bytes = message;
  else if (message.length === 1) bytes = message[0]!;
  else {
    // A message that came in several fragments. An EVENT sent by encodeEvents as a head and a
    // large payload is used as it came: the payload fragment is its own buffer, so nothing is
    // copied and it starts aligned. Any other split is joined first.
    if (message.length === 2 && isEventsHead(message[0]!)) {
      const frame = parseEvents(message[0]!, message[1]!);
      if (typeof frame !== "string") return frame;
    }
    bytes = Buffer.concat(message);
  }
  if (isEventsHead(bytes)) return parseEvents(bytes);
  let v: unknown;
  try {
    v = envelope.decode(bytes);
  } catch (err) {
    return `malformed CBOR (${(err as Error).message})`;
  }
  if (!Array.isArray(v) || v.length < 1) return "frame is not a CBOR array";
  switch (v[0]) {
    case FRAME_HELLO: {
      const [, version, nodeId, labels, session, nonce] = v;
      if (typeof version !== "number") return "HELLO version is not a number";
      // Checked before the rest so that another version is refused with 4002, whatever its layout.
      if (version !== PROTOCOL_VERSION) return { kind: FRAME_HELLO, version, nodeId: -1, labels: [], session: "", nonce: "" };
      if (v.length !== 6) return "HELLO must have 6 items";
      if (!isNodeId(nodeId)) return "HELLO node id is not an integer >= 0";
      if (!Array.isArray(labels) || labels.length > 1000 || !labels.every((l) => typeof l === "string")) {
        return "HELLO labels are not strings";
      }
      if (typeof session !== "string" || session.length < 8 || session.length > 64) return "HELLO session is not a string of 8-64 characters";
      if (typeof nonce !== "string" || nonce.length < 16 || nonce.length > 64) return "HELLO nonce is not a string of 16-64 characters";
      return { kind: FRAME_HELLO, version, nodeId, labels, session, nonce };
    }
    case FRAME_ACK: {
      if (v.length !== 2 || !Number.isSafeInteger(v[1]) || v[1] < 0) return "ACK seq is not an integer >= 0";
      return { kind: FRAME_ACK, seq: v[1] };
    }
    case FRAME_AUTH: {
      if (v.length !== 2 || !(v[1] instanceof Uint8Array) || v[1].byteLength !== 32) return "AUTH mac is not 32 bytes";
      return { kind: FRAME_AUTH, mac: toBytes(v[1]) };
    }
    case FRAME_RESUME: {
      const [, session, seq] = v;
      if (v.length !== 3 || typeof session !== "string" || session.length > 64 || !Number.isSafeInteger(seq) || seq < 0) {
        return "RESUME must be [5, session, seq]";
      }
      return { kind: FRAME_RESUME, session, seq };
    }
    case FRAME_EVENT: {
      const [, seq, from, topic, payload] = v;
      if (v.length !== 5) return "EVENT must have 5 items";
      if (!Number.isSafeInteger(seq) || (seq as number) < 1) return "EVENT seq is not an integer >= 1";
      if (!isNodeId(from)) return "EVENT sender is not an integer >= 0";
      if (typeof topic !== "string") return "EVENT topic is not a string";
      if (!(payload instanceof Uint8Array)) return "EVENT payload is not a byte string";
      return { kind: FRAME_EVENT, seq: seq as number, from, items: [topic, toBytes(payload)] };
    }
    case FRAME_BATCH: {
      const [, seq, from, items] = v;
      if (v.length !== 4) return "BATCH must have 4 items";
      if (!Number.isSafeInteger(seq) || (seq as number) < 1) return "BATCH seq is not an integer >= 1";
      if (!isNodeId(from)) return "BATCH sender is not an integer >= 0";
      if (!Array.isArray(items) || items.length === 0 || items.length % 2 !== 0) return "BATCH items are not topic/payload pairs";
      for (let i = 0; i < items.length; i += 2) {
        if (typeof items[i] !== "string" || !(items[i + 1] instanceof Uint8Array)) return "BATCH items are not topic/payload pairs";
        items[i + 1] = toBytes(items[i + 1]);
      }
      return { kind: FRAME_EVENT, seq: seq as number, from, items };
    }
    default:
      return `unknown frame kind ${typeof v[0] === "number" ? v[0] : typeof v[0]}`;
  }
}

/**
 * The longest Unix socket path the OS accepts, in bytes: `sun_path` less its closing NUL (108 on
 * Linux, 104 on macOS and the BSDs). A longer path is cut short by the kernel, so two sockets
 * whose names differ only at the end would be the same socket.
 */
export const IPC_PATH_MAX: number = process.platform === "linux" ? 107 : 103;

/** Parsed forms of the addresses the mesh accepts. */
export type Address =
  | { kind: "tcp"; host: string; port: number; tls: boolean }
  | { kind: "ipc"; path: string };

/**
 * Parse a peer address: `tcp://host:port` (DI-engine's form), `ws://host:port`,
 * `wss://host:port` or `ipc:///path/to.sock`.
 *
 * @param options `listen: true` allows port 0 (pick a free port).
 * @throws {TypeError} If the address has another form, or an ipc path is longer than
 *   {@link IPC_PATH_MAX} bytes; the message quotes it.
 */
export function parseAddress(addr: string, options: { listen?: boolean } = {}): Address {
  if (typeof addr !== "string") throw new TypeError(`Invalid peer address ${String(addr)}: expected a string`);
  if (addr.startsWith("ipc://")) {
    const path = addr.slice("ipc://".length);
    if (!path.startsWith("/")) throw new TypeError(`Invalid peer address "${addr}": ipc paths must be absolute (ipc:///path)`);
    const bytes = Buffer.byteLength(path);
    if (bytes > IPC_PATH_MAX) {
      throw new TypeError(
        `Invalid peer address "${addr}": the ipc path is ${bytes} bytes, and Unix socket paths are limited to ${IPC_PATH_MAX} bytes here; use a shorter path`,
      );
    }
    return { kind: "ipc", path };
  }
  const m = /^(tcp|ws|wss):\/\/(\[[^\]]+\]|[^:/\s]+):(\d+)\/?$/.exec(addr);
  if (!m) {
    throw new TypeError(`Invalid peer address "${addr}": expected tcp://host:port, ws://host:port, wss://host:port or ipc:///path`);
  }
  const port = Number(m[3]);
  const min = options.listen ? 0 : 1;
  if (port < min || port > 65535) throw new TypeError(`Invalid peer address "${addr}": port must be ${min}-65535`);
  const host = m[2]!.startsWith("[") ? m[2]!.slice(1, -1) : m[2]!;
  return { kind: "tcp", host, port, tls: m[1] === "wss" };
}

/** Format an address as the URL a WebSocket client dials. */
export function dialUrl(a: Address): string {
  if (a.kind === "ipc") return `ws+unix://${a.path}:/`;
  const host = a.host.includes(":") ? `[${a.host}]` : a.host;
  return `${a.tls ? "wss" : "ws"}://${host}:${a.port}/`;
}

/** Format an address the way users write it (`tcp://host:port` or `ipc:///path`). */
export function formatAddress(a: Address): string {
  if (a.kind === "ipc") return `ipc://${a.path}`;
  const host = a.host.includes(":") ? `[${a.host}]` : a.host;
  return `${a.tls ? "wss" : "tcp"}://${host}:${a.port}`;
}
