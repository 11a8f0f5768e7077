// The mesh wire protocol: pure functions, no I/O.
//
// Every WebSocket message is one binary frame: a CBOR array whose first item is the frame kind.
//
//   HELLO  [0, version, nodeId, labels]          sent by both ends right after the socket opens
//   EVENT  [1, seq, from, topic, payload]        one event; payload = the CBOR-encoded arguments
//   BATCH  [2, seq, from, [topic, payload, ...]] several events of one tick; seq is the first one's
//
// - version: PROTOCOL_VERSION; a peer with another version is refused (close 4002).
// - nodeId / from: the sender's node id (an integer >= 0). `from` must equal the id the link's
//   HELLO announced, otherwise the frame is dropped (a spoofed sender).
// - seq: per link and direction, starting at 1 and growing by 1 per event (a BATCH of k events
//   covers seq .. seq + k - 1). The receiver drops an event whose seq it has already seen and
//   logs a gap; acknowledgement and resend build on it.
// - topic: `task.<event>` for task events, or a router topic.
// - payload: a CBOR byte string, kept as bytes so that a receiver can drop topics it does not
//   listen to without decoding their arguments.
//
// Close codes: 1000 normal, 1008 policy (bad frame, frame before HELLO), 1009 frame too large,
// 4001 duplicate or own node id, 4002 protocol version mismatch.

import { createCborCodec } from "../../codec.ts";

/** The version every HELLO carries. */
export const PROTOCOL_VERSION = 1;

/** Frame kinds. */
export const FRAME_HELLO = 0;
export const FRAME_EVENT = 1;
export const FRAME_BATCH = 2;

/** Close codes used by the mesh. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOO_BIG = 1009;
export const CLOSE_DUPLICATE_NODE = 4001;
export const CLOSE_VERSION = 4002;

/** A parsed HELLO frame. */
export interface HelloFrame {
  kind: typeof FRAME_HELLO;
  version: number;
  nodeId: number;
  labels: string[];
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
export type Frame = HelloFrame | EventsFrame;

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
export function encodeHello(nodeId: number, labels: string[]): Uint8Array {
  return envelope.encode([FRAME_HELLO, PROTOCOL_VERSION, nodeId, labels]);
}

/** Encode an EVENT frame. */
export function encodeEvent(seq: number, from: number, topic: string, payload: Uint8Array): Uint8Array {
  return envelope.encode([FRAME_EVENT, seq, from, topic, payload]);
}

/** Encode a BATCH frame of `items` (topic, payload, topic, payload, ...). */
export function encodeBatch(seq: number, from: number, items: Array<string | Uint8Array>): Uint8Array {
  return envelope.encode([FRAME_BATCH, seq, from, items]);
}

/**
 * Parse and check one received message.
 *
 * @returns The frame, or a string that says why the bytes are not a valid frame.
 */
export function parseFrame(bytes: Uint8Array): Frame | string {
  let v: unknown;
  try {
    v = envelope.decode(bytes);
  } catch (err) {
    return `malformed CBOR (${(err as Error).message})`;
  }
  if (!Array.isArray(v) || v.length < 1) return "frame is not a CBOR array";
  switch (v[0]) {
    case FRAME_HELLO: {
      const [, version, nodeId, labels] = v;
      if (v.length !== 4) return "HELLO must have 4 items";
      if (typeof version !== "number") return "HELLO version is not a number";
      if (!isNodeId(nodeId)) return "HELLO node id is not an integer >= 0";
      if (!Array.isArray(labels) || !labels.every((l) => typeof l === "string")) return "HELLO labels are not strings";
      return { kind: FRAME_HELLO, version, nodeId, labels };
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
      return `unknown frame kind ${JSON.stringify(v[0])}`;
  }
}

/** Parsed forms of the addresses the mesh accepts. */
export type Address =
  | { kind: "tcp"; host: string; port: number; tls: boolean }
  | { kind: "ipc"; path: string };

/**
 * Parse a peer address: `tcp://host:port` (DI-engine's form), `ws://host:port`,
 * `wss://host:port` or `ipc:///path/to.sock`.
 *
 * @param options `listen: true` allows port 0 (pick a free port).
 * @throws {TypeError} If the address has another form; the message quotes it.
 */
export function parseAddress(addr: string, options: { listen?: boolean } = {}): Address {
  if (typeof addr !== "string") throw new TypeError(`Invalid peer address ${String(addr)}: expected a string`);
  if (addr.startsWith("ipc://")) {
    const path = addr.slice("ipc://".length);
    if (!path.startsWith("/")) throw new TypeError(`Invalid peer address "${addr}": ipc paths must be absolute (ipc:///path)`);
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
