// The Redis transport's wire format and key layout: pure functions, no I/O.
//
// Names, for a job (namespace) J:
//   ditask:J:t:<topic>   pub/sub channel of one topic (data frames)
//   ditask:J:m           pub/sub channel of membership messages (JSON)
//   ditask:J:n:<id>      presence key of node <id> (JSON, expires unless refreshed)
//   ditask:J:ids         set of the node ids that joined (to find presence keys without SCAN)
//
// Data frame (one Redis message, big-endian):
//   0   2   magic "dt"
//   2   1   version (1)
//   3   1   kind (1 = events)
//   4   4   from: the sender's node id (u32)
//   8   8   instance: random bytes of the sender's transport instance
//   16  8   seq: the first event's sequence number (f64 holding an integer >= 1)
//   24  4   count: number of events (>= 1)
//   28  2   topic length in bytes (u16), then the topic (UTF-8)
//   ..      count x [u32 payload length, payload bytes]
//
// - seq: per sender instance, over all topics, starting at 1 and growing by 1 per event. A
//   receiver drops events whose seq it has already seen (a frame can arrive twice: through the
//   start-up pattern subscription and a channel subscription, or when resent after a Redis restart).
// - instance: a restarted process (same node id) gets a new instance, so its seq starts again.
// - The topic in the frame must match the channel it came on; anything else is dropped.
//
// Membership message (JSON object on ditask:J:m):
//   { "v": 1, "k": "hello" | "hb" | "bye", "id": <node id>, "inst": <16 hex>, "labels": [..] }
//   hello: joined (or rejoined after a reconnect); peers answer with an "hb" at once.
//   hb:    heartbeat, every heartbeatInterval. bye: left (close()).

import { randomBytes } from "node:crypto";

/** The version every data frame and membership message carries. */
export const REDIS_PROTOCOL_VERSION = 1;

/** Data frame kind: a run of events of one topic. */
export const KIND_EVENTS = 1;

/** Byte length of a data frame's fixed header (before the topic). */
export const HEADER_BYTES = 30;

const MAGIC_0 = 0x64; // "d"
const MAGIC_1 = 0x74; // "t"
const MAX_TOPIC_BYTES = 0xffff;

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

/** The Redis names of one job. */
export interface RedisNames {
  /** Prefix of every key and channel: `ditask:<job>:`. */
  prefix: string;
  /** Channel prefix of topics: `ditask:<job>:t:`. */
  topicPrefix: string;
  /** Pattern that matches every topic channel of the job (glob characters in the job escaped). */
  topicPattern: string;
  /** The membership channel. */
  members: string;
  /** The set of node ids. */
  ids: string;
}

/**
 * The channel and key names of a job.
 *
 * @param job The job id (namespace); any non-empty string.
 * @returns The names.
 * @throws {TypeError} If `job` is empty or not a string.
 * @example
 * ```ts
 * redisNames("exp1").members; // "ditask:exp1:m"
 * ```
 */
export function redisNames(job: string): RedisNames {
  if (typeof job !== "string" || job.length === 0) {
    throw new TypeError(`Invalid Redis job ${JSON.stringify(job)}: expected a non-empty string`);
  }
  const prefix = `ditask:${job}:`;
  const escaped = prefix.replace(/[*?[\]\\]/g, "\\$&");
  return {
    prefix,
    topicPrefix: `${prefix}t:`,
    topicPattern: `${escaped}t:*`,
    members: `${prefix}m`,
    ids: `${prefix}ids`,
  };
}

/**
 * The presence key of a node.
 *
 * @param names The job's names.
 * @param nodeId The node id.
 * @returns `ditask:<job>:n:<nodeId>`.
 * @example
 * ```ts
 * presenceKey(redisNames("j"), 3); // "ditask:j:n:3"
 * ```
 */
export function presenceKey(names: RedisNames, nodeId: number): string {
  return `${names.prefix}n:${nodeId}`;
}

/** A decoded data frame. */
export interface RedisEventsFrame {
  from: number;
  /** The sender's instance, as 16 hex digits. */
  instance: string;
  seq: number;
  topic: string;
  /** The payloads, as views into the received message (no copy). */
  payloads: Uint8Array[];
}

/**
 * Make a random instance id (8 bytes).
 *
 * @returns The bytes and their hex form.
 * @example
 * ```ts
 * const { hex } = newInstance(); // e.g. "9f0c2a..."
 * ```
 */
export function newInstance(): { bytes: Uint8Array; hex: string } {
  const bytes = new Uint8Array(randomBytes(8));
  return { bytes, hex: toHex(bytes) };
}

function toHex(b: Uint8Array): string {
  let s = "";
  for (const v of b) s += v.toString(16).padStart(2, "0");
  return s;
}

/**
 * Encode a data frame holding `payloads` (events of one topic with consecutive seq numbers).
 * The result is one new buffer (the payloads are copied once, into it).
 *
 * @param from The sender's node id.
 * @param instance The sender's instance bytes (8).
 * @param seq The first event's seq.
 * @param topic The topic.
 * @param payloads The events' payloads (at least one).
 * @returns The frame.
 * @throws {RangeError} If the topic is longer than 65535 bytes or there is no payload.
 * @example
 * ```ts
 * const f = encodeEvents(0, newInstance().bytes, 1, "t", [new Uint8Array([1])]);
 * ```
 */
export function encodeEvents(
  from: number,
  instance: Uint8Array,
  seq: number,
  topic: string,
  payloads: readonly Uint8Array[],
): Uint8Array {
  if (payloads.length === 0) throw new RangeError("Cannot encode an empty events frame");
  const t = utf8.encode(topic);
  if (t.byteLength > MAX_TOPIC_BYTES) throw new RangeError(`Topic too long: ${t.byteLength} bytes (at most 65535)`);
  let size = HEADER_BYTES + t.byteLength;
  for (const p of payloads) size += 4 + p.byteLength;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out[0] = MAGIC_0;
  out[1] = MAGIC_1;
  out[2] = REDIS_PROTOCOL_VERSION;
  out[3] = KIND_EVENTS;
  dv.setUint32(4, from);
  out.set(instance.subarray(0, 8), 8);
  dv.setFloat64(16, seq);
  dv.setUint32(24, payloads.length);
  dv.setUint16(28, t.byteLength);
  out.set(t, HEADER_BYTES);
  let o = HEADER_BYTES + t.byteLength;
  for (const p of payloads) {
    dv.setUint32(o, p.byteLength);
    out.set(p, o + 4);
    o += 4 + p.byteLength;
  }
  return out;
}

/**
 * Decode a data frame. Never throws: bad input gives a reason string.
 *
 * @param b The received message.
 * @returns The frame, or a short reason why it is not a valid frame.
 * @example
 * ```ts
 * const f = decodeEvents(bytes);
 * if (typeof f === "string") console.warn("dropped:", f);
 * ```
 */
export function decodeEvents(b: Uint8Array): RedisEventsFrame | string {
  if (b.byteLength < HEADER_BYTES) return `too short (${b.byteLength} bytes)`;
  if (b[0] !== MAGIC_0 || b[1] !== MAGIC_1) return "not a ditask frame";
  if (b[2] !== REDIS_PROTOCOL_VERSION) return `protocol version ${b[2]}, expected ${REDIS_PROTOCOL_VERSION}`;
  if (b[3] !== KIND_EVENTS) return `unknown frame kind ${b[3]}`;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const from = dv.getUint32(4);
  const seq = dv.getFloat64(16);
  if (!Number.isSafeInteger(seq) || seq < 1) return `invalid seq ${seq}`;
  const count = dv.getUint32(24);
  if (count < 1) return "no events";
  const topicLen = dv.getUint16(28);
  let o = HEADER_BYTES + topicLen;
  if (o > b.byteLength) return "truncated topic";
  let topic: string;
  try {
    topic = utf8Strict.decode(b.subarray(HEADER_BYTES, o));
  } catch {
    return "topic is not UTF-8";
  }
  // Each event takes at least 4 bytes: reject impossible counts before allocating.
  if (count > (b.byteLength - o) / 4) return `truncated (${count} events announced)`;
  const payloads: Uint8Array[] = new Array(count);
  for (let i = 0; i < count; i++) {
    if (o + 4 > b.byteLength) return "truncated event length";
    const len = dv.getUint32(o);
    o += 4;
    if (o + len > b.byteLength) return "truncated event";
    payloads[i] = new Uint8Array(b.buffer, b.byteOffset + o, len);
    o += len;
  }
  if (o !== b.byteLength) return `${b.byteLength - o} trailing bytes`;
  return { from, instance: toHex(b.subarray(8, 16)), seq, topic, payloads };
}

/** A membership message. */
export interface MemberMessage {
  k: "hello" | "hb" | "bye";
  id: number;
  inst: string;
  labels: string[];
}

/**
 * Encode a membership message.
 *
 * @param m The message.
 * @returns JSON text.
 * @example
 * ```ts
 * encodeMember({ k: "hb", id: 1, inst: "00112233aabbccdd", labels: [] });
 * ```
 */
export function encodeMember(m: MemberMessage): string {
  return JSON.stringify({ v: REDIS_PROTOCOL_VERSION, k: m.k, id: m.id, inst: m.inst, labels: m.labels });
}

const INST_RE = /^[0-9a-f]{16}$/;

function isNodeId(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/**
 * Decode a membership message (or a presence key's value, which has the same fields less `k`).
 * Never throws.
 *
 * @param text The received text or bytes.
 * @param presence Parse a presence value (no `k`, `v` optional) instead of a message.
 * @returns The message, or a short reason why it is not valid.
 * @example
 * ```ts
 * const m = decodeMember('{"v":1,"k":"bye","id":2,"inst":"00112233aabbccdd","labels":[]}');
 * ```
 */
export function decodeMember(text: string | Uint8Array, presence = false): MemberMessage | string {
  let v: unknown;
  try {
    v = JSON.parse(typeof text === "string" ? text : utf8Strict.decode(text));
  } catch {
    return "not JSON";
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) return "not an object";
  const o = v as Record<string, unknown>;
  if (o.v !== REDIS_PROTOCOL_VERSION) return `protocol version ${JSON.stringify(o.v)}, expected ${REDIS_PROTOCOL_VERSION}`;
  const k = presence ? "hb" : o.k;
  if (k !== "hello" && k !== "hb" && k !== "bye") return `unknown kind ${JSON.stringify(o.k)}`;
  if (!isNodeId(o.id)) return `invalid node id ${JSON.stringify(o.id)}`;
  if (typeof o.inst !== "string" || !INST_RE.test(o.inst)) return "invalid instance";
  const labels = o.labels ?? [];
  if (!Array.isArray(labels) || !labels.every((l) => typeof l === "string")) return "invalid labels";
  return { k, id: o.id, inst: o.inst, labels: labels as string[] };
}

/**
 * Encode a presence key's value.
 *
 * @param id The node id.
 * @param inst The instance (hex).
 * @param labels The node's labels.
 * @returns JSON text.
 * @example
 * ```ts
 * encodePresence(0, "00112233aabbccdd", ["learner"]);
 * ```
 */
export function encodePresence(id: number, inst: string, labels: string[]): string {
  return JSON.stringify({ v: REDIS_PROTOCOL_VERSION, id, inst, labels });
}
