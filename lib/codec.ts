import { Buffer } from "node:buffer";
import { loadCbor } from "./runtime.ts";
import { CodecError } from "./errors.ts";
import { alignedSizes, headSize, writeHead } from "./cbor_head.ts";

// Pure JS on Deno (its native addon crashes Deno); see loadCbor.
const cbor = await loadCbor();

/** Encodes values to bytes and back. */
export interface Codec {
  /**
   * Encode a value.
   * @throws {CodecError} If the value holds something that cannot be encoded (a function, a symbol).
   */
  encode(value: unknown): Uint8Array;
  /**
   * Decode bytes made by `encode`.
   * @throws {CodecError} If the bytes are not valid.
   */
  decode(bytes: Uint8Array): unknown;
  /** Optional: whether `bytes` came from `encode` and can be given back with `release`. */
  pooled?(bytes: Uint8Array): boolean;
  /**
   * Optional: give back bytes that `encode` returned, once nothing reads them any more (not the
   * caller, not a socket, not a decoded view), so that a later large encode reuses their memory.
   * Bytes never given back are left to the garbage collector. Bytes it did not make are ignored.
   */
  release?(bytes: Uint8Array): void;
}

/** How many bytes of free buffers a codec's pool keeps for large encodes. */
const POOL_BYTES = 32 * 1024 * 1024;
const POOL_GRAIN = 64 * 1024;

/**
 * Buffers for large encodes, reused once released. A fresh large buffer costs a page fault per
 * 4 KiB on its first write (about 1 ms per MiB in a VM), more than the copy that fills it.
 */
class BufferPool {
  #free: ArrayBuffer[] = [];
  #freeBytes = 0;
  #out = new WeakSet<ArrayBuffer>();

  /** A buffer of `size` bytes at offset 0 of its own memory (not zeroed when reused). */
  take(size: number): Uint8Array {
    const free = this.#free;
    for (let i = free.length - 1; i >= 0; i--) {
      const ab = free[i]!;
      // Not much larger than asked: a small encode must not pin a large buffer.
      if (ab.byteLength >= size && ab.byteLength - size <= size / 4 + POOL_GRAIN) {
        free[i] = free[free.length - 1]!;
        free.pop();
        this.#freeBytes -= ab.byteLength;
        this.#out.add(ab);
        return new Uint8Array(ab, 0, size);
      }
    }
    const ab = new ArrayBuffer(Math.ceil(size / POOL_GRAIN) * POOL_GRAIN);
    this.#out.add(ab);
    return new Uint8Array(ab, 0, size);
  }

  owns(bytes: Uint8Array): boolean {
    return bytes.byteOffset === 0 && this.#out.has(bytes.buffer as ArrayBuffer);
  }

  give(bytes: Uint8Array): void {
    const ab = bytes.buffer as ArrayBuffer;
    if (bytes.byteOffset !== 0 || !this.#out.delete(ab)) return;
    if (this.#freeBytes + ab.byteLength > POOL_BYTES) {
      // Keep the most recent ones: drop the oldest free buffers to make room.
      while (this.#free.length > 0 && this.#freeBytes + ab.byteLength > POOL_BYTES) {
        this.#freeBytes -= this.#free.shift()!.byteLength;
      }
      if (ab.byteLength > POOL_BYTES) return;
    }
    this.#free.push(ab);
    this.#freeBytes += ab.byteLength;
  }
}

const ENCODE_BUFFER = 1024 * 1024;

/** Options of {@link createCborCodec}. */
export interface CborCodecOptions {
  /**
   * Tag `Uint8Array`s (tag 64) so they decode as `Uint8Array` on every runtime. Without the tag,
   * byte strings decode as a Node `Buffer` on Node. Either way, like every typed array whose bytes
   * are aligned in the input, the result is a view into the input, not a copy.
   * @default true
   */
  tagUint8Array?: boolean;
}

/**
 * Make a CBOR codec (cbor-x with plain maps: no record extension, so Node and Deno produce the same
 * bytes). `Map`s keep being `Map`s (tag 259), typed arrays keep their class (tags 64-86; a
 * `Float16Array` is tag 84 and arrives as a `Float32Array` where the runtime has no
 * `Float16Array`), `Date`, `bigint`, `undefined` and `null` round-trip.
 *
 * @example
 * ```ts
 * const codec = createCborCodec();
 * codec.decode(codec.encode({ w: new Float32Array([1, 2]) })); // { w: Float32Array [1, 2] }
 * ```
 */
export function createCborCodec(options: CborCodecOptions = {}): Codec {
  const enc = new cbor.Encoder({
    useRecords: false,
    mapsAsObjects: true,
    useTag259ForMaps: true,
    tagUint8Array: options.tagUint8Array ?? true,
  } as ConstructorParameters<typeof cbor.Encoder>[0]);
  // cbor-x encodes into a buffer shared by all its encoders and starts a new one of the same size
  // when fewer than 2 KiB remain; it starts at 8 KiB, so small messages would need a new buffer
  // every few encodes. Handing it a 1 MiB buffer (its documented useBuffer) fixes that size. The
  // buffer is not zeroed: its pages are touched only as encodes fill it, which keeps start-up short.
  (enc as unknown as { useBuffer(b: Uint8Array): void }).useBuffer(Buffer.allocUnsafeSlow(ENCODE_BUFFER));
  const pool = new BufferPool();
  const typed = new TypedListWriter(options.tagUint8Array ?? true);
  const encodeOnce = (v: unknown): Uint8Array => {
    try {
      return findLarge(v, 0) ? encodeGathered(enc, v, pool) : enc.encode(v);
    } catch (cause) {
      // cbor-x recurses: a cycle or a very deep value overflows the stack. Say which.
      const why = cause instanceof RangeError && /call stack/i.test(cause.message) ? tooDeep(v) : (cause as Error).message;
      throw new CodecError(`Cannot encode value: ${why}`, { cause });
    }
  };
  return {
    encode(value: unknown): Uint8Array {
      const quick = typed.encode(value);
      if (quick !== undefined) return quick;
      let bytes = encodeOnce(value);
      // What a receiver would refuse is refused here, where the caller can see it.
      let bad = checkCbor(bytes, true);
      if (bad === LONE_SURROGATE_FOUND) {
        // cbor-x wrote a lone surrogate as 3 bytes that are not UTF-8 (a receiver would read 3
        // U+FFFD): send what TextEncoder and WebSocket text do, one U+FFFD for it.
        pool.give(bytes);
        bytes = encodeOnce(wellFormed(value, 0));
        bad = checkCbor(bytes, true);
      }
      if (bad !== undefined) {
        throw new CodecError(
          bad === "tag 27 is not accepted"
            ? "Cannot encode value: Error and RegExp objects cannot be sent (send toPlainError(err) or a string)"
            : `Cannot encode value: ${bad}`,
        );
      }
      return bytes;
    },
    pooled(bytes: Uint8Array): boolean {
      return pool.owns(bytes);
    },
    release(bytes: Uint8Array): void {
      pool.give(bytes);
    },
    decode(bytes: Uint8Array): unknown {
      const bad = checkCbor(bytes);
      if (bad !== undefined) throw new CodecError(`Cannot decode ${bytes.byteLength} bytes: ${bad}`);
      try {
        return enc.decode(bytes);
      } catch (cause) {
        throw new CodecError(`Cannot decode ${bytes.byteLength} bytes: ${(cause as Error).message}`, { cause });
      }
    },
  };
}

/**
 * Typed arrays at least this large are not encoded by cbor-x (which copies them into its growing
 * buffer and then out again): the bytes around them are, and the array's own bytes are copied
 * once, straight into the result. The bytes decode exactly as cbor-x's would.
 */
export const LARGE_TYPED_ARRAY = 64 * 1024;

// cbor-x's tags for typed arrays (RFC 8746, little-endian forms; cbor-x picks these on
// little-endian machines, which is every machine Node and Deno run on).
type TypedArrayClass = new (buffer: ArrayBufferLike, byteOffset?: number, length?: number) => ArrayBufferView;

/**
 * `Float16Array` where the runtime has one (Deno 2, Node 24 and later); Node 20 has none. cbor-x
 * does not know the class and would write it as a plain array of numbers, so ditask writes it as
 * RFC 8746's float16 little-endian typed array (tag 84), like the other typed arrays.
 */
const Float16 = (globalThis as { Float16Array?: TypedArrayClass }).Float16Array;

/** The value of the IEEE 754 half-precision number with bits `h`. */
function halfToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

let halves: Float32Array | undefined;

/**
 * Decode a float16 typed array (tag 84 little-endian, 80 big-endian). Where the runtime has
 * `Float16Array`, it is one: a view of `bytes` when they are aligned and in this machine's order,
 * as cbor-x does for the other classes, else a copy. Elsewhere (Node 20) it is a `Float32Array`
 * with the same values (every float16 value is exact in float32).
 */
function decodeFloat16(bytes: Uint8Array, littleEndian: boolean): ArrayBufferView {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength % 2 !== 0) throw new RangeError("a float16 array needs an even number of bytes");
  const n = bytes.byteLength / 2;
  if (Float16 && littleEndian === LITTLE_ENDIAN) {
    if ((bytes.byteOffset & 1) === 0) return new Float16(bytes.buffer, bytes.byteOffset, n);
    return new Float16(Uint8Array.prototype.slice.call(bytes).buffer);
  }
  const out = (Float16 ? new Float16(new ArrayBuffer(n * 2)) : new Float32Array(n)) as unknown as { [i: number]: number };
  if (!Float16) halves ??= Float32Array.from({ length: 0x10000 }, (_, h) => halfToNumber(h));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) {
    const h = view.getUint16(2 * i, littleEndian);
    out[i] = halves ? halves[h]! : halfToNumber(h);
  }
  return out as unknown as ArrayBufferView;
}

// Registered with cbor-x once per process (its extensions are global to the module).
type Extension = Parameters<typeof cbor.addExtension>[0];
cbor.addExtension({
  Class: Float16 ?? class NoFloat16 {},
  tag: 84,
  // A Buffer, which cbor-x writes as a plain byte string (a Uint8Array would get tag 64).
  encode: (v: ArrayBufferView, encode: (x: unknown) => Uint8Array) => encode(Buffer.from(v.buffer, v.byteOffset, v.byteLength)),
  decode: (bytes: Uint8Array) => decodeFloat16(bytes, true),
} as Extension);
cbor.addExtension({ tag: 80, decode: (bytes: Uint8Array) => decodeFloat16(bytes, false) } as Extension);

// Objects that cbor-x would write as an empty map, losing what they hold without a word (a Promise
// passed without `await` arrived as {}), or fail on with a puzzling message (a Blob). Refused.
const UNSENDABLE: Array<[unknown, string]> = [
  [Promise, "a Promise cannot be sent (did you forget await?)"],
  [WeakMap, "a WeakMap cannot be sent (its entries cannot be listed; use a Map)"],
  [WeakSet, "a WeakSet cannot be sent (its entries cannot be listed; use a Set)"],
  [globalThis.WeakRef, "a WeakRef cannot be sent (send what it refers to)"],
  [globalThis.SharedArrayBuffer, "a SharedArrayBuffer cannot be sent as it is (send a typed array over it: new Uint8Array(sab))"],
  [globalThis.Blob, "a Blob cannot be sent (send its bytes: new Uint8Array(await blob.arrayBuffer()))"],
];
for (const [Class, why] of UNSENDABLE) {
  if (typeof Class !== "function") continue;
  cbor.addExtension({ Class, encode: () => { throw new TypeError(why); } } as unknown as Extension);
}

const TYPED_TAGS = new Map<unknown, number>([
  [Uint8Array, 64],
  [Uint8ClampedArray, 68],
  [Uint16Array, 69],
  [Uint32Array, 70],
  [BigUint64Array, 71],
  [Int8Array, 72],
  [Int16Array, 77],
  [Int32Array, 78],
  [BigInt64Array, 79],
  [Float32Array, 85],
  [Float64Array, 86],
  ...(Float16 ? [[Float16, 84] as const] : []),
]);
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
/** How deep into arrays and plain objects large typed arrays are looked for. */
const GATHER_DEPTH = 8;
/** How many values one look may visit (it runs on every encode; small events stop at once). */
const GATHER_BUDGET = 256;
let budget = 0;

function isLarge(v: ArrayBufferView): boolean {
  return v.byteLength >= LARGE_TYPED_ARRAY && LITTLE_ENDIAN && TYPED_TAGS.has(v.constructor);
}

function isPlainObject(v: object): v is Record<string, unknown> {
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/** Whether `v` holds a large typed array (in arrays and plain objects, within the look's budget). */
function findLarge(v: unknown, depth: number): boolean {
  if (depth === 0) budget = GATHER_BUDGET;
  if (--budget < 0 || typeof v !== "object" || v === null) return false;
  if (ArrayBuffer.isView(v)) return isLarge(v);
  if (depth >= GATHER_DEPTH) return false;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      if (findLarge(v[i], depth + 1)) return true;
      if (budget < 0) return false;
    }
    return false;
  }
  if (!isPlainObject(v)) return false;
  for (const k in v) {
    if (Object.hasOwn(v, k) && findLarge(v[k], depth + 1)) return true;
    if (budget < 0) return false;
  }
  return false;
}

/** Lists of at most this many typed arrays are written by {@link TypedListWriter}. */
const TYPED_LIST_MAX = 8;
/** Its output is carved from chunks of this size (like cbor-x's buffer, a kept result pins its chunk). */
const TYPED_LIST_CHUNK = 64 * 1024;

/**
 * Writes an array whose items are all small typed arrays (of the exact classes in TYPED_TAGS, below
 * {@link LARGE_TYPED_ARRAY}), the argument list of `task.emit("obs", f32)` and the like: the same
 * bytes cbor-x writes (an array head, then per item its tag, a byte-string head and the bytes), at
 * about a fifth of the cost (cbor-x takes 0.4 µs per Uint8Array and 1.1 µs per small
 * Float32Array, mostly to find the array's class and make a Buffer of it). Anything else is left to
 * cbor-x.
 */
class TypedListWriter {
  #chunk: Uint8Array = new Uint8Array(0);
  #used = 0;
  readonly #tagBytes: boolean;
  /** The items' tags, found while sizing the output and used while writing it. */
  readonly #tags = new Uint8Array(TYPED_LIST_MAX);

  /** @param tagBytes Tag `Uint8Array`s (tag 64), as cbor-x's `tagUint8Array`. */
  constructor(tagBytes: boolean) {
    this.#tagBytes = tagBytes;
  }

  /** The encoding of `v`, or `undefined` when `v` is not such a list. */
  encode(v: unknown): Uint8Array | undefined {
    if (!Array.isArray(v) || v.length === 0 || v.length > TYPED_LIST_MAX || !LITTLE_ENDIAN) return undefined;
    let size = 1;
    for (let i = 0; i < v.length; i++) {
      const a: unknown = v[i];
      if (!ArrayBuffer.isView(a) || a.byteLength >= LARGE_TYPED_ARRAY) return undefined;
      const tag = TYPED_TAGS.get(a.constructor);
      if (tag === undefined) return undefined;
      this.#tags[i] = tag;
      size += (tag === 64 && !this.#tagBytes ? 0 : 2) + headSize(a.byteLength) + a.byteLength;
    }
    if (this.#used + size > this.#chunk.byteLength) {
      this.#chunk = Buffer.allocUnsafeSlow(Math.max(TYPED_LIST_CHUNK, size));
      this.#used = 0;
    }
    const out = this.#chunk.subarray(this.#used, this.#used + size);
    this.#used += size;
    out[0] = 0x80 | v.length; // array head (at most 8 items)
    let pos = 1;
    for (let i = 0; i < v.length; i++) {
      const a = v[i] as ArrayBufferView;
      const tag = this.#tags[i]!;
      if (tag !== 64 || this.#tagBytes) {
        out[pos++] = 0xd8; // tag, one-byte number
        out[pos++] = tag;
      }
      pos = writeHead(out, pos, 2, a.byteLength);
      out.set(tag === 64 ? (a as Uint8Array) : new Uint8Array(a.buffer, a.byteOffset, a.byteLength), pos);
      pos += a.byteLength;
    }
    return out;
  }
}

/** A CBOR head of major type `major` for `n`, `size` bytes long, as its own bytes. */
function head(major: number, n: number, size: number = headSize(n)): Uint8Array {
  const h = new Uint8Array(size);
  writeHead(h, 0, major, n, size);
  return h;
}

/**
 * Encode `value`, which holds large typed arrays: cbor-x encodes what is around them, the heads
 * of the arrays and plain objects on the way to them are written here, and each large array is a
 * tag, a byte-string head and the array's bytes, copied once into a pooled buffer. Heads are
 * lengthened where that puts an array's bytes at a multiple of 8 from the start (valid CBOR: a
 * longer head than needed), so that a receiver holding the bytes at an aligned address decodes the
 * array as a view, not a copy.
 */
function encodeGathered(enc: { encode(v: unknown): Uint8Array }, value: unknown, pool: BufferPool): Uint8Array {
  const parts: Uint8Array[] = [];
  let size = 0;
  const push = (b: Uint8Array) => {
    parts.push(b);
    size += b.byteLength;
  };
  // Our own heads since the last large array: [part index, major type, value], in order. They
  // may still be lengthened without moving an array already placed.
  let flex: Array<[number, number, number]> = [];
  const pushHead = (major: number, n: number) => {
    flex.push([parts.length, major, n]);
    push(head(major, n));
  };
  // Lengthen the tag's head and up to two of the latest flexible heads so that the array's bytes,
  // `after` bytes past the end of what is written so far, start at a multiple of 8.
  const align = (after: number): number => {
    const cands = flex.slice(-2);
    const now = cands.map(([at]) => parts[at]!.byteLength);
    // Up to 5 bytes: cbor-x reads 9-byte heads of strings and containers badly.
    const options = now.map((n) => [1, 2, 3, 5].filter((s) => s >= n));
    const fixed = size - now.reduce((x, y) => x + y, 0) + after;
    const sizes = alignedSizes(fixed, [...options, [2, 3, 5, 9]]);
    if (!sizes) return 2;
    cands.forEach(([at, major, n], i) => {
      if (sizes[i] === now[i]) return;
      size += sizes[i]! - now[i]!;
      parts[at] = head(major, n, sizes[i]);
    });
    return sizes[cands.length]!;
  };
  const walk = (v: unknown, depth: number): void => {
    if (ArrayBuffer.isView(v) && isLarge(v)) {
      const tag = TYPED_TAGS.get(v.constructor)!;
      const len = v.byteLength;
      // The byte string's head stays minimal: cbor-x cannot read byte strings with a longer one.
      const b = headSize(len);
      push(head(6, tag, align(b)));
      push(head(2, len));
      push(new Uint8Array(v.buffer, v.byteOffset, len));
      flex = [];
      return;
    }
    if (depth < GATHER_DEPTH && typeof v === "object" && v !== null && findLarge(v, 0)) {
      if (Array.isArray(v)) {
        pushHead(4, v.length);
        for (let i = 0; i < v.length; i++) walk(v[i], depth + 1);
        return;
      }
      if (isPlainObject(v)) {
        const keys = Object.keys(v);
        pushHead(5, keys.length);
        for (const k of keys) {
          const key = utf8.encode(k);
          pushHead(3, key.byteLength);
          push(key);
          walk(v[k], depth + 1);
        }
        return;
      }
    }
    // Strings and integers in between are written here too, so that their heads can be lengthened.
    if (typeof v === "string" && !LONE_SURROGATE.test(v)) {
      const bytes = utf8.encode(v);
      pushHead(3, bytes.byteLength);
      push(bytes);
    } else if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) < 0x100000000 && !Object.is(v, -0)) {
      pushHead(v >= 0 ? 0 : 1, v >= 0 ? v : -1 - v);
    } else push(enc.encode(v));
  };
  walk(value, 0);
  const out = pool.take(size);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.byteLength;
  }
  return out;
}

const utf8 = new TextEncoder();
const LONE_SURROGATE = /[\uD800-\uDFFF]/;

/** The deepest nesting of arrays, maps and tags a decoded value may have. */
export const MAX_CBOR_DEPTH = 128;

// Tags a peer may send: dates (0, 1), bignums (2, 3), typed arrays (64-87), sets (258), maps (259).
// Everything else is refused before cbor-x sees it, in particular its record extension (which
// compiles readers with `new Function`), shared references (28, 29) and generic objects (27).
function allowedTag(t: number): boolean {
  return t <= 3 || (t >= 64 && t <= 87) || t === 258 || t === 259;
}

/**
 * Walk CBOR bytes without building anything and say what makes them unfit to decode: truncation,
 * a reserved encoding, nesting deeper than {@link MAX_CBOR_DEPTH}, a tag outside the allowed set,
 * a typed array of partial elements, an object key "__proto__" (cbor-x would rename it), or
 * trailing bytes. Cost: one step per item; byte strings are skipped, not read.
 *
 * @param encoded Bytes just encoded here: text strings are also searched for a UTF-16 surrogate
 *   written on its own (reported as {@link LONE_SURROGATE_FOUND}).
 * @returns `undefined` when the bytes are fine, else the reason.
 */
export function checkCbor(b: Uint8Array, encoded = false): string | undefined {
  src = b;
  pos = 0;
  inMapTag = false;
  scanText = encoded;
  try {
    if (item(0)) return "unexpected break";
    if (pos !== b.length) return "trailing bytes after the value";
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    src = EMPTY;
  }
}

// The walker's state lives at module level: no closures or objects per call (it runs per event).
const EMPTY = new Uint8Array(0);
let src: Uint8Array = EMPTY;
let pos = 0;

function fail(why: string): never {
  throw new RangeError(why);
}

function arg(info: number): number {
  if (info < 24) return info;
  const len = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : fail("reserved additional information");
  if (pos + len > src.length) fail("data ends early");
  let v = 0;
  for (let i = 0; i < len; i++) v = v * 256 + src[pos + i]!;
  pos += len;
  return v;
}

/** Check one item; returns true when it was a "break" (valid only in an indefinite container). */
function item(depth: number): boolean {
  if (depth > MAX_CBOR_DEPTH) fail(`nested deeper than ${MAX_CBOR_DEPTH}`);
  if (pos >= src.length) fail("data ends early");
  const first = src[pos++]!;
  const major = first >> 5;
  const info = first & 31;
  if (major === 7) {
    if (info === 31) return true;
    if (info === 24) pos += 1;
    else if (info === 25) pos += 2;
    else if (info === 26) pos += 4;
    else if (info === 27) pos += 8;
    else if (info > 27) fail("reserved additional information");
    if (pos > src.length) fail("data ends early");
    return false;
  }
  if (info === 31) {
    if (major < 2 || major === 6) fail("indefinite length on a type that has none");
    const keysFree = inMapTag;
    inMapTag = false;
    for (let i = 0; ; i++) {
      if (major === 5 && i % 2 === 0 && !keysFree && isProtoKey()) fail(PROTO_KEY);
      if (item(depth + 1)) return false;
    }
  }
  const n = arg(info);
  switch (major) {
    case 2:
    case 3:
      if (pos + n > src.length) fail("data ends early");
      if (major === 3 && scanText && n < SURROGATE_SCAN_MAX && hasSurrogate(pos, pos + n)) fail(LONE_SURROGATE_FOUND);
      pos += n;
      break;
    case 4:
      for (let i = 0; i < n; i++) if (item(depth + 1)) fail("unexpected break");
      break;
    case 5: {
      const keysFree = inMapTag;
      inMapTag = false;
      for (let i = 0; i < 2 * n; i++) {
        if (i % 2 === 0 && !keysFree && isProtoKey()) fail(PROTO_KEY);
        if (item(depth + 1)) fail("unexpected break");
      }
      break;
    }
    case 6:
      if (!allowedTag(n)) fail(`tag ${n} is not accepted`);
      if (n >= 64 && n <= 87) typedArrayContent(n);
      else {
        inMapTag = n === 259 && pos < src.length && src[pos]! >> 5 === 5;
        if (item(depth + 1)) fail("unexpected break");
      }
      break;
  }
  return false;
}

/** What checkCbor reports for an encoded lone surrogate (cbor-x writes one as 0xED 0xA0-0xBF ...). */
const LONE_SURROGATE_FOUND = "a lone surrogate in a text string";
let scanText = false;

/** Whether src[from..to) holds an encoded surrogate code point (not valid UTF-8). */
function hasSurrogate(from: number, to: number): boolean {
  for (let i = from; i < to - 1; i++) if (src[i] === 0xed && src[i + 1]! >= 0xa0) return true;
  return false;
}

/**
 * Text strings at least this long (in bytes) are not searched: cbor-x writes strings of 64 UTF-16
 * units or more with the runtime's UTF-8 encoder (utf8Write or TextEncoder), which already turns a
 * lone surrogate into U+FFFD; only its own loop for shorter strings (at most 189 bytes) does not.
 */
const SURROGATE_SCAN_MAX = 192;

/**
 * A copy of `v` in which every string is well formed (a lone surrogate becomes U+FFFD), through
 * arrays, plain objects, Maps and Sets; other values stay as they are.
 */
function wellFormed(v: unknown, depth: number): unknown {
  if (typeof v === "string") return (v as string & { toWellFormed(): string }).toWellFormed();
  if (typeof v !== "object" || v === null || ArrayBuffer.isView(v) || depth > MAX_CBOR_DEPTH) return v;
  if (Array.isArray(v)) return v.map((x) => wellFormed(x, depth + 1));
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [wellFormed(k, depth + 1), wellFormed(x, depth + 1)]));
  if (v instanceof Set) return new Set([...v].map((x) => wellFormed(x, depth + 1)));
  if (!isPlainObject(v)) return v;
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(v)) {
    Object.defineProperty(out, wellFormed(k, depth) as string, { value: wellFormed(v[k], depth + 1), enumerable: true, writable: true, configurable: true });
  }
  return out;
}

// cbor-x decodes an object key "__proto__" as "__proto_" (against prototype pollution), so such a
// key would arrive renamed; a Map (tag 259) keeps its keys as they are.
const PROTO_KEY = 'an object key "__proto__" (it would arrive renamed "__proto_"; use a Map)';
const PROTO_BYTES = [0x69, ...new TextEncoder().encode("__proto__")];
let inMapTag = false;

/** Whether the item at `pos` is the text string "__proto__" (does not move `pos`). */
function isProtoKey(): boolean {
  if (src[pos] !== 0x69 || pos + 10 > src.length) return false;
  for (let i = 1; i < 10; i++) if (src[pos + i] !== PROTO_BYTES[i]) return false;
  return true;
}

/**
 * Check the content of typed-array tag `tag` (64-87): a byte string of whole elements. RFC 8746
 * puts the element size in the tag's low bits (float: 2, 4, 8 or 16 bytes; integer: 1-8). cbor-x
 * would otherwise drop a trailing partial element without a word.
 */
function typedArrayContent(tag: number): void {
  if (pos >= src.length) fail("data ends early");
  const first = src[pos]!;
  if (first >> 5 !== 2 || (first & 31) === 31) fail(`tag ${tag} (a typed array) must hold a byte string`);
  pos++;
  const n = arg(first & 31);
  const size = tag & 16 ? 2 << (tag & 3) : 1 << (tag & 3);
  if (n % size !== 0) fail(`tag ${tag} (a typed array) holds ${n} bytes, not whole ${size}-byte elements`);
  if (pos + n > src.length) fail("data ends early");
  pos += n;
}

/**
 * Why encoding `v` overflowed the stack: the path of a cycle in it (`.a.parent`), else that it
 * nests too deep. Looks through arrays, plain objects, Maps and Sets, at most 100000 values.
 */
function tooDeep(v: unknown): string {
  const onPath = new Set<unknown>();
  let budget = 100_000;
  // Deeper than this is reported as too deep (and the walk must not overflow the stack itself).
  const walk = (x: unknown, path: string, depth = 0): string | undefined => {
    if (typeof x !== "object" || x === null || ArrayBuffer.isView(x) || --budget < 0 || depth > 1000) return undefined;
    if (onPath.has(x)) return path || "the value itself";
    onPath.add(x);
    let found: string | undefined;
    if (Array.isArray(x) || x instanceof Set) {
      let i = 0;
      for (const y of x) if ((found = walk(y, `${path}[${i++}]`, depth + 1))) break;
    } else if (x instanceof Map) {
      for (const [k, y] of x) if ((found = walk(y, `${path}.get(${typeof k === "string" ? JSON.stringify(k) : "…"})`, depth + 1))) break;
    } else for (const k of Object.keys(x)) if ((found = walk((x as Record<string, unknown>)[k], `${path}.${k}`, depth + 1))) break;
    onPath.delete(x);
    return found;
  };
  const cycle = walk(v, "");
  return cycle !== undefined
    ? `it refers to itself (a cycle: ${cycle} is the object it is inside)`
    : `it nests too deep (more than ${MAX_CBOR_DEPTH} levels are refused anyway)`;
}

/** The codec used for event arguments. */
export const cborCodec: Codec = createCborCodec();

/** Whether cbor-x uses its native string extractor in this process (never on Deno). */
export const nativeCbor: boolean = cbor.isNativeAccelerationEnabled;
