// The baseline: bare `ws`, one `send` per message, client to server, default masking,
// perMessageDeflate off. These processes load `ws` only (no ditask), so their RSS is the floor.
import http from "node:http";
import process from "node:process";
import type { Duplex } from "node:stream";
import { setImmediate } from "node:timers";
import { WebSocket, WebSocketServer } from "ws";
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

/** What a bare-ws process does; given as JSON on its command line. */
export type BareSpec =
  | { role: "server"; mode: "stream"; stream: StreamSpec }
  | { role: "server"; mode: "echo" }
  | { role: "server"; mode: "slow"; total: number; slowMs: number }
  | { role: "client"; port: number; mode: "stream"; stream: StreamSpec }
  | { role: "client"; port: number; mode: "ping"; size: number; warm: number; count: number; ms: number }
  | { role: "client"; port: number; mode: "flood"; size: number; total: number; timeoutMs: number }
  | { role: "node"; id: number; size: number; ms: number; window: number; ackEvery: number };

/** A Float32Array over a received message (a copy only when the bytes are not 4-aligned). */
function asF32(b: Buffer): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  return new Float32Array(new Uint8Array(b).buffer);
}

function listen(onSocket: (ws: WebSocket) => void): Promise<{ server: http.Server; port: number }> {
  const server = http.createServer();
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD });
  server.on("upgrade", (req, socket: Duplex, head) => {
    socket.on("error", () => {});
    wss.handleUpgrade(req, socket, head, (ws) => onSocket(ws));
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ server, port: (server.address() as { port: number }).port }));
  });
}

function dial(port: number): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false, maxPayload: MAX_PAYLOAD });
    ws.once("open", () => resolve(ws));
    ws.once("error", reject);
  });
}

/** Run the bare-ws process described by `spec`. */
export async function runBare(spec: BareSpec): Promise<void> {
  let go: () => void = () => {};
  onCommands((c) => {
    if (c.cmd === "go") go();
    else if (c.cmd === "rss") report({ type: "rss", ...memMiB() });
    else if (c.cmd === "quit") process.exit(0);
    else if (c.cmd === "peers") peers(c.ports as number[]);
    else if (c.cmd === "mark") mark();
    else if (c.cmd === "stop") stop();
  });
  let peers: (ports: number[]) => void = () => {};
  let mark: () => void = () => {};
  let stop: () => void = () => {};

  if (spec.role === "server") {
    const { port } = await listen((ws) => {
      ws.on("error", () => {});
      report({ type: "ready" });
      if (spec.mode === "echo") {
        ws.on("message", (data) => ws.send(data as Buffer));
      } else if (spec.mode === "slow") {
        let n = 0;
        ws.on("message", () => {
          busyWait(spec.slowMs);
          if (++n === spec.total) ws.send("done");
        });
      } else {
        const s = spec.stream;
        const sink = new Sink(s.warm, s.ms / 4);
        const sampler = new RssSampler();
        ws.on("message", (data, isBinary) => {
          const b = data as Buffer;
          if (!isBinary) {
            const text = b.toString();
            if (text.startsWith("end:")) report({ ...sink.result(Number(text.slice(4))), rssPeak: sampler.stop() });
            return;
          }
          if (s.kind === "f32" ? !checkF32(asF32(b), s.size) : b.length !== s.size) sink.bad++;
          if (sink.got(s.ackEvery)) ws.send(String(sink.n));
        });
      }
    });
    report({ type: "listening", port });
    return;
  }

  if (spec.role === "client") {
    const ws = await dial(spec.port);
    ws.on("error", () => {});
    if (spec.mode === "stream") {
      const s = spec.stream;
      const payload = makePayload(s.kind, s.size);
      let sampler: RssSampler | undefined;
      const pump = new Pump(s, () => ws.send(payload), (sent) => {
        ws.send(`end:${sent}`);
        report({ type: "sent", sent, rssPeak: sampler?.stop(), cpuPerMessage: pump.cpuPerMessage() });
      });
      ws.on("message", (data, isBinary) => {
        if (!isBinary) pump.ack(Number((data as Buffer).toString()));
      });
      go = () => {
        sampler = new RssSampler();
        pump.start();
      };
    } else if (spec.mode === "ping") {
      const payload = makePayload("bytes", spec.size);
      const lat: number[] = [];
      let i = 0;
      let t = 0;
      let deadline = Infinity;
      const finish = () => {
        lat.sort((a, b) => a - b);
        report({ type: "result", n: lat.length, p50: percentile(lat, 50) * 1000, p99: percentile(lat, 99) * 1000 });
      };
      ws.on("message", () => {
        const dt = now() - t;
        if (i >= spec.warm) lat.push(dt);
        i++;
        if (i < spec.warm + spec.count && (i < spec.warm || now() < deadline)) {
          t = now();
          ws.send(payload);
        } else finish();
      });
      go = () => {
        deadline = now() + spec.ms;
        t = now();
        ws.send(payload);
      };
    } else {
      const payload = makePayload("f32", spec.size);
      let done = () => {};
      ws.on("message", (data, isBinary) => {
        if (!isBinary && (data as Buffer).toString() === "done") done();
      });
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
          ws.send(payload);
          k++;
          setImmediate(tick);
        };
        tick();
      };
    }
    report({ type: "ready", ...memMiB() });
    return;
  }

  // role "node": one of n nodes, each dialing every other (its sends are client-to-server).
  // The orchestrator reads the received count twice ("mark") while every node keeps sending.
  const payload = makePayload("bytes", spec.size);
  const outs: Array<{ ws: WebSocket; acked: number }> = [];
  let accepted = 0;
  let expected = Infinity;
  let n = 0;
  const maybeReady = () => {
    if (outs.length === expected && accepted === expected) report({ type: "ready", ...memMiB() });
  };
  const { port } = await listen((ws) => {
    ws.on("error", () => {});
    accepted++;
    maybeReady();
    let got = 0;
    ws.on("message", () => {
      n++;
      if (++got % spec.ackEvery === 0) ws.send(String(got));
    });
  });
  const pump = new Pump({ ...spec, count: Number.MAX_SAFE_INTEGER }, () => {
    for (const o of outs) o.ws.send(payload);
  }, () => {});
  peers = (ports) => {
    expected = ports.length;
    for (const p of ports) {
      dial(p).then((ws) => {
        const o = { ws, acked: 0 };
        outs.push(o);
        ws.on("error", () => {});
        ws.on("message", (data, isBinary) => {
          if (isBinary) return;
          o.acked = Number((data as Buffer).toString());
          pump.ack(Math.min(...outs.map((x) => x.acked)));
        });
        maybeReady();
      }, (err) => report({ type: "error", message: String(err) }));
    }
  };
  go = () => pump.start();
  mark = () => report({ type: "mark", n, t: now(), cpu: cpuMicros() });
  stop = () => pump.stop();
  report({ type: "listening", port, id: spec.id });
}
