// In-process cost of each stage of the mesh's path for one event, in CPU µs (best of several
// rounds, so other load on the machine matters little), next to cheaper alternatives: the numbers
// behind the proposals in docs/performance.md. No sockets: the socket and syscall cost is what the
// bare-ws baseline measures.
//
//   node dist/bench/stages.js [--quick]        deno run -A bench/stages.ts [--quick]
import process from "node:process";
import { Buffer } from "node:buffer";
import { Task } from "../lib/task.ts";
import { cborCodec, nativeCbor } from "../lib/codec.ts";
import { encodeBatch, encodeEvent, parseFrame } from "../lib/transport/ws/protocol.ts";
import type { PeerEvent, Transport, TransportMessage } from "../lib/transport/types.ts";
import { cpuMicros, makePayload } from "./control.ts";

const quick = process.argv.includes("--quick");
const ROUNDS = quick ? 3 : 7;
const ROUND_MS = quick ? 60 : 200;
const TOPIC = "task.bench.data";
/** The mesh flushes a link's queue when it reaches 1 MiB (MAX_BATCH_BYTES). */
const BATCH_BYTES = 1024 * 1024;

/**
 * CPU time per call of `fn` (µs): the median of ROUNDS rounds of about ROUND_MS each (a round amortises
 * occasional costs such as cbor-x growing its buffer; the median drops rounds disturbed by others).
 */
function time(fn: () => unknown, perCall = 1): number {
  const rounds: number[] = [];
  let n = 1;
  // calibrate
  for (;;) {
    const t = performance.now();
    for (let i = 0; i < n; i++) fn();
    const dt = performance.now() - t;
    if (dt > ROUND_MS / 4) {
      n = Math.max(1, Math.round((n * ROUND_MS) / dt));
      break;
    }
    n *= 4;
  }
  // Rounds are timed in CPU time of this process (not wall time), so that other processes on the
  // machine slow the numbers down less.
  for (let r = 0; r < ROUNDS; r++) {
    const c = cpuMicros();
    for (let i = 0; i < n; i++) fn();
    rounds.push((cpuMicros() - c) / n / perCall);
  }
  rounds.sort((a, b) => a - b);
  return rounds[Math.floor(rounds.length / 2)]!;
}

/** The JavaScript masking loop of ws without bufferutil (lib/buffer-util.js `_mask`). */
function wsMask(source: Uint8Array, mask: Uint8Array, output: Uint8Array, offset: number, length: number): void {
  for (let i = 0; i < length; i++) output[offset + i] = source[i]! ^ mask[i & 3]!;
}

/** A transport that sends nowhere and lets the caller inject received messages. */
class NullTransport implements Transport {
  readonly nodeId = 0;
  readonly peers: number[] = [1];
  #msg: ((m: TransportMessage) => void) | undefined;
  open(): Promise<void> {
    return Promise.resolve();
  }
  publish(_topic: string, _payload: Uint8Array): void {}
  subscribe(): void {}
  unsubscribe(): void {}
  onMessage(fn: (m: TransportMessage) => void): () => void {
    this.#msg = fn;
    return () => {};
  }
  onPeer(_fn: (e: PeerEvent) => void): () => void {
    return () => {};
  }
  onError(): () => void {
    return () => {};
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
  inject(m: TransportMessage): void {
    this.#msg!(m);
  }
}

/** A hand-written BATCH writer: topic bytes cached, each payload copied once into one buffer. */
function writeBatch(seq: number, from: number, topicBytes: Uint8Array, payloads: Uint8Array[]): Uint8Array {
  let size = 16;
  for (const p of payloads) size += topicBytes.length + 9 + p.byteLength;
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  const head = (major: number, v: number) => {
    if (v < 24) out[o++] = (major << 5) | v;
    else if (v < 0x100) (out[o++] = (major << 5) | 24), (out[o++] = v);
    else if (v < 0x10000) (out[o++] = (major << 5) | 25), out.writeUInt16BE(v, o), (o += 2);
    else (out[o++] = (major << 5) | 26), out.writeUInt32BE(v, o), (o += 4);
  };
  head(4, 4);
  head(0, 2);
  head(0, seq);
  head(0, from);
  head(4, payloads.length * 2);
  for (const p of payloads) {
    out.set(topicBytes, o);
    o += topicBytes.length;
    head(2, p.byteLength);
    out.set(p, o);
    o += p.byteLength;
  }
  return out.subarray(0, o);
}

interface Row {
  stage: string;
  side: "send" | "recv" | "alt";
  values: Array<number | null>;
}

const sizes: Array<{ label: string; kind: "bytes" | "f32"; size: number }> = [
  { label: "64 B", kind: "bytes", size: 64 },
  { label: "1 KiB", kind: "bytes", size: 1024 },
  { label: "64 KiB", kind: "bytes", size: 65536 },
  { label: "4 MiB f32", kind: "f32", size: 4 * 1048576 },
];

const rows: Row[] = [];
const put = (stage: string, side: Row["side"], i: number, v: number | null) => {
  let r = rows.find((x) => x.stage === stage);
  if (!r) rows.push((r = { stage, side, values: sizes.map(() => null) }));
  r.values[i] = v;
};

const transport = new NullTransport();
const t = new Task();
t.router.attach(transport);
t.start();
let got = 0;
t.on("bench.data", () => void got++);
t.router.endStartup();

const mask = new Uint8Array([0x12, 0x34, 0x56, 0x78]);
const topicBytes = cborCodec.encode(TOPIC);

sizes.forEach((s, i) => {
  const value = makePayload(s.kind, s.size);
  const payload = cborCodec.encode([value]).slice();
  const perBatch = Math.max(1, Math.floor(BATCH_BYTES / (s.size + 24)));
  const items: Array<string | Uint8Array> = [];
  const payloads: Uint8Array[] = [];
  for (let k = 0; k < perBatch; k++) items.push(TOPIC, payload), payloads.push(payload);
  const frame = (perBatch === 1 ? encodeEvent(7, 1, TOPIC, payload) : encodeBatch(7, 1, items)).slice();
  const out = Buffer.allocUnsafe(frame.byteLength);

  // sender
  put("task.emit -> codec.encode (router, no transport)", "send", i, time(() => t.emit("bench.x", value)));
  put("  of which codec.encode([value])", "send", i, time(() => cborCodec.encode([value])));
  put(
    `envelope: encodeBatch/encodeEvent (cbor-x), per event`,
    "send",
    i,
    perBatch === 1 ? time(() => encodeEvent(7, 1, TOPIC, payload)) : time(() => encodeBatch(7, 1, items), perBatch),
  );
  put("ws client masking (JS loop, per event)", "send", i, time(() => wsMask(frame, mask, out, 0, frame.byteLength), perBatch));
  // receiver
  put("ws receive: join TCP chunks (1 copy, per event)", "recv", i, time(() => out.set(frame), perBatch));
  put("ws server unmasking (JS loop, per event)", "recv", i, time(() => wsMask(frame, mask, out, 0, frame.byteLength), perBatch));
  put("parseFrame (envelope decode + checks), per event", "recv", i, time(() => parseFrame(frame), perBatch));
  put("router + task: decode args, dispatch to listener", "recv", i, time(() => transport.inject({ topic: TOPIC, payload, from: 1 })));
  put("  of which codec.decode(payload)", "recv", i, time(() => cborCodec.decode(payload)));
  // alternatives
  put("ALT envelope: hand-written writer, topic cached, 1 copy", "alt", i, perBatch === 1
    ? time(() => writeBatch(7, 1, topicBytes, [payload]))
    : time(() => writeBatch(7, 1, topicBytes, payloads), perBatch));
  put("ALT masking with a zero key (ws skips it)", "alt", i, 0);
  if (s.kind === "f32") {
    const arr = value as Float32Array;
    const bytes = new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
    put("ALT typed array: header + bytes, 1 copy (Buffer.concat)", "alt", i, time(() => Buffer.concat([Buffer.alloc(8), bytes])));
    // Decoding a Float32Array whose bytes are 4-aligned in the frame is a view (no copy).
    const aligned = Buffer.allocUnsafe(payload.byteLength + 8);
    let best: number | null = null;
    for (let shift = 0; shift < 4; shift++) {
      const view = aligned.subarray(shift, shift + payload.byteLength);
      view.set(payload);
      const us = time(() => cborCodec.decode(view));
      best = best === null ? us : Math.min(best, us);
    }
    put("ALT codec.decode with the floats 4-aligned in the frame (view)", "alt", i, best);
  }
});

const fmt = (v: number | null) => (v === null ? "—" : v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(2) : v.toFixed(3));
const w0 = Math.max(...rows.map((r) => r.stage.length));
const header = `| ${"stage (CPU µs per event)".padEnd(w0)} | ${sizes.map((s) => s.label.padStart(10)).join(" | ")} |`;
const deno = (globalThis as { Deno?: { version: { deno: string } } }).Deno;
process.stdout.write(
  `ditask pipeline stages, ${deno ? `Deno ${deno.version.deno}` : `Node ${process.versions.node}`}, cbor-x native ${nativeCbor ? "on" : "off"}, ` +
    `median of ${ROUNDS} rounds; events per 1 MiB batch: ${sizes.map((s) => Math.max(1, Math.floor(BATCH_BYTES / (s.size + 24)))).join(", ")}\n\n`,
);
process.stdout.write(header + "\n");
process.stdout.write(`|${"-".repeat(w0 + 2)}|${sizes.map(() => "-".repeat(12)).join("|")}|\n`);
for (const r of rows) process.stdout.write(`| ${r.stage.padEnd(w0)} | ${r.values.map((v) => fmt(v).padStart(10)).join(" | ")} |\n`);
t.stop();
void got;
process.exit(0);
