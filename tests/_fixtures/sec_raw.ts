// Test helpers for the mesh security and fuzz tests: a raw WebSocket client that speaks (or
// breaks) the mesh protocol by hand, the handshake MAC, a byte-capturing TCP proxy, and a raw TCP
// client that sends hand-made WebSocket frame headers.
import { connect as netConnect, createServer, type Server, type Socket } from "node:net";
import { WebSocket } from "ws";
import { authMac as protocolAuthMac, type Frame, parseFrame } from "../../lib/transport/ws/protocol.ts";

/** The WebSocket URL of a mesh address (`tcp://h:p` → `ws://h:p/`, `wss://h:p` → `wss://h:p/`). */
export function wsUrl(address: string): string {
  const m = /^(tcp|ws|wss):\/\/(.+)$/.exec(address);
  if (!m) throw new TypeError(`not a tcp/ws/wss address: ${address}`);
  return `${m[1] === "wss" ? "wss" : "ws"}://${m[2]!.replace(/\/$/, "")}/`;
}

/** host and port of a `tcp://`, `ws://` or `wss://` address. */
export function hostPort(address: string): { host: string; port: number } {
  const m = /^(?:tcp|ws|wss):\/\/([^:/]+):(\d+)/.exec(address);
  if (!m) throw new TypeError(`not a tcp/ws/wss address: ${address}`);
  return { host: m[1]!, port: Number(m[2]) };
}

/**
 * The handshake proof as lib/transport/ws/mod.ts computes it: HMAC-SHA256(secret, context, sender
 * nonce, receiver nonce, sender id, receiver id), the fields joined with "\n" (protocol.ts names the
 * fields; the separator is the implementation's).
 */
export function authMac(secret: string, fromNonce: string, toNonce: string, from: number, to: number): Uint8Array {
  // A raw test client always dials, so it proves itself as the dialer.
  return protocolAuthMac(secret, "dialer", fromNonce, toNonce, from, to);
}

/** How a connection ended, as the client saw it. */
export interface Closed {
  code: number;
  reason: string;
}

/** A WebSocket client that sends whatever the test tells it and records everything it receives. */
export class RawClient {
  readonly ws: WebSocket;
  /** Every message received, as bytes (text messages as their UTF-8 bytes). */
  readonly received: Uint8Array[] = [];
  /** Every binary message received, parsed (a string when it did not parse). */
  readonly frames: Array<Frame | string> = [];
  /** Set once the connection closed. */
  closed: Closed | undefined;
  /** Errors the socket reported (a reset connection, a TLS failure). */
  readonly errors: Error[] = [];
  /** Whether this side called close()/terminate() (so the close code is ours, not the server's). */
  closedByUs = false;
  #waiters = new Set<() => void>();

  private constructor(ws: WebSocket, keep: boolean) {
    this.ws = ws;
    ws.binaryType = "nodebuffer";
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      // keep: false records only small messages (the handshake), not the events a node sends.
      if (!keep && data.byteLength > 1024) return;
      const bytes = new Uint8Array(data.byteLength);
      bytes.set(data);
      this.received.push(bytes);
      if (isBinary) this.frames.push(parseFrame(bytes));
      this.#wake();
    });
    ws.on("error", (err: Error) => {
      this.errors.push(err);
      this.#wake();
    });
    ws.on("close", (code: number, reason: Buffer) => {
      this.closed = { code, reason: reason.toString() };
      this.#wake();
    });
  }

  #wake(): void {
    for (const w of [...this.#waiters]) w();
  }

  /** Wait until `cond()` holds (checked on every message, error and close), or time out. */
  waitFor(cond: () => boolean, ms: number, label: string): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        this.#waiters.delete(check);
        clearTimeout(timer);
      };
      const check = () => {
        if (!cond()) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`Timed out after ${ms} ms: ${label}`));
      }, ms);
      this.#waiters.add(check);
    });
  }

  /**
   * Open a connection to a mesh node's address. Resolves once the WebSocket is open; rejects if it
   * cannot be opened within `ms`.
   */
  static open(address: string, options: { ca?: string; ms?: number; keep?: boolean } = {}): Promise<RawClient> {
    const wsOptions: { perMessageDeflate: false; ca?: string; maxPayload: number } = {
      perMessageDeflate: false,
      maxPayload: 64 * 1024 * 1024,
    };
    if (options.ca !== undefined) wsOptions.ca = options.ca;
    const ws = new WebSocket(wsUrl(address), wsOptions);
    const client = new RawClient(ws, options.keep ?? true);
    const ms = options.ms ?? 5000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        ws.terminate();
        reject(new Error(`Timed out after ${ms} ms: opening ${address}`));
      }, ms);
      ws.once("open", () => {
        clearTimeout(timer);
        resolve(client);
      });
      ws.once("close", () => {
        clearTimeout(timer);
        reject(new Error(`connection to ${address} closed before it opened: ${client.errors[0]?.message ?? ""}`));
      });
    });
  }

  /** Whether the socket is open. */
  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Send one binary (Uint8Array) or text (string) message; ignored once the socket is closing. */
  send(data: Uint8Array | string): void {
    if (this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(data, { binary: typeof data !== "string" });
  }

  /** The first received frame of `kind`, waiting for it up to `ms`. */
  async next<K extends Frame["kind"]>(kind: K, ms = 5000): Promise<Extract<Frame, { kind: K }>> {
    const find = () => this.frames.find((f): f is Extract<Frame, { kind: K }> => typeof f !== "string" && f.kind === kind);
    await this.waitFor(() => find() !== undefined || this.closed !== undefined, ms, `a frame of kind ${kind}`);
    const f = find();
    if (!f) throw new Error(`the connection closed (${this.closed?.code}) before a frame of kind ${kind} arrived`);
    return f;
  }

  /** Wait until the server closed the connection; resolves with the close code and reason. */
  async waitClose(ms = 5000): Promise<Closed> {
    await this.waitFor(() => this.closed !== undefined, ms, "the server closing the connection");
    return this.closed!;
  }

  /** Close from this side (normal closure) and wait briefly for the socket to end. */
  async close(): Promise<void> {
    this.closedByUs = true;
    if (this.closed) return;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.close(1000, "done");
    try {
      await this.waitFor(() => this.closed !== undefined, 2000, "close");
    } catch {
      this.ws.terminate();
    }
  }

  /** Cut the connection at once. */
  terminate(): void {
    this.closedByUs = true;
    this.ws.terminate();
  }
}

/** A TCP proxy in front of `target` that records every byte in both directions. */
export interface CaptureProxy {
  /** `tcp://127.0.0.1:<port>` of the proxy. */
  address: string;
  /** Every byte seen so far, both directions, in arrival order. */
  bytes(): Uint8Array;
  close(): Promise<void>;
}

/** Start a capturing TCP proxy on 127.0.0.1 in front of `target` (a tcp/ws address). */
export async function captureProxy(target: string): Promise<CaptureProxy> {
  const { host, port } = hostPort(target);
  const chunks: Uint8Array[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = netConnect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on("data", (d: Buffer) => {
      chunks.push(new Uint8Array(d));
      upstream.write(d);
    });
    upstream.on("data", (d: Buffer) => {
      chunks.push(new Uint8Array(d));
      client.write(d);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const addr = server.address() as { port: number };
  return {
    address: `tcp://127.0.0.1:${addr.port}`,
    bytes() {
      const total = chunks.reduce((n, c) => n + c.byteLength, 0);
      const out = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.byteLength;
      }
      return out;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Whether `needle` occurs in `hay`. */
export function containsBytes(hay: Uint8Array, needle: Uint8Array): boolean {
  if (needle.byteLength === 0) return true;
  const first = needle[0]!;
  outer: for (let i = hay.indexOf(first); i !== -1 && i <= hay.byteLength - needle.byteLength; i = hay.indexOf(first, i + 1)) {
    for (let j = 1; j < needle.byteLength; j++) if (hay[i + j] !== needle[j]) continue outer;
    return true;
  }
  return false;
}

/**
 * Open a raw TCP connection, upgrade it to WebSocket by hand, send one client frame header that
 * declares a payload of `declared` bytes (masked, binary) followed by `body` bytes, and return the
 * close code of the first close frame the server sends (or -1 if the server just dropped the
 * connection without one). `ws` cannot send such headers itself.
 */
export function rawDeclaredLength(address: string, declared: bigint, body: Uint8Array, ms = 5000): Promise<number> {
  const { host, port } = hostPort(address);
  return new Promise((resolve, reject) => {
    const sock = netConnect(port, host);
    let buf = new Uint8Array(0);
    let upgraded = false;
    let settled = false;
    const finish = (code: number | Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (code instanceof Error) reject(code);
      else resolve(code);
    };
    const timer = setTimeout(() => finish(new Error(`Timed out after ${ms} ms: raw frame with declared length ${declared}`)), ms);
    sock.on("error", () => finish(-1));
    sock.on("close", () => finish(-1));
    sock.on("connect", () => {
      sock.write(
        `GET / HTTP/1.1\r\nHost: ${host}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ZGl0YXNrLWZ1enotdGVzdA==\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    sock.on("data", (d: Buffer) => {
      const next = new Uint8Array(buf.byteLength + d.byteLength);
      next.set(buf);
      next.set(d, buf.byteLength);
      buf = next;
      if (!upgraded) {
        const text = new TextDecoder().decode(buf);
        const end = text.indexOf("\r\n\r\n");
        if (end < 0) return;
        if (!text.startsWith("HTTP/1.1 101")) return finish(new Error(`upgrade refused: ${text.split("\r\n")[0]}`));
        upgraded = true;
        buf = buf.slice(new TextEncoder().encode(text.slice(0, end + 4)).byteLength);
        // The frame header: FIN + binary, MASK + 127, a 64-bit length, a 4-byte mask.
        const header = new Uint8Array(14);
        header[0] = 0x82;
        header[1] = 0x80 | 127;
        new DataView(header.buffer).setBigUint64(2, declared);
        header.set([1, 2, 3, 4], 10);
        sock.write(header);
        if (body.byteLength > 0) sock.write(body);
      }
      // Parse the server's (unmasked) frames; stop at the first close frame.
      let at = 0;
      while (buf.byteLength - at >= 2) {
        const op = buf[at]! & 0x0f;
        let len = buf[at + 1]! & 0x7f;
        let hdr = 2;
        if (len === 126) {
          if (buf.byteLength - at < 4) break;
          len = (buf[at + 2]! << 8) | buf[at + 3]!;
          hdr = 4;
        } else if (len === 127) {
          if (buf.byteLength - at < 10) break;
          len = Number(new DataView(buf.buffer, buf.byteOffset + at + 2, 8).getBigUint64(0));
          hdr = 10;
        }
        if (buf.byteLength - at < hdr + len) break;
        if (op === 0x8) {
          return finish(len >= 2 ? (buf[at + hdr]! << 8) | buf[at + hdr + 1]! : 1005);
        }
        at += hdr + len;
      }
      buf = buf.slice(at);
    });
  });
}
