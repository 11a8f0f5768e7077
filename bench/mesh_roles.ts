// The ditask side: each process is one mesh node (WsMeshTransport + the process-wide task, joined
// the way Parallel.runner joins them), and events go through `task.emit` / `task.on`.
// Loopback tcp, like the bare-ws baseline. Node 1 dials node 0, so its sends are client-to-server
// (masked), as in the baseline.
import process from "node:process";
import { setImmediate } from "node:timers";
import { task, WsMeshTransport } from "../mod.ts";
import {
  busyWait,
  cpuMicros,
  checkF32,
  makePayload,
  memMiB,
  now,
  onCommands,
  percentile,
  Pump,
  report,
  RssSampler,
  Sink,
  type StreamSpec,
} from "./control.ts";

const MAX_PAYLOAD = 512 * 1024 * 1024;

/** What a mesh process does; given as JSON on its command line. */
export type MeshSpec = { id: number; dial: string[]; expect: number[] } & (
  | { mode: "recv"; stream: StreamSpec }
  | { mode: "send"; stream: StreamSpec }
  | { mode: "echo" }
  | { mode: "ping"; size: number; warm: number; count: number; ms: number }
  | { mode: "slow"; total: number; slowMs: number }
  | { mode: "flood"; size: number; total: number; timeoutMs: number }
  | { mode: "bcast"; size: number; ms: number; window: number; ackEvery: number }
);

/** Run the mesh node described by `spec`. */
export async function runMesh(spec: MeshSpec): Promise<void> {
  let go: () => void = () => {};
  onCommands((c) => {
    if (c.cmd === "go") go();
    else if (c.cmd === "rss") report({ type: "rss", ...memMiB() });
    else if (c.cmd === "quit") void quit();
    else if (c.cmd === "mark") mark();
    else if (c.cmd === "stop") stop();
  });
  let mark: () => void = () => {};
  let stop: () => void = () => {};
  const transport = new WsMeshTransport({
    nodeId: spec.id,
    listen: "tcp://127.0.0.1:0",
    dial: spec.dial,
    expect: spec.expect,
    maxPayload: MAX_PAYLOAD,
    connectTimeout: 30_000,
  });
  const quit = async () => {
    task.stop();
    await task.router.detach();
    process.exit(0);
  };
  task.router.attach(transport);
  await transport.bind();
  report({ type: "bound", address: transport.address, id: spec.id });
  await transport.open();
  task.start();

  switch (spec.mode) {
    case "recv": {
      const s = spec.stream;
      const sink = new Sink(s.warm, s.ms / 4);
      const sampler = new RssSampler();
      task.on("bench.data", (x) => {
        if (s.kind === "f32" ? !checkF32(x, s.size) : !(x instanceof Uint8Array && x.byteLength === s.size)) sink.bad++;
        if (sink.got(s.ackEvery)) task.emit("bench.ack", sink.n);
      });
      task.on("bench.end", (sent) => report({ ...sink.result(sent as number), rssPeak: sampler.stop() }));
      break;
    }
    case "send": {
      const s = spec.stream;
      const payload = makePayload(s.kind, s.size);
      let sampler: RssSampler | undefined;
      const pump = new Pump(s, () => task.emit("bench.data", payload), (sent) => {
        task.emit("bench.end", sent);
        report({ type: "sent", sent, rssPeak: sampler?.stop(), cpuPerMessage: pump.cpuPerMessage() });
      });
      task.on("bench.ack", (n) => pump.ack(n as number));
      go = () => {
        sampler = new RssSampler();
        pump.start();
      };
      break;
    }
    case "echo":
      task.on("bench.ping", (b) => task.emit("bench.pong", b));
      break;
    case "ping": {
      const payload = makePayload("bytes", spec.size);
      const lat: number[] = [];
      let i = 0;
      let t = 0;
      let deadline = Infinity;
      task.on("bench.pong", () => {
        const dt = now() - t;
        if (i >= spec.warm) lat.push(dt);
        i++;
        if (i < spec.warm + spec.count && (i < spec.warm || now() < deadline)) {
          t = now();
          task.emit("bench.ping", payload);
        } else {
          lat.sort((a, b) => a - b);
          report({ type: "result", n: lat.length, p50: percentile(lat, 50) * 1000, p99: percentile(lat, 99) * 1000 });
        }
      });
      go = () => {
        deadline = now() + spec.ms;
        t = now();
        task.emit("bench.ping", payload);
      };
      break;
    }
    case "slow": {
      let n = 0;
      task.on("bench.data", () => {
        busyWait(spec.slowMs);
        if (++n === spec.total) task.emit("bench.done");
      });
      break;
    }
    case "flood": {
      const payload = makePayload("f32", spec.size);
      let done = () => {};
      task.on("bench.done", () => done());
      go = () => {
        const base = memMiB();
        const sampler = new RssSampler(10);
        const t0 = now();
        let k = 0;
        let sentMs = 0;
        const timer = setTimeout(() => done(), spec.timeoutMs);
        done = () => {
          clearTimeout(timer);
          report({ type: "result", base, peak: sampler.stop(), end: memMiB(), sentMs, ms: now() - t0, sent: k });
          done = () => {};
        };
        const tick = () => {
          if (k >= spec.total) {
            sentMs = now() - t0;
            return;
          }
          task.emit("bench.data", payload);
          k++;
          setImmediate(tick);
        };
        tick();
      };
      break;
    }
    case "bcast": {
      // Every node keeps sending; the orchestrator reads the received count twice ("mark").
      const me = spec.id;
      const peers = spec.expect;
      const payload = makePayload("bytes", spec.size);
      const got = new Map<number, number>();
      const acked = new Map<number, number>(peers.map((p) => [p, 0]));
      let n = 0;
      const pump = new Pump({ ...spec, count: Number.MAX_SAFE_INTEGER }, () => task.emit("bench.b", payload), () => {});
      task.on("bench.b", () => {
        const from = task.sender!;
        if (from === me) return; // task.emit also runs this node's own listeners
        n++;
        const c = (got.get(from) ?? 0) + 1;
        got.set(from, c);
        if (c % spec.ackEvery === 0) task.emit("bench.back", from, c);
      });
      task.on("bench.back", (to, c) => {
        if (to !== me || task.sender === me) return;
        acked.set(task.sender!, c as number);
        let min = Infinity;
        for (const v of acked.values()) if (v < min) min = v;
        pump.ack(min);
      });
      go = () => pump.start();
      mark = () => report({ type: "mark", n, t: now(), cpu: cpuMicros() });
      stop = () => pump.stop();
      break;
    }
  }
  task.router.endStartup();
  report({ type: "ready", id: spec.id, ...memMiB() });
}
