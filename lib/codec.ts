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
      try {
        return enc.encode(value);
      } catch (cause) {
        throw new CodecError(`Cannot encode value: ${(cause as Error).message}`, { cause });
      }
    },
    decode(bytes: Uint8Array): unknown {
      try {
        return enc.decode(bytes);
      } catch (cause) {
        throw new CodecError(`Cannot decode ${bytes.byteLength} bytes: ${(cause as Error).message}`, { cause });
      }
    },
  };
}

/** The codec used for event arguments. */
export const cborCodec: Codec = createCborCodec();

/** Whether cbor-x uses its native string extractor in this process (never on Deno). */
export const nativeCbor: boolean = cbor.isNativeAccelerationEnabled;
