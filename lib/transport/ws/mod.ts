import http from "node:http";
import type { Duplex } from "node:stream";
import { type RawData, WebSocket, WebSocketServer } from "ws";
import type { PeerEvent, Transport, TransportMessage } from "../types.ts";
import { TransportError } from "../../errors.ts";
import { log } from "../../log.ts";
import {
  type Address,
  CLOSE_DUPLICATE_NODE,
  CLOSE_NORMAL,
  CLOSE_POLICY,
  CLOSE_VERSION,
  dialUrl,
  encodeBatch,
  encodeEvent,
  encodeHello,
  type EventsFrame,
  FRAME_HELLO,
  formatAddress,
  parseAddress,
  parseFrame,
  PROTOCOL_VERSION,
} from "./protocol.ts";

/** Options of {@link WsMeshTransport}. */
export interface WsMeshOptions {
  /** This node's id (an integer >= 0). */
  nodeId: number;
  /** Where to serve: `tcp://host:port` (port 0 picks a free one) or `ipc:///path`. Omit to only dial. */
  listen?: string;
  /** Addresses to dial (`tcp://`, `ws://`, `wss://`, `ipc://`). */
  dial?: string[];
  /** Node ids that must be connected (in either direction) before `open()` resolves. */
  expect?: number[];
  /** Labels announced to peers in the handshake. */
  labels?: string[];
  /** The largest frame accepted, in bytes; larger ones close the link with 1009. @default 268435456 (256 MiB) */
  maxPayload?: number;
  /** How long `open()` waits for the expected peers, in ms. @default 60000 */
  connectTimeout?: number;
}

interface Link {
  ws: WebSocket;
  dialed: boolean;
  peerId: number | undefined;
  labels: string[];
  sendSeq: number;
  recvSeq: number;
  /** Events queued in this tick, flushed as one frame at the end of the tick. */
  queue: Array<string | Uint8Array>;
  queueBytes: number;
  onReady: ((err?: Error) => void) | undefined;
}

const DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024;
/** A link's queued events are sent at once when they reach this many bytes. */
const MAX_BATCH_BYTES = 1024 * 1024;

/**
 * The WebSocket full-mesh transport: this node serves WebSocket connections and dials the peers
 * it is given; every pair of nodes shares one connection, whoever dialed. See `protocol.ts` for the
 * frame layout.
 *
 * Events published in one tick to a peer go out as one frame (a BATCH) at the end of that tick;
 * a lone event goes out as one EVENT frame in the same tick, so coalescing adds no latency.
 *
 * @example Two nodes in one process
 * ```ts
 * const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", expect: [1] });
 * const openA = a.open();
 * const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!] });
 * await Promise.all([openA, b.open()]);
 * ```
 */
export class WsMeshTransport implements Transport {
  readonly nodeId: number;
  readonly labels: string[];
  #listen: Address | undefined;
  #dial: Address[];
  #expect: number[];
  #maxPayload: number;
  #connectTimeout: number;
  #server: http.Server | undefined;
  #wss: WebSocketServer | undefined;
  #address: string | undefined;
  #peers = new Map<number, Link>();
  #seen = new Set<number>();
  #links = new Set<Link>();
  #msg = new Set<(m: TransportMessage) => void>();
  #peer = new Set<(e: PeerEvent) => void>();
  #err = new Set<(e: Error) => void>();
  #closed = false;
  #opened: Promise<void> | undefined;
  #flushScheduled = false;
  #dirty = new Set<Link>();

  /**
   * @throws {TypeError} If the node id or an address is invalid.
   */
  constructor(options: WsMeshOptions) {
    if (!Number.isInteger(options.nodeId) || options.nodeId < 0) {
      throw new TypeError(`Invalid nodeId ${options.nodeId}: expected an integer >= 0`);
    }
    this.nodeId = options.nodeId;
    this.labels = options.labels ?? [];
    this.#listen = options.listen === undefined ? undefined : parseAddress(options.listen, { listen: true });
    this.#dial = (options.dial ?? []).map((a) => parseAddress(a));
    this.#expect = (options.expect ?? []).filter((id) => id !== this.nodeId);
    this.#maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.#connectTimeout = options.connectTimeout ?? 60_000;
  }

  /** The address this node serves on (with the real port), once `open()` has bound it. */
  get address(): string | undefined {
    return this.#address;
  }

  get peers(): number[] {
    return [...this.#peers.keys()];
  }

  /** The labels each connected peer announced. */
  peerLabels(nodeId: number): string[] | undefined {
    return this.#peers.get(nodeId)?.labels;
  }

  /**
   * Bind (when `listen` was given), dial every address, and wait until every dialed peer and every
   * expected node id is connected.
   *
   * @throws {TransportError} If the address cannot be bound, a peer refuses the handshake, or the
   *   peers are not all connected within `connectTimeout`.
   */
  open(): Promise<void> {
    this.#opened ??= this.#open();
    return this.#opened;
  }

  /** Bind the server only (so that `address` is known before dialing starts). */
  async bind(): Promise<void> {
    if (this.#server || !this.#listen) return;
    const listen = this.#listen;
    const server = http.createServer((_req, res) => {
      res.writeHead(426, { "content-type": "text/plain" }).end("ditask mesh: WebSocket upgrade required\n");
    });
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: this.#maxPayload });
    wss.on("error", (err) => this.#fail(err));
    server.on("upgrade", (req, socket: Duplex, head) => {
      socket.on("error", (err) => log.debug(`node ${this.nodeId}: upgrade socket error:`, err.message));
      if (this.#closed) {
        socket.destroy();
        return;
      }
      wss.handleUpgrade(req, socket, head, (ws) => this.#adopt(ws, false));
    });
    server.on("clientError", (_err, socket) => socket.destroy());
    this.#server = server;
    this.#wss = wss;
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(
          new TransportError(
            `Cannot listen on ${formatAddress(listen)}: ${err.code === "EADDRINUSE" ? "address in use" : err.message}`,
            { cause: err },
          ),
        );
      };
      server.once("error", onError);
      const ready = () => {
        server.off("error", onError);
        server.on("error", (err) => this.#fail(err));
        const a = server.address();
        this.#address = listen.kind === "ipc"
          ? formatAddress(listen)
          : formatAddress({ ...listen, port: typeof a === "object" && a ? a.port : listen.port });
        resolve();
      };
      if (listen.kind === "ipc") server.listen(listen.path, ready);
      else server.listen(listen.port, listen.host, ready);
    });
  }

  async #open(): Promise<void> {
    await this.bind();
    const deadline = Date.now() + this.#connectTimeout;
    await Promise.all(this.#dial.map((a) => this.#dialWithRetry(a, deadline)));
    await this.#waitExpected(deadline);
  }

  #waitExpected(deadline: number): Promise<void> {
    // A peer that connected and already left counts: it was there, and waiting for it again
    // would hang a node whose faster peer finished first.
    const missing = () => this.#expect.filter((id) => !this.#seen.has(id));
    if (missing().length === 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (missing().length > 0) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(
          new TransportError(
            `Cannot start node ${this.nodeId}: peers ${missing().join(", ")} did not connect within ${this.#connectTimeout} ms`,
          ),
        );
      }, Math.max(0, deadline - Date.now()));
      const off = this.onPeer(check);
      const cleanup = () => {
        clearTimeout(timer);
        off();
      };
    });
  }

  async #dialWithRetry(addr: Address, deadline: number): Promise<void> {
    for (let attempt = 0;; attempt++) {
      if (this.#closed) throw new TransportError(`Cannot dial ${formatAddress(addr)}: the transport is closed`);
      try {
        await this.#dialOnce(addr);
        return;
      } catch (err) {
        const e = err as TransportError;
        // A peer that answered and refused us will refuse again: give up at once.
        if (e instanceof TransportError && e.closeCode !== undefined) throw e;
        if (Date.now() >= deadline) {
          throw new TransportError(
            `Cannot connect to ${formatAddress(addr)} within ${this.#connectTimeout} ms: ${e.message}`,
            { cause: err },
          );
        }
        // Exponential backoff with jitter: 10 ms, 20 ms, ... up to 500 ms, times 0.5-1.
        const wait = Math.min(500, 10 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2);
        await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - Date.now()))));
      }
    }
  }

  #dialOnce(addr: Address): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(dialUrl(addr), {
        perMessageDeflate: false,
        maxPayload: this.#maxPayload,
        handshakeTimeout: 10_000,
      });
      let opened = false;
      ws.once("open", () => {
        opened = true;
        const link = this.#adopt(ws, true);
        link.onReady = (err) => (err ? reject(err) : resolve());
      });
      ws.on("error", (err) => {
        if (!opened) reject(new TransportError(`Cannot connect to ${formatAddress(addr)}: ${err.message}`, { cause: err }));
      });
    });
  }

  #adopt(ws: WebSocket, dialed: boolean): Link {
    const link: Link = {
      ws,
      dialed,
      peerId: undefined,
      labels: [],
      sendSeq: 0,
      recvSeq: 0,
      queue: [],
      queueBytes: 0,
      onReady: undefined,
    };
    this.#links.add(link);
    ws.binaryType = "nodebuffer";
    ws.on("error", (err) => log.debug(`node ${this.nodeId}: socket error:`, err.message));
    ws.on("message", (data, isBinary) => this.#socketOnMessage(link, data, isBinary));
    ws.on("close", (code, reason) => this.#socketOnClose(link, code, reason.toString()));
    if (this.#closed) ws.close(CLOSE_NORMAL);
    else ws.send(encodeHello(this.nodeId, this.labels));
    return link;
  }

  #socketOnMessage(link: Link, data: RawData, isBinary: boolean): void {
    if (!isBinary) return this.#reject(link, CLOSE_POLICY, "text frames are not accepted");
    const bytes = data as Buffer;
    const frame = parseFrame(bytes);
    if (typeof frame === "string") {
      if (link.peerId === undefined) return this.#reject(link, CLOSE_POLICY, frame);
      log.warn(`node ${this.nodeId}: dropped a frame from node ${link.peerId}: ${frame}`);
      return;
    }
    if (frame.kind === FRAME_HELLO) {
      if (link.peerId !== undefined) {
        log.warn(`node ${this.nodeId}: dropped a second HELLO from node ${link.peerId}`);
        return;
      }
      if (frame.version !== PROTOCOL_VERSION) {
        return this.#reject(link, CLOSE_VERSION, `protocol version ${frame.version}, expected ${PROTOCOL_VERSION}`);
      }
      return this.#handshake(link, frame.nodeId, frame.labels);
    }
    if (link.peerId === undefined) return this.#reject(link, CLOSE_POLICY, "event frame before the handshake");
    this.#deliver(link, frame);
  }

  #handshake(link: Link, peerId: number, labels: string[]): void {
    if (peerId === this.nodeId) return this.#reject(link, CLOSE_DUPLICATE_NODE, `node id ${peerId} is this node's own id`);
    const existing = this.#peers.get(peerId);
    if (existing) {
      // Both ends dialed each other at once: keep the link dialed by the lower node id (both
      // ends decide the same). Anything else is a second node claiming an id already present.
      const lowerDialed = (l: Link) => (l.dialed ? this.nodeId : peerId) === Math.min(this.nodeId, peerId);
      if (existing.dialed !== link.dialed && lowerDialed(link)) {
        this.#peers.delete(peerId);
        existing.ws.close(CLOSE_DUPLICATE_NODE, "duplicate link");
      } else {
        return this.#reject(link, CLOSE_DUPLICATE_NODE, `node id ${peerId} is already connected`);
      }
    }
    link.peerId = peerId;
    link.labels = labels;
    this.#peers.set(peerId, link);
    this.#seen.add(peerId);
    log.debug(`node ${this.nodeId}: peer ${peerId} joined (${link.dialed ? "dialed" : "accepted"})`);
    const done = link.onReady;
    link.onReady = undefined;
    if (!existing) for (const fn of this.#peer) fn({ type: "joined", nodeId: peerId, labels });
    done?.();
  }

  #deliver(link: Link, frame: EventsFrame): void {
    const from = link.peerId!;
    if (frame.from !== from) {
      log.warn(`node ${this.nodeId}: dropped a frame claiming sender ${frame.from} on the link of node ${from}`);
      return;
    }
    const n = frame.items.length / 2;
    const first = frame.seq;
    if (first > link.recvSeq + 1) {
      log.warn(`node ${this.nodeId}: sequence gap from node ${from}: expected ${link.recvSeq + 1}, got ${first}`);
    }
    for (let i = 0; i < n; i++) {
      const seq = first + i;
      if (seq <= link.recvSeq) continue; // already delivered
      link.recvSeq = seq;
      const msg = { topic: frame.items[2 * i] as string, payload: frame.items[2 * i + 1] as Uint8Array, from };
      for (const fn of this.#msg) fn(msg);
    }
  }

  #reject(link: Link, code: number, reason: string): void {
    log.warn(`node ${this.nodeId}: closing a connection${link.peerId === undefined ? "" : ` of node ${link.peerId}`}: ${reason}`);
    const done = link.onReady;
    link.onReady = undefined;
    done?.(new TransportError(`Connection refused: ${reason}`, { closeCode: code }));
    link.ws.close(code, reason.slice(0, 120));
  }

  #socketOnClose(link: Link, code: number, reason: string): void {
    this.#links.delete(link);
    this.#dirty.delete(link);
    const done = link.onReady;
    link.onReady = undefined;
    if (done) {
      done(
        new TransportError(`Connection closed during the handshake (${code}${reason ? `: ${reason}` : ""})`, {
          ...(code === CLOSE_DUPLICATE_NODE || code === CLOSE_VERSION || code === CLOSE_POLICY ? { closeCode: code } : {}),
        }),
      );
    }
    const id = link.peerId;
    if (id === undefined || this.#peers.get(id) !== link) return;
    this.#peers.delete(id);
    log.debug(`node ${this.nodeId}: peer ${id} left (${code})`);
    for (const fn of this.#peer) fn({ type: "left", nodeId: id, labels: link.labels });
  }

  publish(topic: string, payload: Uint8Array): void {
    if (this.#closed) return;
    for (const link of this.#peers.values()) {
      link.queue.push(topic, payload);
      link.queueBytes += payload.byteLength + topic.length;
      this.#dirty.add(link);
      // Keep frames well below maxPayload: a large backlog goes out now, not at the end of the tick.
      if (link.queueBytes >= MAX_BATCH_BYTES) this.#flushLink(link);
    }
    if (this.#dirty.size === 0) return;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      // A lone event is sent right away (no added latency); more events in the same tick
      // are collected and go out as one frame per peer when the tick's microtasks are done.
      this.#flushNow();
      queueMicrotask(() => this.#endOfTick());
    }
  }

  #endOfTick(): void {
    this.#flushScheduled = false;
    this.#flushNow();
  }

  #flushNow(): void {
    for (const link of this.#dirty) this.#flushLink(link);
    this.#dirty.clear();
  }

  #flushLink(link: Link): void {
    const q = link.queue;
    if (q.length === 0) return;
    link.queue = [];
    link.queueBytes = 0;
    const n = q.length / 2;
    const seq = link.sendSeq + 1;
    link.sendSeq += n;
    const frame = n === 1
      ? encodeEvent(seq, this.nodeId, q[0] as string, q[1] as Uint8Array)
      : encodeBatch(seq, this.nodeId, q);
    link.ws.send(frame);
  }

  subscribe(_topic: string): void {}
  unsubscribe(_topic: string): void {}

  onMessage(fn: (m: TransportMessage) => void): () => void {
    this.#msg.add(fn);
    return () => this.#msg.delete(fn);
  }
  onPeer(fn: (e: PeerEvent) => void): () => void {
    this.#peer.add(fn);
    return () => this.#peer.delete(fn);
  }
  onError(fn: (e: Error) => void): () => void {
    this.#err.add(fn);
    return () => this.#err.delete(fn);
  }

  #fail(err: Error): void {
    if (this.#err.size === 0) log.warn(`node ${this.nodeId}:`, err.message);
    for (const fn of this.#err) fn(err);
  }

  /**
   * Send what is queued, close every connection (normal closure) and stop serving. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#flushNow();
    this.#closed = true;
    const closing = [...this.#links].map(
      (link) =>
        new Promise<void>((resolve) => {
          if (link.ws.readyState === WebSocket.CLOSED) return resolve();
          const timer = setTimeout(() => link.ws.terminate(), 3000);
          link.ws.once("close", () => {
            clearTimeout(timer);
            resolve();
          });
          link.ws.close(CLOSE_NORMAL);
        }),
    );
    await Promise.all(closing);
    this.#wss?.close();
    const server = this.#server;
    if (server) {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections?.();
      });
    }
  }
}
