import { suite } from "uvu";
import * as assert from "uvu/assert";
import { cborCodec, checkCbor, nativeCbor } from "../lib/codec.ts";
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

C.run();
