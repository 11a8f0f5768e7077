import { Buffer } from "node:buffer";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { cborCodec, checkCbor, createCborCodec, LARGE_TYPED_ARRAY, nativeCbor } from "../lib/codec.ts";
import { CodecError } from "../lib/errors.ts";
import { runtimeKey } from "../lib/runtime.ts";

const C = suite("codec");
const rt = (v: unknown) => cborCodec.decode(cborCodec.encode(v));

C("numbers, strings, arrays, objects, null and undefined round-trip", () => {
  const v = { n: 1.5, i: -7, s: "ü", a: [1, "x", null], o: { deep: { x: undefined } }, z: null };
  assert.equal(rt(v), v);
  assert.is(rt(undefined), undefined);
});

C("Map, Date and bigint keep their types", () => {
  const m = rt(new Map<unknown, unknown>([[1, "a"], ["k", [2]]])) as Map<unknown, unknown>;
  assert.ok(m instanceof Map);
  assert.equal([...m], [[1, "a"], ["k", [2]]]);
  const d = rt(new Date(1234567));
  assert.ok(d instanceof Date);
  assert.is((d as Date).getTime(), 1234567);
  assert.is(rt(5n), 5n);
  assert.is(rt(-(2n ** 70n)), -(2n ** 70n));
});

C("every typed array arrives as the same class with the same values", () => {
  const arrays = [
    new Uint8Array([1, 255]),
    new Uint8ClampedArray([3, 4]),
    new Int8Array([-1, 2]),
    new Uint16Array([65535]),
    new Int16Array([-300]),
    new Uint32Array([4e9]),
    new Int32Array([-2e9]),
    new Float32Array([1.5, -0.25]),
    new Float64Array([Math.PI]),
    new BigInt64Array([-5n]),
    new BigUint64Array([2n ** 63n]),
  ];
  for (const a of arrays) {
    const b = rt(a) as typeof a;
    assert.is(b.constructor, a.constructor, a.constructor.name);
    assert.equal([...b], [...a] as never, a.constructor.name);
  }
});

// Float16Array exists on Deno 2 and Node 24+, not on Node 20: there a float16 array arrives as a
// Float32Array with the same values.
const Float16 = (globalThis as { Float16Array?: new (v: number[] | number | ArrayBuffer, o?: number, n?: number) => Float32Array }).Float16Array;
// [1.5, -2, -0, Infinity, NaN, 65504 (largest), 2 ** -24 (smallest subnormal)] as tag 84 (float16,
// little-endian): the same bytes on every runtime.
const HALVES = [1.5, -2, -0, Infinity, NaN, 65504, 2 ** -24];
const HALVES_CBOR = "d8544e003e00c00080007c007eff7b0100";

C("a float16 array arrives as a Float16Array where the runtime has one, else as a Float32Array", () => {
  const fromHex = (hex: string) => cborCodec.decode(Buffer.from(hex, "hex")) as Float32Array;
  const expected = Float16 ?? Float32Array;
  const le = fromHex(HALVES_CBOR);
  assert.is(le.constructor, expected);
  assert.equal([...le], HALVES);
  assert.ok(Object.is(le[2], -0));
  // Big-endian (tag 80), as other CBOR libraries may write it.
  const be = fromHex("d85044" + "3e00c000");
  assert.is(be.constructor, expected);
  assert.equal([...be], [1.5, -2]);
  if (!Float16) return;
  const a = new Float16(HALVES);
  assert.is(Buffer.from(cborCodec.encode(a)).toString("hex"), HALVES_CBOR, "not a plain array of numbers");
  // In lists, in objects, and large (written by ditask's own encoders, decoded as a view).
  const big = new Float16(LARGE_TYPED_ARRAY).map((_, i) => i / 7);
  const cases: Array<[Float32Array[] | Record<string, Float32Array>, boolean]> = [[[a, new Float32Array([1])], false], [{ w: big, b: a }, true], [[big], true]];
  for (const [v, large] of cases) {
    const bytes = cborCodec.encode(v);
    const back = cborCodec.decode(bytes) as Record<string, Float32Array>;
    const items = Array.isArray(v) ? v : Object.values(v);
    const got = Array.isArray(back) ? back : Object.values(back);
    items.forEach((x, i) => {
      assert.is(got[i]!.constructor, x.constructor);
      assert.equal([...got[i]!], [...x]);
    });
    if (large) assert.is(got[0]!.buffer, bytes.buffer, "a large one is a view");
  }
});

C("a typed array whose bytes are not whole elements is refused, not cut short", () => {
  // Tag 85 (float32) with 6 bytes; tag 86 (float64) holding a number; tag 84 with 3 bytes.
  for (const hex of ["d85546000000000000", "d85501", "d85443000000"]) {
    assert.throws(() => cborCodec.decode(Buffer.from(hex, "hex")), (e: unknown) => e instanceof CodecError && /typed array/.test((e as Error).message), hex);
  }
  assert.is(checkCbor(Buffer.from("d85548" + "00".repeat(8), "hex")), undefined);
});

C('an object key "__proto__" is refused, not renamed; a Map keeps it', () => {
  // JSON.parse makes "__proto__" an own key; cbor-x would decode it as "__proto_".
  for (const v of [JSON.parse('{"__proto__": 1}'), { a: [JSON.parse('{"x": 1, "__proto__": {"y": 2}}')] }]) {
    assert.throws(() => cborCodec.encode(v), (e: unknown) => e instanceof CodecError && /"__proto__"/.test((e as Error).message));
  }
  // From a peer: a definite map and an indefinite one, each {"__proto__": 1}.
  const key = Buffer.from("__proto__").toString("hex");
  for (const hex of ["a169" + key + "01", "bf69" + key + "01ff"]) {
    assert.throws(() => cborCodec.decode(Buffer.from(hex, "hex")), (e: unknown) => e instanceof CodecError && /"__proto__"/.test((e as Error).message), hex);
  }
  const m = rt(new Map([["__proto__", 1]])) as Map<string, number>;
  assert.ok(m instanceof Map);
  assert.is(m.get("__proto__"), 1);
  assert.equal(rt({ __proto_: "__proto__", ["__proto__x"]: [1] }), { __proto_: "__proto__", ["__proto__x"]: [1] });
});

C("a lone surrogate arrives as one U+FFFD, as TextEncoder sends it, in short and long strings", () => {
  const long = "x".repeat(70_000);
  const cases: Array<[unknown, unknown]> = [
    ["\uD800", "\uFFFD"],
    [["a\uDC00b", { "k\uD83D": ["\uD83D!"] }, 1], ["a\uFFFDb", { "k\uFFFD": ["\uFFFD!"] }, 1]],
    [new Map([["\uD800", new Set(["\uDFFF"])]]), new Map([["\uFFFD", new Set(["\uFFFD"])]])],
    [[long + "\uD83D", new Float32Array(LARGE_TYPED_ARRAY)], [long + "\uFFFD", new Float32Array(LARGE_TYPED_ARRAY)]],
    ["pairs stay: \uD83D\uDE00", "pairs stay: \uD83D\uDE00"],
    // The longest strings cbor-x writes with its own loop (63 units), and the shortest it does not.
    [["\uD800".repeat(63), "\uD800".repeat(64)], ["\uFFFD".repeat(63), "\uFFFD".repeat(64)]],
  ];
  for (const [sent, expected] of cases) {
    const bytes = cborCodec.encode(sent);
    assert.not.ok(/\xED[\xA0-\xBF]/.test(Buffer.from(bytes).toString("latin1")), "valid UTF-8 on the wire");
    assert.equal(cborCodec.decode(bytes), expected);
  }
});

C("a Promise (a missing await), weak collections, a SharedArrayBuffer and a Blob are refused, not sent as {}", () => {
  const cases: Array<[unknown, RegExp]> = [
    [Promise.resolve(1), /a Promise cannot be sent \(did you forget await\?\)/],
    [(async () => 1)(), /a Promise cannot be sent/],
    [new WeakMap(), /a WeakMap cannot be sent/],
    [new WeakSet(), /a WeakSet cannot be sent/],
    [new WeakRef({}), /a WeakRef cannot be sent/],
    [new SharedArrayBuffer(8), /a SharedArrayBuffer cannot be sent as it is \(send a typed array over it/],
    [new Blob(["hi"]), /a Blob cannot be sent \(send its bytes/],
  ];
  for (const [v, re] of cases) {
    for (const wrapped of [v, [v], { deep: [1, { v }] }, [new Float32Array(LARGE_TYPED_ARRAY), v]]) {
      assert.throws(() => cborCodec.encode(wrapped), (e: unknown) => e instanceof CodecError && re.test((e as Error).message), re.source);
    }
  }
  // A typed array over a SharedArrayBuffer is sent as its bytes.
  const shared = new Uint8Array(new SharedArrayBuffer(4)).fill(7);
  assert.equal([...(rt(shared) as Uint8Array)], [7, 7, 7, 7]);
});

C("a value that refers to itself is refused naming the path of the cycle; a very deep one as too deep", () => {
  const a: Record<string, unknown> = { name: "x", child: { list: [1, 2] } };
  ((a.child as { list: unknown[] }).list).push(a);
  const m = new Map<string, Record<string, unknown>>([["k", {}]]);
  m.get("k")!.back = m;
  let deep: unknown[] = [];
  const top = deep;
  for (let i = 0; i < 100_000; i++) deep = (deep[0] = []) as unknown[];
  const cases: Array<[unknown, RegExp]> = [
    [a, /it refers to itself \(a cycle: \.child\.list\[2\] is the object it is inside\)/],
    [[m], /a cycle: \[0\]\.get\("k"\)\.back is/],
    [top, /it nests too deep/],
  ];
  for (const [v, re] of cases) {
    assert.throws(() => cborCodec.encode(v), (e: unknown) => e instanceof CodecError && re.test((e as Error).message), re.source);
  }
});

C("a 1M-element Float32Array round-trips intact", () => {
  const a = new Float32Array(1_000_000);
  for (let i = 0; i < a.length; i++) a[i] = i * 0.5;
  const b = rt(a) as Float32Array;
  assert.ok(b instanceof Float32Array);
  assert.is(b.length, a.length);
  assert.is(b[999_999], 999_999 * 0.5);
});

C("a typed array view of a larger buffer encodes only the view", () => {
  const big = new Float32Array([1, 2, 3, 4]);
  const view = big.subarray(1, 3);
  assert.equal([...(rt(view) as Float32Array)], [2, 3]);
});

C("functions and symbols are rejected with CodecError", () => {
  assert.throws(() => cborCodec.encode({ f() {} }), (e: unknown) => e instanceof CodecError);
  assert.throws(() => cborCodec.encode(Symbol("s")), (e: unknown) => e instanceof CodecError);
});

C("Error and RegExp objects are refused at encode time with a hint", () => {
  for (const v of [new Error("x"), /re/]) {
    assert.throws(() => cborCodec.encode([v]), (e: unknown) => e instanceof CodecError && /toPlainError/.test((e as Error).message));
  }
});

C("refused on decode: cbor-x records, generic objects (tag 27), deep nesting, trailing bytes", () => {
  const cases: Array<[number[], RegExp]> = [
    [[0xd9, 0xdf, 0xff, 0x83, 0x19, 0xe0, 0x08, 0x81, 0x61, 0x61, 0x01], /tag 57343/], // record definition
    [[0xd8, 0x1b, 0x82, 0x64, 0x65, 0x76, 0x61, 0x6c, 0x61, 0x31], /tag 27/], // ["eval", "1"]
    [[0xd8, 0x1c, 0x01], /tag 28/],
    [Array(200).fill(0x81).concat([0x01]), /nested deeper/],
    [[0x01, 0x02], /trailing/],
    [[0x5a, 0xff, 0xff, 0xff, 0xff], /ends early/],
    [[0x1c], /reserved/],
  ];
  for (const [bytes, re] of cases) {
    assert.throws(() => cborCodec.decode(new Uint8Array(bytes)), (e: unknown) => e instanceof CodecError && re.test((e as Error).message), re.source);
  }
  assert.is(checkCbor(cborCodec.encode({ a: [1, new Float32Array(3), new Map([[1, 2]]), new Set([1]), new Date(0), 2n ** 80n] })), undefined);
});

C("bad bytes are rejected with CodecError", () => {
  assert.throws(() => cborCodec.decode(new Uint8Array([0x9f])), (e: unknown) => e instanceof CodecError);
});

C("cbor-x runs pure JS on Deno (its native addon crashes Deno)", () => {
  if (runtimeKey === "deno") assert.is(nativeCbor, false);
  else assert.type(nativeCbor, "boolean");
  // A larger message with many strings: the shape that crashed Deno with the addon.
  const v = Array.from({ length: 5000 }, (_, i) => ({ name: `string number ${i}`, tags: ["a", "b", `c${i}`] }));
  assert.equal(rt(v), v);
});

// Large typed arrays bypass cbor-x's encoder (one copy into a pooled buffer); what comes out must
// decode exactly as cbor-x's own encoding does, on a decoder that knows nothing of the trick.
// cbor-x is imported after lib/codec.ts has loaded it: a static import could load it first, with
// its native addon on Deno.
const { Decoder, Encoder } = await import("cbor-x");
const plainDecoder = new Decoder({ mapsAsObjects: true, useRecords: false } as ConstructorParameters<typeof Decoder>[0]);

function large<T>(make: (n: number) => T, bytesPer: number): T {
  return make(Math.ceil(LARGE_TYPED_ARRAY / bytesPer) + 3);
}

C("large typed arrays of every class decode as cbor-x's encoding does, alone and nested", () => {
  const makers: Array<() => ArrayBufferView> = [
    () => large((n) => new Uint8Array(n).map((_, i) => i), 1),
    () => large((n) => new Uint8ClampedArray(n).map((_, i) => i), 1),
    () => large((n) => new Int8Array(n).map((_, i) => -i), 1),
    () => large((n) => new Uint16Array(n).map((_, i) => i * 3), 2),
    () => large((n) => new Int16Array(n).map((_, i) => -i), 2),
    () => large((n) => new Uint32Array(n).map((_, i) => i * 7919), 4),
    () => large((n) => new Int32Array(n).map((_, i) => -i * 7919), 4),
    () => large((n) => new Float32Array(n).map((_, i) => i / 3), 4),
    () => large((n) => new Float64Array(n).map((_, i) => i / 7), 8),
    () => large((n) => new BigInt64Array(n).map((_, i) => BigInt(-i)), 8),
    () => large((n) => new BigUint64Array(n).map((_, i) => BigInt(i) << 40n), 8),
  ];
  for (const make of makers) {
    const a = make();
    const name = a.constructor.name;
    const shapes: unknown[] = [
      [a],
      [1, "two", a, { three: 3 }],
      [{ weights: a, step: 5, tags: ["x"] }],
      [{ layers: [{ w: a, b: new Float32Array(3) }], meta: { n: null, u: undefined } }],
      { k: a, [`key with ü ${name}`]: a },
    ];
    for (const v of shapes) {
      const bytes = cborCodec.encode(v);
      assert.is(checkCbor(bytes), undefined, name);
      const want = plainDecoder.decode(createCborCodec().encode(structuredClone(v)));
      assert.equal(plainDecoder.decode(bytes), want, name);
      assert.equal(cborCodec.decode(bytes), v, name);
    }
  }
});

C("argument lists of small typed arrays are written as the same bytes cbor-x writes", () => {
  const options = { useRecords: false, mapsAsObjects: true, useTag259ForMaps: true };
  const byte = (n: number) => Array.from({ length: n }, (_, i) => (i * 37) & 255);
  const backing = new Uint8Array(byte(4096)).buffer;
  // Lengths around each byte-string head size (1, 2 and 3 bytes), odd offsets, every class.
  const arrays: ArrayBufferView[] = [
    new Uint8Array(0), new Uint8Array(byte(23)), new Uint8Array(byte(24)), new Uint8Array(byte(255)),
    new Uint8Array(byte(256)), new Uint8Array(backing, 3, 1000), new Uint8ClampedArray(byte(5)),
    new Int8Array([-1, 2]), new Uint16Array([1, 65535]), new Int16Array([-2, 3]), new Uint32Array([4e9]),
    new Int32Array([-5]), new Float32Array([1.5, -0, NaN]), new Float64Array([Math.PI]),
    new BigInt64Array([-7n]), new BigUint64Array([2n ** 63n]),
    new Float32Array(backing, 4, 16), new Uint8Array(LARGE_TYPED_ARRAY - 1),
  ];
  const lists: ArrayBufferView[][] = [
    ...arrays.map((a) => [a]),
    arrays.slice(0, 8),
    [new Float32Array([1]), new Uint8Array([2]), new Float64Array([3])],
  ];
  for (const tagUint8Array of [true, false]) {
    const codec = createCborCodec({ tagUint8Array });
    const reference = new Encoder({ ...options, tagUint8Array } as ConstructorParameters<typeof Encoder>[0]);
    for (const list of lists) {
      const what = `${list.map((a) => `${a.constructor.name}(${a.byteLength})`).join(", ")} tagUint8Array ${tagUint8Array}`;
      const bytes = codec.encode(list);
      assert.equal([...bytes], [...reference.encode(list)], what);
      const back = codec.decode(bytes) as ArrayBufferView[];
      back.forEach((b, i) => {
        if (tagUint8Array || list[i]!.constructor !== Uint8Array) assert.is(b.constructor, list[i]!.constructor, what);
        assert.equal([...new Uint8Array(b.buffer, b.byteOffset, b.byteLength)], [...new Uint8Array(list[i]!.buffer, list[i]!.byteOffset, list[i]!.byteLength)], what);
      });
    }
  }
  // What is not such a list is cbor-x's to encode: a Buffer, a DataView, nine arrays, a number
  // among arrays, an empty list.
  const reference = new Encoder({ ...options, tagUint8Array: true } as ConstructorParameters<typeof Encoder>[0]);
  const others: unknown[] = [
    [Buffer.from([1, 2])], [new DataView(new ArrayBuffer(4))], Array.from({ length: 9 }, () => new Uint8Array([9])),
    [new Uint8Array([1]), 2], [],
  ];
  for (const v of others) assert.equal([...cborCodec.encode(v)], [...reference.encode(v)]);
  // Encoded bytes stay as they were when later encodes follow (results are carved, not reused).
  const first = cborCodec.encode([new Uint8Array([7, 7, 7])]);
  const copy = [...first];
  for (let i = 0; i < 50_000; i++) cborCodec.encode([new Uint8Array(8).fill(i & 255)]);
  assert.equal([...first], copy);
});

C("a large typed array is copied at encode: changing it afterwards does not change what was encoded", () => {
  const a = new Float32Array(LARGE_TYPED_ARRAY).fill(1);
  const bytes = cborCodec.encode([a]);
  a.fill(2);
  const [b] = cborCodec.decode(bytes) as [Float32Array];
  assert.is(b[0], 1);
  assert.is(b[b.length - 1], 1);
});

C("large typed arrays land 8-aligned in the encoding, so a receiver decodes them as views", () => {
  // Prefixes of every length in front of the array: the encoder lengthens heads to align it.
  let aligned = 0;
  for (let k = 0; k < 16; k++) {
    const a = new Float64Array(LARGE_TYPED_ARRAY / 8).fill(k);
    for (const v of [[{ ["x".repeat(k)]: a }], ["y".repeat(k), a], [{ n: "z".repeat(k), deeper: [k, a] }]]) {
      const bytes = cborCodec.encode(v);
      // The array's bytes are the last a.byteLength bytes of the encoding.
      if ((bytes.byteLength - a.byteLength) % 8 === 0) aligned++;
      const back = cborCodec.decode(bytes);
      assert.equal(back, v);
      const got = JSON.stringify(v[0]).includes("deeper")
        ? ((back as [{ deeper: [number, Float64Array] }])[0].deeper[1])
        : typeof v[0] === "string"
        ? (back as [string, Float64Array])[1]
        : (back as [Record<string, Float64Array>])[0]["x".repeat(k)]!;
      assert.is(got.buffer, bytes.buffer, `k=${k} ${JSON.stringify(v).slice(0, 30)}: decoded as a view, not a copy`);
    }
  }
  assert.is(aligned, 48);
});

C("large encodes come from a pool: a released buffer is reused, others are ignored", () => {
  const codec = createCborCodec();
  const a = new Float32Array(LARGE_TYPED_ARRAY);
  const first = codec.encode([a]);
  assert.ok(codec.pooled!(first));
  assert.not.ok(codec.pooled!(codec.encode([1, 2, 3])), "small encodes are cbor-x's, not pooled");
  const second = codec.encode([a]);
  assert.is.not(second.buffer, first.buffer, "a buffer in use is not handed out again");
  codec.release!(first);
  codec.release!(first); // twice: harmless
  codec.release!(new Uint8Array(10)); // not from this codec: ignored
  const third = codec.encode([a]);
  assert.is(third.buffer, first.buffer, "the released buffer is reused");
  const fourth = codec.encode([a]);
  assert.is.not(fourth.buffer, first.buffer, "released once, reused once");
  // A much smaller encode does not take a much larger free buffer.
  codec.release!(fourth);
  const big = codec.encode([new Float32Array(LARGE_TYPED_ARRAY * 4)]);
  codec.release!(big);
  const small = codec.encode([a]);
  assert.is.not(small.buffer, big.buffer);
});

C("objects with too many values to search fall back to cbor-x and still round-trip", () => {
  const v: Record<string, unknown> = {};
  for (let i = 0; i < 1000; i++) v[`k${i}`] = i;
  v.last = new Float32Array(LARGE_TYPED_ARRAY);
  const bytes = cborCodec.encode(v);
  assert.not.ok(cborCodec.pooled!(bytes));
  assert.equal(cborCodec.decode(bytes), v);
});

C.run();
