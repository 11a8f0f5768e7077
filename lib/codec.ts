import { runtimeKey, setEnv } from "./runtime.ts";
import { CodecError } from "./errors.ts";

// cbor-x's native string extractor (cbor-extract) is built for Node's V8. Deno loads it and then
// crashes the process on the first larger message with strings, so on Deno cbor-x must run pure JS.
// The switch is read when cbor-x loads, hence the dynamic import after setting it.
if (runtimeKey === "deno") setEnv("CBOR_NATIVE_ACCELERATION_DISABLED", "true");
const cbor = await import("cbor-x");

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
}

const WARM_UP = new Uint8Array(1024 * 1024);

/** Options of {@link createCborCodec}. */
export interface CborCodecOptions {
  /**
   * Tag `Uint8Array`s (tag 64) so they decode as `Uint8Array` (a copy) on every runtime. Without the
   * tag, byte strings decode as views into the input (a Node `Buffer` on Node).
   * @default true
   */
  tagUint8Array?: boolean;
}

/**
 * Make a CBOR codec (cbor-x with plain maps: no record extension, so Node and Deno produce the same
 * bytes). `Map`s keep being `Map`s (tag 259), typed arrays keep their class (tags 64-82), `Date`,
 * `bigint`, `undefined` and `null` round-trip.
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
  // cbor-x encodes into a shared buffer and starts a new one of the same size when fewer than
  // 2 KiB remain; it starts at 8 KiB, so small messages would need a new buffer every few encodes.
  // One large encode up front makes that buffer 1 MiB.
  enc.encode(WARM_UP);
  return {
    encode(value: unknown): Uint8Array {
      let bytes: Uint8Array;
      try {
        bytes = enc.encode(value);
      } catch (cause) {
        throw new CodecError(`Cannot encode value: ${(cause as Error).message}`, { cause });
      }
      // What a receiver would refuse is refused here, where the caller can see it.
      const bad = checkCbor(bytes);
      if (bad !== undefined) {
        throw new CodecError(
          bad === "tag 27 is not accepted"
            ? "Cannot encode value: Error and RegExp objects cannot be sent (send toPlainError(err) or a string)"
            : `Cannot encode value: ${bad}`,
        );
      }
      return bytes;
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
 * or trailing bytes. Cost: one step per item; byte strings are skipped, not read.
 *
 * @returns `undefined` when the bytes are fine, else the reason.
 */
export function checkCbor(b: Uint8Array): string | undefined {
  src = b;
  pos = 0;
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
    for (;;) if (item(depth + 1)) return false;
  }
  const n = arg(info);
  switch (major) {
    case 2:
    case 3:
      if (pos + n > src.length) fail("data ends early");
      pos += n;
      break;
    case 4:
      for (let i = 0; i < n; i++) if (item(depth + 1)) fail("unexpected break");
      break;
    case 5:
      for (let i = 0; i < 2 * n; i++) if (item(depth + 1)) fail("unexpected break");
      break;
    case 6:
      if (!allowedTag(n)) fail(`tag ${n} is not accepted`);
      if (item(depth + 1)) fail("unexpected break");
      break;
  }
  return false;
}

/** The codec used for event arguments. */
export const cborCodec: Codec = createCborCodec();

/** Whether cbor-x uses its native string extractor in this process (never on Deno). */
export const nativeCbor: boolean = cbor.isNativeAccelerationEnabled;
