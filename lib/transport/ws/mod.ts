import { Buffer } from "node:buffer";
import { randomBytes, timingSafeEqual } from "node:crypto";
import { existsSync, unlinkSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { nanoid } from "nanoid";
import type { Transport } from "../types.ts";
import { TransportListeners } from "../_listeners.ts";
import { stringList, TransportError } from "../../errors.ts";
import { log } from "../../log.ts";
import { checkNodeLimits, peerLists } from "../limits.ts";
import {
  type Address,
  authMac,
  CLOSE_AUTH,
  CLOSE_DUPLICATE_NODE,
  CLOSE_NORMAL,
  CLOSE_POLICY,
  CLOSE_SLOW,
  CLOSE_TOO_BIG,
  CLOSE_VERSION,
  encodeAck,
  encodeAuth,
  encodeEvents,
  FrameSlab,
  encodeHello,
  encodeResume,
  type EventsFrame,
  FRAME_ACK,
  FRAME_AUTH,
  FRAME_EVENT,
  FRAME_HELLO,
  FRAME_RESUME,
  formatAddress,
  type HelloFrame,
  LARGE_PAYLOAD,
  parseAddress,
  parseFrame,
  PROTOCOL_VERSION,
} from "./protocol.ts";
import { CLOSED, type MeshServer, type MeshSocket, type TlsOptions } from "./socket.ts";
import { loadSocketKit } from "../../runtime.ts";

export type { TlsOptions } from "./socket.ts";

/** The WebSocket implementation of this runtime (see socket.ts). */
const kit = await loadSocketKit();

/** Options of {@link WsMeshTransport}. */
export interface WsMeshOptions {
  /** This node's id (an integer >= 0). */
  nodeId: number;
  /** Where to serve: `tcp://host:port` (port 0 picks a free one) or `ipc:///path`. Omit to only dial. */
  listen?: string;
  /** Addresses to dial (`tcp://`, `ws://`, `wss://`, `ipc://`). */
  dial?: string[];
  /** Node ids that must have connected (in either direction) before `open()` resolves. */
  expect?: number[];
  /** Labels announced to peers in the handshake. */
  labels?: string[];
  /** The largest frame accepted, in bytes; larger ones close the link with 1009. @default 268435456 (256 MiB) */
  maxPayload?: number;
  /** How long `open()` waits for the expected peers, in ms. @default 60000 */
  connectTimeout?: number;
  /** A shared secret every connection must prove (HMAC challenge-response). */
  secret?: string;
  /** Serve `wss` with this certificate, and verify `wss` peers against `ca`. */
  tls?: TlsOptions;
  /** Ping every link this often, in ms; shorter than `heartbeatTimeout`. @default 2500, or a quarter of `heartbeatTimeout` when that is less */
  heartbeatInterval?: number;
  /**
   * A link silent (no frame, no pong) this long is dropped, and a peer whose link dropped without
   * a normal close and did not come back within this time is reported as left, in ms.
   * @default 15000
   */
  heartbeatTimeout?: number;
  /**
   * The most bytes of unacknowledged events kept for one peer. A peer that falls further behind,
   * or that acknowledges nothing for `heartbeatTimeout` while events wait for it, is a slow
   * consumer: its link is closed (4004), it is reported as left, and what it had not acknowledged
   * is dropped (logged with the count). Producers of large streams can `await drain()`.
   * @default 268435456 (256 MiB)
   */
  maxOutboxBytes?: number;
}

interface Link {
  ws: MeshSocket;
  dialed: boolean;
  /** Set by the peer's HELLO. */
  hello: HelloFrame | undefined;
  nonce: string;
  authed: boolean;
  /** The peer state once the link is ready (the peer's RESUME arrived). */
  peer: PeerState | undefined;
  lastSeen: number;
  lastPing: number;
  /** The socket's byte count at the last heartbeat tick. */
  bytesRead: number;
  /** Set once the link is being closed: nothing more is read from it. */
  closing: boolean;
  drops: number;
  timer: ReturnType<typeof setInterval> | undefined;
  onReady: ((err?: Error) => void) | undefined;
}

interface OutFrame {
  last: number;
  /** One buffer, or a head and a large payload sent as two fragments of one message. */
  frame: Uint8Array | [Uint8Array, Uint8Array];
  bytes: number;
}

interface PeerState {
  nodeId: number;
  labels: string[];
  session: string;
  link: Link | undefined;
  /** Last seq given to an event for this peer. */
  sendSeq: number;
  /** Highest seq the peer acknowledged. */
  acked: number;
  /** When the peer last acknowledged something, or when events started waiting for it. */
  progressAt: number;
  /** Framed, unacknowledged events, oldest first. */
  outbox: OutFrame[];
  outboxBytes: number;
  /** This tick's events, not framed yet: topic, payload, topic, payload, ... */
  queue: Array<string | Uint8Array>;
  queueBytes: number;
  /** Last seq received from this peer. */
  recvSeq: number;
  /** Events received and not yet acknowledged. */
  unacked: number;
  ackTimer: ReturnType<typeof setTimeout> | undefined;
  /** Memory for this peer's small frames. */
  slab: FrameSlab;
  /** Set while the link is down and we wait for the peer to come back. */
  downTimer: ReturnType<typeof setTimeout> | undefined;
  /** The peer refused a frame as too large (1009), and this node said so. */
  refusedTooBig: boolean;
}

const DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024;
/** A peer's queued events are framed at once when they reach this many bytes. */
const MAX_BATCH_BYTES = 128 * 1024; // larger fresh buffers cost page faults on every frame
/** Acknowledge after this many events, or after ACK_DELAY ms. */
const ACK_EVERY = 512;
const ACK_DELAY = 5;
const HANDSHAKE_TIMEOUT = 10_000;
/** Bytes counted per kept frame beyond its data (the entry object, the buffer's own header). */
const ENTRY_OVERHEAD = 256;
const MAX_PENDING_LINKS = 256;

/** Send an events frame: one message, or a head and a payload as two fragments of one message. */
function sendFrame(link: Link, frame: Uint8Array | [Uint8Array, Uint8Array]): void {
  if (Array.isArray(frame)) {
    link.ws.send(frame[0], false);
    link.ws.send(frame[1], true);
  } else link.ws.sendFrame(frame);
}

function randomId(bytes: number): string {
  return randomBytes(bytes).toString("hex");
}

/**
 * The WebSocket full-mesh transport: this node serves WebSocket connections and dials the peers
 * it is given; every pair of nodes shares one connection, whoever dialed. See `protocol.ts` for the
 * frame layout and the handshake.
 *
 * Delivery: each event reaches each connected peer exactly once, in emit order. Events are kept
 * until the peer acknowledges them; if a link drops while both processes live, the dialing side
 * redials (exponential backoff with jitter) and the unacknowledged events are resent. A peer whose
 * link dropped without a normal close and that does not return within `heartbeatTimeout` is
 * reported as left; a dialer keeps redialing it, so a restarted peer joins again.
 *
 * Events published in one tick to a peer go out as one frame (a BATCH) at the end of that tick;
 * a lone event goes out as one EVENT frame at once, so coalescing adds no latency.
 *
 * @example Two nodes in one process
 * ```ts
 * const a = new WsMeshTransport({ nodeId: 0, listen: "tcp://127.0.0.1:0", expect: [1] });
 * await a.bind();
 * const b = new WsMeshTransport({ nodeId: 1, dial: [a.address!] });
 * await Promise.all([a.open(), b.open()]);
 * ```
 */
export class WsMeshTransport extends TransportListeners implements Transport {
  readonly nodeId: number;
  readonly labels: string[];
  /** This instance's session id (see the protocol). */
  readonly session: string = nanoid();
  #listen: Address | undefined;
  #dial: Address[];
  #expect: number[];
  #maxPayload: number;
  #connectTimeout: number;
  #secret: string | undefined;
  #tls: TlsOptions | undefined;
  #hbInterval: number;
  #hbTimeout: number;
  #maxOutbox: number;
  /** The largest frame of one event that can be delivered: within maxPayload and maxOutboxBytes. */
  #frameLimit: number;
  #server: MeshServer | undefined;
  #bound: Promise<void> | undefined;
  #address: string | undefined;
  #peers = new Map<number, PeerState>();
  #seen = new Set<number>();
  // Last seq received from sessions of peers we forgot, so a peer that returns resumes correctly.
  #recvMemory = new Map<string, number>();
  #links = new Set<Link>();
  #closed = false;
  #opened: Promise<void> | undefined;
  #flushScheduled = false;
  /** Set while a received frame's events are handed to the listeners (see #socketOnMessage). */
  #delivering = false;
  #dirty = new Set<PeerState>();
  /** Payloads published with a `done` callback: how many peers still hold each. */
  #holds = new Map<Uint8Array, { n: number; done: () => void }>();
  #drainWaiters = new Set<() => void>();
  #sleepers = new Set<() => void>();

  /**
   * @throws {TypeError} If the node id, an address or a number option is invalid.
   */
  constructor(options: WsMeshOptions) {
    super();
    if (!Number.isInteger(options.nodeId) || options.nodeId < 0) {
      throw new TypeError(`Invalid nodeId ${options.nodeId}: expected an integer >= 0`);
    }
    this.nodeId = options.nodeId;
    const { labels, expect } = peerLists(options);
    this.labels = labels;
    this.#listen = options.listen === undefined ? undefined : parseAddress(options.listen, { listen: true });
    this.#dial = (options.dial === undefined ? [] : stringList(options.dial, "dial")).map((a) => parseAddress(a));
    this.#expect = expect.filter((id) => id !== this.nodeId);
    checkNodeLimits(options);
    this.#maxPayload = options.maxPayload ?? DEFAULT_MAX_PAYLOAD;
    this.#connectTimeout = options.connectTimeout ?? 60_000;
    this.#secret = options.secret === "" ? undefined : options.secret;
    this.#tls = options.tls;
    this.#hbTimeout = options.heartbeatTimeout ?? 15_000;
    // A short timeout alone asks for quick detection: ping often enough for it.
    this.#hbInterval = options.heartbeatInterval ?? Math.min(2500, this.#hbTimeout / 4);
    this.#maxOutbox = options.maxOutboxBytes ?? 256 * 1024 * 1024;
    this.#frameLimit = Math.min(this.#maxPayload, this.#maxOutbox - ENTRY_OVERHEAD);
    if (this.#tls && this.#listen?.kind === "ipc") throw new TypeError("Invalid options: tls needs a tcp listen address");
  }

  /** The address this node serves on (with the real port), once `open()` or `bind()` bound it. */
  get address(): string | undefined {
    return this.#address;
  }

  /** The peers known now: connected, or reconnecting within `heartbeatTimeout`. */
  get peers(): number[] {
    return [...this.#peers.keys()];
  }

  /** The labels a peer announced. */
  peerLabels(nodeId: number): string[] | undefined {
    return this.#peers.get(nodeId)?.labels;
  }

  /** Bytes of events queued or unacknowledged for `nodeId` (0 for an unknown peer). */
  backlog(nodeId: number): number {
    const p = this.#peers.get(nodeId);
    return p ? p.outboxBytes + p.queueBytes : 0;
  }

  /**
   * Bind (when `listen` was given), dial every address, and wait until every dialed peer and every
   * expected node id has connected.
   *
   * @throws {TransportError} If the address cannot be bound, a peer refuses the handshake, or the
   *   peers are not all connected within `connectTimeout`.
   */
  open(): Promise<void> {
    this.#opened ??= this.#open();
    return this.#opened;
  }

  /**
   * Bind the server only (so that `address` is known before dialing starts).
   * @throws {TransportError} If the address cannot be bound.
   */
  bind(): Promise<void> {
    this.#bound ??= this.#bind();
    return this.#bound;
  }

  async #bind(): Promise<void> {
    if (!this.#listen) return;
    const listen = this.#listen;
    if (listen.kind === "ipc") await removeStaleSocket(listen.path);
    try {
      this.#server = await kit.listen(listen, {
        maxPayload: this.#maxPayload,
        ...(this.#tls ? { tls: this.#tls } : {}),
        timeout: HANDSHAKE_TIMEOUT,
        admit: () => {
          const pending = [...this.#links].filter((l) => !l.peer).length;
          if (this.#closed || pending >= MAX_PENDING_LINKS) {
            if (!this.#closed) log.warn(`node ${this.nodeId}: refused a connection: ${pending} handshakes pending`);
            return false;
          }
          return true;
        },
        accept: (ws) => void this.#adopt(ws, false),
        fail: (err) => this.#fail(err),
        note: (level, message) => log[level](`node ${this.nodeId}: ${message}`),
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new TransportError(
        `Cannot listen on ${formatAddress(listen)}: ${e.code === "EADDRINUSE" ? "address in use" : e.message}`,
        { cause: err },
      );
    }
    const port = this.#server.port;
    this.#address = listen.kind === "ipc" ? formatAddress(listen) : formatAddress({ ...listen, tls: this.#tls !== undefined, port });
  }

  async #open(): Promise<void> {
    await this.bind();
    const deadline = Date.now() + this.#connectTimeout;
    const first = this.#dial.map((addr) => {
      let firstLink!: (err?: Error) => void;
      const connected = new Promise<void>((resolve, reject) => {
        firstLink = (err) => (err ? reject(err) : resolve());
      });
      void this.#superviseDial(addr, deadline, firstLink);
      return connected;
    });
    await Promise.all(first);
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

  /** Sleep that `close()` cuts short. */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#sleepers.add(done);
    });
  }

  /**
   * Keep one dialed link to `addr` up: dial with backoff until the first link is ready (reporting
   * to `first`), and after an abnormal drop dial again, for as long as this transport is open.
   * A peer that closed normally (it shut down) is not redialed.
   */
  async #superviseDial(addr: Address, deadline: number, first: (err?: Error) => void): Promise<void> {
    let reported = false;
    const report = (err?: Error) => {
      if (!reported) {
        reported = true;
        first(err);
      }
    };
    let attempt = 0;
    // Exponential backoff with jitter: 10 ms doubling up to 2 s, times 0.5 to 1. Before the first
    // link the cap is 50 ms: at start-up the peer is usually still loading, a refused dial costs
    // well under a millisecond, and a longer wait would be added to the launch.
    const backoff = () => {
      const cap = reported ? 2000 : 50;
      const wait = Math.min(cap, 10 * 2 ** Math.min(attempt++, 8)) * (0.5 + Math.random() / 2);
      return this.#sleep(reported ? wait : Math.min(wait, Math.max(1, deadline - Date.now())));
    };
    while (!this.#closed) {
      let link: Link;
      try {
        link = await this.#dialOnce(addr);
      } catch (err) {
        const e = err as TransportError;
        if (e instanceof TransportError && e.closeCode !== undefined) {
          // The peer answered and refused us: it will refuse again.
          report(e);
          log.warn(`node ${this.nodeId}: ${e.message}`);
          return;
        }
        if (!reported && Date.now() >= deadline) {
          report(new TransportError(`Cannot connect to ${formatAddress(addr)} within ${this.#connectTimeout} ms: ${e.message}`, { cause: err }));
        }
        await backoff();
        continue;
      }
      report();
      const code = await new Promise<number>((resolve) => link.ws.once("close", (c) => resolve(c)));
      if (code === CLOSE_NORMAL || code === 1001 || code === CLOSE_DUPLICATE_NODE) return;
      log.info(`node ${this.nodeId}: link to ${formatAddress(addr)} dropped (${code}); redialing`);
      // A frame the peer refused as too large is refused again on the next link: back off as
      // after a failed dial, not redial at once.
      if (code === CLOSE_TOO_BIG) await backoff();
      else attempt = 0;
    }
  }

  async #dialOnce(addr: Address): Promise<Link> {
    let ws: MeshSocket;
    try {
      ws = await kit.dial(addr, {
        maxPayload: this.#maxPayload,
        timeout: HANDSHAKE_TIMEOUT,
        ...(addr.kind === "tcp" && addr.tls && this.#tls?.ca !== undefined ? { ca: this.#tls.ca } : {}),
      });
    } catch (err) {
      throw new TransportError(`Cannot connect to ${formatAddress(addr)}: ${(err as Error).message}`, { cause: err });
    }
    return new Promise((resolve, reject) => {
      const link = this.#adopt(ws, true);
      link.onReady = (err) => (err ? reject(err) : resolve(link));
    });
  }

  #adopt(ws: MeshSocket, dialed: boolean): Link {
    const link: Link = {
      ws,
      dialed,
      hello: undefined,
      nonce: randomId(16),
      authed: this.#secret === undefined,
      peer: undefined,
      lastSeen: Date.now(),
      lastPing: Date.now(),
      bytesRead: 0,
      closing: false,
      drops: 0,
      timer: undefined,
      onReady: undefined,
    };
    this.#links.add(link);
    ws.on("error", (err) => log.debug(`node ${this.nodeId}: socket error:`, err.message));
    ws.on("message", (data, isBinary) => this.#socketOnMessage(link, data, isBinary));
    ws.on("pong", () => (link.lastSeen = Date.now()));
    ws.on("close", (code, reason) => this.#socketOnClose(link, code, reason));
    // One timer per link: the handshake deadline first, then the heartbeat.
    let started = Date.now();
    const tick = Math.min(this.#hbInterval, 1000);
    let lastTick = started;
    link.timer = setInterval(() => {
      const now = Date.now();
      const deaf = now - lastTick - tick;
      lastTick = now;
      if (deaf > Math.min(tick, 200)) {
        // This tick is late: the process was busy (a long synchronous step) and could not read.
        // That time does not count against the peer, whose frames and ACKs wait in the socket.
        started += deaf;
        link.lastSeen = Math.min(now, link.lastSeen + deaf);
        if (link.peer) link.peer.progressAt = Math.min(now, link.peer.progressAt + deaf);
      }
      if (!link.peer) {
        if (now - started > HANDSHAKE_TIMEOUT) this.#reject(link, CLOSE_POLICY, "handshake timed out");
        return;
      }
      const p = link.peer;
      const read = ws.bytesRead;
      if (read !== link.bytesRead) {
        link.bytesRead = read;
        // Bytes arrived but no message for a tick: a frame that takes longer than that is on its
        // way (a large event on a slow link). The link is alive, and the sender learns that it
        // is being read (an ACK counts as progress), so neither side drops the other.
        if (now - link.lastSeen >= tick) this.#sendAck(p);
        link.lastSeen = now;
      }
      if (p.outbox.length > 0 && now - p.progressAt > this.#hbTimeout) {
        this.#slow(p, `it acknowledged nothing for ${this.#hbTimeout} ms`);
        return;
      }
      if (now - link.lastSeen > this.#hbTimeout) {
        log.warn(`node ${this.nodeId}: node ${link.peer.nodeId} silent for ${this.#hbTimeout} ms; dropping its link`);
        ws.terminate();
        return;
      }
      if (now - link.lastPing >= this.#hbInterval) {
        link.lastPing = now;
        ws.ping();
      }
    }, tick);
    if (this.#closed) ws.close(CLOSE_NORMAL, "shutdown");
    else ws.send(encodeHello(this.nodeId, this.labels, this.session, link.nonce));
    ws.start();
    return link;
  }

  #socketOnMessage(link: Link, data: Uint8Array[], isBinary: boolean): void {
    if (link.closing) return; // refused: what it pipelined behind is not read
    link.lastSeen = Date.now();
    // What the listeners publish while the frame's events are delivered (a reply, an echo) is
    // sent as soon as they are done, in one frame per peer, without waiting for the microtasks.
    const outer = !this.#delivering;
    this.#delivering = true;
    try {
      this.#onFrame(link, data, isBinary);
    } catch (err) {
      // A listener's error or a bug must not take the node down: drop this link instead.
      log.error(`node ${this.nodeId}: error while handling a frame:`, err);
      this.#reject(link, CLOSE_POLICY, "internal error while handling a frame");
    } finally {
      if (outer) {
        this.#delivering = false;
        if (this.#dirty.size > 0 && !this.#flushScheduled && !this.#closed) this.#flushAll();
      }
    }
  }

  #onFrame(link: Link, data: Uint8Array[], isBinary: boolean): void {
    if (!isBinary) return this.#bad(link, "text frames are not accepted");
    const frame = parseFrame(data);
    if (typeof frame === "string") return this.#bad(link, frame);
    switch (frame.kind) {
      case FRAME_HELLO:
        return this.#onHello(link, frame);
      case FRAME_AUTH:
        return this.#onAuth(link, frame.mac);
      case FRAME_RESUME:
        return this.#onResume(link, frame.session, frame.seq);
      case FRAME_ACK:
        if (!link.peer) return this.#reject(link, CLOSE_POLICY, "ACK before the handshake");
        return this.#onAck(link.peer, frame.seq);
      case FRAME_EVENT:
        if (!link.peer) return this.#reject(link, CLOSE_POLICY, "event frame before the handshake");
        return this.#deliver(link, link.peer, frame);
    }
  }

  /** A frame that does not parse: fatal before the handshake, dropped (and logged) after it. */
  #bad(link: Link, why: string): void {
    if (!link.peer) return this.#reject(link, CLOSE_POLICY, why);
    link.drops++;
    if (link.drops <= 3 || link.drops % 1000 === 0) {
      log.warn(`node ${this.nodeId}: dropped a frame from node ${link.peer.nodeId}: ${why} (${link.drops} dropped on this link)`);
    }
  }

  /** Send this side's AUTH proof on `link`. */
  #sendAuth(link: Link): void {
    const hello = link.hello!;
    link.ws.send(encodeAuth(authMac(this.#secret!, link.dialed ? "dialer" : "acceptor", link.nonce, hello.nonce, this.nodeId, hello.nodeId)));
  }

  #onHello(link: Link, hello: HelloFrame): void {
    if (link.hello) return this.#reject(link, CLOSE_POLICY, "a second HELLO");
    if (hello.version !== PROTOCOL_VERSION) {
      return this.#reject(link, CLOSE_VERSION, `protocol version ${hello.version}, expected ${PROTOCOL_VERSION}`);
    }
    if (hello.nodeId === this.nodeId) return this.#reject(link, CLOSE_DUPLICATE_NODE, `node id ${hello.nodeId} is this node's own id`);
    link.hello = hello;
    if (this.#secret === undefined) this.#sendResume(link);
    // With a secret the dialer proves itself first; the acceptor answers once it verified that.
    else if (link.dialed) this.#sendAuth(link);
  }

  #onAuth(link: Link, mac: Uint8Array): void {
    const hello = link.hello;
    if (!hello) return this.#reject(link, CLOSE_POLICY, "AUTH before HELLO");
    if (this.#secret === undefined) return; // we need no proof; the peer's secret is its business
    if (link.authed) return this.#reject(link, CLOSE_POLICY, "a second AUTH");
    const want = authMac(this.#secret, link.dialed ? "acceptor" : "dialer", hello.nonce, link.nonce, hello.nodeId, this.nodeId);
    if (mac.byteLength !== want.byteLength || !timingSafeEqual(mac, want)) {
      return this.#reject(link, CLOSE_AUTH, `authentication with node ${hello.nodeId} failed (a different secret, or none)`);
    }
    link.authed = true;
    if (!link.dialed) this.#sendAuth(link);
    this.#sendResume(link);
  }

  #sendResume(link: Link): void {
    const hello = link.hello!;
    const known = this.#peers.get(hello.nodeId);
    const seq = known && known.session === hello.session ? known.recvSeq : (this.#recvMemory.get(hello.session) ?? 0);
    link.ws.send(encodeResume(hello.session, seq));
  }

  #onResume(link: Link, mySession: string, theirRecv: number): void {
    const hello = link.hello;
    if (!hello) return this.#reject(link, CLOSE_POLICY, "RESUME before HELLO");
    if (!link.authed) return this.#reject(link, CLOSE_AUTH, `node ${hello.nodeId} did not authenticate`);
    if (link.peer) return this.#reject(link, CLOSE_POLICY, "a second RESUME");
    const id = hello.nodeId;
    let p = this.#peers.get(id);
    if (p && p.link && p.link !== link) {
      if (p.session !== hello.session) {
        return this.#reject(link, CLOSE_DUPLICATE_NODE, `node id ${id} is already connected`);
      }
      // Both ends dialed each other at once: keep the link dialed by the lower node id (both
      // ends decide the same).
      const lowerDialed = (l: Link) => (l.dialed ? this.nodeId : id) === Math.min(this.nodeId, id);
      if (p.link.dialed === link.dialed) return this.#reject(link, CLOSE_DUPLICATE_NODE, `node id ${id} is already connected`);
      if (!lowerDialed(link)) {
        // This link lost the tie-break, but the peer is connected through the other one: a dial
        // that made it is not a failure.
        this.#settle(link);
        return this.#reject(link, CLOSE_DUPLICATE_NODE, "duplicate link");
      }
      const old = p.link;
      p.link = undefined;
      old.ws.close(CLOSE_DUPLICATE_NODE, "duplicate link");
    }
    if (p && p.session !== hello.session) {
      // A new incarnation (the process restarted): what the old one had not received is lost.
      this.#forget(p, "it restarted");
      p = undefined;
    }
    const joined = p === undefined;
    if (!p) {
      p = {
        nodeId: id,
        labels: hello.labels,
        session: hello.session,
        link: undefined,
        sendSeq: 0,
        acked: 0,
        progressAt: Date.now(),
        outbox: [],
        outboxBytes: 0,
        queue: [],
        queueBytes: 0,
        recvSeq: 0,
        unacked: 0,
        ackTimer: undefined,
        slab: new FrameSlab(),
        downTimer: undefined,
        refusedTooBig: false,
      };
      this.#peers.set(id, p);
    }
    if (p.downTimer) clearTimeout(p.downTimer);
    p.downTimer = undefined;
    p.link = link;
    link.peer = p;
    this.#seen.add(id);
    // Resend what the peer has not received. Its count is authoritative: a peer we had forgotten
    // (it was gone too long) may have received more than we now know, and our numbering goes on
    // after it.
    if (mySession !== this.session) theirRecv = 0;
    if (joined && theirRecv > 0) p.sendSeq = p.acked = theirRecv;
    if (!joined || theirRecv === 0) p.recvSeq = Math.max(p.recvSeq, this.#recvMemory.get(p.session) ?? 0);
    this.#recvMemory.delete(p.session);
    this.#onAck(p, theirRecv);
    for (const f of p.outbox) sendFrame(link, f.frame);
    log.debug(`node ${this.nodeId}: peer ${id} ${joined ? "joined" : "resumed"} (${link.dialed ? "dialed" : "accepted"})`);
    this.#settle(link); // resolves a promise: its waiters run after the joined event below
    if (joined) this.firePeer({ type: "joined", nodeId: id, labels: p.labels });
    this.#flushPeer(p);
  }

  #onAck(p: PeerState, seq: number): void {
    // Any ACK is progress: new events acknowledged, or the peer reading a frame still arriving.
    p.progressAt = Date.now();
    if (seq > p.acked) p.acked = seq;
    const box = p.outbox;
    let i = 0;
    while (i < box.length && box[i]!.last <= seq) {
      const f = box[i]!;
      p.outboxBytes -= f.bytes;
      if (Array.isArray(f.frame) && this.#holds.size > 0) this.#release(f.frame[1]);
      i++;
    }
    if (i > 0) box.splice(0, i);
    if (this.#drainWaiters.size > 0) this.#checkDrained();
  }

  #deliver(link: Link, p: PeerState, frame: EventsFrame): void {
    const from = p.nodeId;
    if (frame.from !== from) {
      return this.#bad(link, `frame claims sender ${frame.from} on the link of node ${from}`);
    }
    const n = frame.items.length / 2;
    const first = frame.seq;
    if (first > p.recvSeq + 1) {
      // Only when the peer dropped events for us (it had given us up as gone or slow); it logged them.
      log.warn(`node ${this.nodeId}: ${first - p.recvSeq - 1} event(s) from node ${from} were lost (the peer dropped them)`);
    }
    for (let i = 0; i < n; i++) {
      const seq = first + i;
      if (seq <= p.recvSeq) continue; // a resent event we already delivered
      p.recvSeq = seq;
      const msg = { topic: frame.items[2 * i] as string, payload: frame.items[2 * i + 1] as Uint8Array, from };
      this.fireMessage(msg);
      if (p.link !== link) break; // a listener closed this transport or the link
    }
    p.unacked += n;
    if (p.unacked >= ACK_EVERY) this.#sendAck(p);
    else p.ackTimer ??= setTimeout(() => this.#sendAck(p), ACK_DELAY);
  }

  #sendAck(p: PeerState): void {
    if (p.ackTimer) clearTimeout(p.ackTimer);
    p.ackTimer = undefined;
    p.unacked = 0;
    p.link?.ws.send(encodeAck(p.recvSeq));
  }

  /** Report how `link`'s handshake ended (connected, or `err`) to whoever waits for it, once. */
  #settle(link: Link, err?: Error): void {
    const done = link.onReady;
    link.onReady = undefined;
    done?.(err);
  }

  #reject(link: Link, code: number, reason: string): void {
    if (link.closing) return;
    link.closing = true;
    const who = link.hello ? ` of node ${link.hello.nodeId}` : "";
    log.warn(`node ${this.nodeId}: closing a connection${who}: ${reason}`);
    this.#settle(link, new TransportError(`Connection refused: ${reason}`, { closeCode: code }));
    link.ws.close(code, reason.slice(0, 120));
    // A peer that does not answer the close is cut off.
    setTimeout(() => link.ws.terminate(), 2000).unref?.();
  }

  #socketOnClose(link: Link, code: number, reason: string): void {
    this.#links.delete(link);
    clearInterval(link.timer);
    if (link.onReady) {
      // The peer dropped our dial as the duplicate of a link it keeps (both dialed at once): connected.
      if (code === CLOSE_DUPLICATE_NODE && link.hello && this.#peers.get(link.hello.nodeId)?.link) this.#settle(link);
      else {
        const refused = [CLOSE_DUPLICATE_NODE, CLOSE_VERSION, CLOSE_POLICY, CLOSE_AUTH].includes(code);
        const why = `Connection closed during the handshake (${code}${reason ? `: ${reason}` : ""})`;
        this.#settle(link, new TransportError(why, refused ? { closeCode: code } : {}));
      }
    }
    const p = link.peer;
    if (!p || p.link !== link) return;
    p.link = undefined;
    if (code === CLOSE_NORMAL || code === 1001 || this.#closed) {
      this.#forget(p, "it shut down");
      return;
    }
    // Dropped without a normal close: wait for the peer to come back (the dialing side redials).
    if (code === CLOSE_TOO_BIG && !p.refusedTooBig) {
      // Only a peer with a smaller maxPayload than this node's does this (publish checks ours):
      // the frame is resent on every new link and refused again. Said once per peer.
      p.refusedTooBig = true;
      log.warn(
        `node ${this.nodeId}: node ${p.nodeId} refused a frame as larger than its maxPayload (1009), and this node's is ${this.#maxPayload} bytes; give every node the same maxPayload`,
      );
    }
    log.info(`node ${this.nodeId}: link to node ${p.nodeId} dropped (${code}); waiting ${this.#hbTimeout} ms for it`);
    p.downTimer = setTimeout(() => {
      p.downTimer = undefined;
      if (!p.link) this.#forget(p, `it did not come back within ${this.#hbTimeout} ms`);
    }, this.#hbTimeout);
  }

  /** Report `p` as left and drop what it had not acknowledged. */
  #forget(p: PeerState, why: string): void {
    if (this.#peers.get(p.nodeId) !== p) return;
    this.#peers.delete(p.nodeId);
    if (p.downTimer) clearTimeout(p.downTimer);
    if (p.ackTimer) clearTimeout(p.ackTimer);
    this.#dirty.delete(p);
    this.#recvMemory.set(p.session, p.recvSeq);
    if (this.#recvMemory.size > 1000) this.#recvMemory.delete(this.#recvMemory.keys().next().value!);
    const lost = p.sendSeq - p.acked + p.queue.length / 2;
    if (lost > 0 && !this.#closed) {
      log.warn(`node ${this.nodeId}: node ${p.nodeId} left (${why}); ${lost} event(s) it had not acknowledged are dropped`);
    } else log.debug(`node ${this.nodeId}: node ${p.nodeId} left (${why})`);
    if (this.#holds.size > 0) {
      // Dropped, not delivered: the bytes may still be in a socket's send queue, so they are
      // never given back for reuse (the garbage collector takes them).
      for (const f of p.outbox) if (Array.isArray(f.frame)) this.#holds.delete(f.frame[1]);
      for (let i = 1; i < p.queue.length; i += 2) this.#holds.delete(p.queue[i] as Uint8Array);
    }
    p.outbox = [];
    p.outboxBytes = 0;
    p.queue = [];
    p.queueBytes = 0;
    this.firePeer({ type: "left", nodeId: p.nodeId, labels: p.labels });
    if (this.#drainWaiters.size > 0) this.#checkDrained();
  }

  /**
   * Queue an event for every connected peer (see the class documentation for when it is sent).
   *
   * @throws {TransportError} (code `"ERR_DITASK_TOO_LARGE"`) If the event could never be delivered:
   *   its frame would be larger than `maxPayload` (a peer would close the link, 1009) or than
   *   `maxOutboxBytes` (the peer would be dropped as a slow consumer). Nothing is sent.
   */
  publish(topic: string, payload: Uint8Array, done?: () => void): void {
    if (this.#closed) return;
    // An upper bound of the frame (a UTF-16 unit is at most 3 bytes of UTF-8): exact only when near the limit.
    if (payload.byteLength + 3 * topic.length + 48 > this.#frameLimit) this.#checkSize(topic, payload);
    if (done) {
      if (this.#peers.size === 0) done();
      else {
        const hold = this.#holds.get(payload);
        if (hold) hold.n += this.#peers.size;
        else this.#holds.set(payload, { n: this.#peers.size, done });
      }
    }
    for (const p of this.#peers.values()) {
      p.queue.push(topic, payload);
      p.queueBytes += payload.byteLength + topic.length;
      this.#dirty.add(p);
      // Keep frames well below maxPayload: a large backlog is framed now, not at the end of the tick.
      if (p.queueBytes >= MAX_BATCH_BYTES) this.#flushPeer(p);
    }
    if (this.#dirty.size === 0 || this.#flushScheduled || this.#delivering) return;
    this.#flushScheduled = true;
    // A lone event is sent right away (no added latency); more events in the same tick are
    // collected and go out as one frame per peer when the tick's microtasks are done.
    this.#flushAll();
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flushAll();
    });
  }

  #checkSize(topic: string, payload: Uint8Array): void {
    // An upper bound of the frame: the payload, the topic, and at most 48 bytes of CBOR heads,
    // sequence number, sender and alignment.
    const topicBytes = Buffer.byteLength(topic);
    const bytes = payload.byteLength + topicBytes + 48;
    const limit = this.#frameLimit;
    if (bytes <= limit) return;
    const which = limit === this.#maxPayload
      ? `maxPayload (${this.#maxPayload} bytes), the largest frame a peer accepts`
      : `maxOutboxBytes (${this.#maxOutbox} bytes), what is kept for a peer until it acknowledges`;
    // A long name is part of the problem: say so, and do not quote all of it.
    const name = topic.length > 80 ? `${topic.slice(0, 80)}...` : topic;
    const size = topicBytes > 1024
      ? `its name (${topicBytes} bytes) and payload (${payload.byteLength} bytes)`
      : `its ${payload.byteLength} bytes`;
    throw new TransportError(
      `Cannot send "${name}": ${size} are more than ${which}; raise it on every node, or send the data in parts`,
      { code: "ERR_DITASK_TOO_LARGE" },
    );
  }

  #flushAll(): void {
    for (const p of this.#dirty) this.#flushPeer(p);
    this.#dirty.clear();
  }

  #flushPeer(p: PeerState): void {
    const q = p.queue;
    if (q.length === 0) return;
    p.queue = [];
    p.queueBytes = 0;
    // Small events share a frame; a large payload goes in a frame of its own, sent without a copy.
    let from = 0;
    for (let i = 0; i < q.length; i += 2) {
      if ((q[i + 1] as Uint8Array).byteLength < LARGE_PAYLOAD) continue;
      if (i > from) this.#frame(p, q.slice(from, i));
      this.#frame(p, q.slice(i, i + 2));
      from = i + 2;
    }
    if (from < q.length) this.#frame(p, from === 0 ? q : q.slice(from));
  }

  #frame(p: PeerState, items: Array<string | Uint8Array>): void {
    if (this.#peers.get(p.nodeId) !== p) {
      // Dropped as a slow consumer meanwhile.
      for (let i = 1; i < items.length; i += 2) this.#holds.delete(items[i] as Uint8Array);
      return;
    }
    const seq = p.sendSeq + 1;
    const frame = encodeEvents(seq, this.nodeId, items, p.slab);
    if (!Array.isArray(frame) && frame.byteLength > this.#maxPayload && items.length > 2) {
      // A tick's events add up to more than a peer accepts in one frame (a small maxPayload):
      // send them in two frames, each within it. Every single event fits (publish checks).
      const half = Math.floor(items.length / 4) * 2;
      this.#frame(p, items.slice(0, half));
      this.#frame(p, items.slice(half));
      return;
    }
    p.sendSeq += items.length / 2;
    // Payloads copied into a frame are not read again.
    if (!Array.isArray(frame) && this.#holds.size > 0) {
      for (let i = 1; i < items.length; i += 2) this.#release(items[i] as Uint8Array);
    }
    // Each kept frame also costs its bookkeeping objects: count them, so the bound is honest.
    const bytes = ENTRY_OVERHEAD + (Array.isArray(frame) ? frame[0].byteLength + frame[1].byteLength : frame.byteLength);
    if (p.outbox.length === 0) p.progressAt = Date.now();
    p.outbox.push({ last: p.sendSeq, frame, bytes });
    p.outboxBytes += bytes;
    if (p.outboxBytes > this.#maxOutbox) {
      this.#slow(p, `${p.outboxBytes} bytes not acknowledged (max ${this.#maxOutbox})`);
      return;
    }
    if (p.link) sendFrame(p.link, frame);
  }

  /** Drop `p` as a slow consumer: close its link (4004) and report it as left. */
  /** One holder of `payload` is done with it; the last one calls the publisher's `done`. */
  #release(payload: Uint8Array): void {
    const hold = this.#holds.get(payload);
    if (hold && --hold.n === 0) {
      this.#holds.delete(payload);
      hold.done();
    }
  }

  #slow(p: PeerState, why: string): void {
    const link = p.link;
    log.warn(`node ${this.nodeId}: node ${p.nodeId} is a slow consumer: ${why}`);
    this.#forget(p, "slow consumer");
    link?.ws.close(CLOSE_SLOW, "slow consumer");
  }

  /**
   * Resolve when every event published so far has been acknowledged by every peer (or the peer
   * left): back-pressure for producers of large streams.
   *
   * @example
   * ```ts
   * for (const chunk of chunks) { transport.publish("t", chunk); await transport.drain(); }
   * ```
   */
  drain(): Promise<void> {
    this.#flushAll();
    return new Promise((resolve) => {
      this.#drainWaiters.add(resolve);
      this.#checkDrained();
    });
  }

  #checkDrained(): void {
    for (const p of this.#peers.values()) if (p.outbox.length > 0 || p.queue.length > 0) return;
    const waiters = [...this.#drainWaiters];
    this.#drainWaiters.clear();
    for (const w of waiters) w();
  }

  /**
   * Fault injection for tests: cut every connection abruptly, as a network failure would (both
   * processes live on). The dialing sides reconnect and nothing is lost.
   */
  dropConnections(): void {
    for (const link of this.#links) link.ws.terminate();
  }

  subscribe(_topic: string): void {}
  unsubscribe(_topic: string): void {}

  #fail(err: Error): void {
    if (!this.fireError(err)) log.warn(`node ${this.nodeId}:`, err.message);
  }

  /**
   * Send what is queued, close every connection (normal closure: peers report this node as left
   * at once and do not redial it) and stop serving. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#flushAll();
    this.#closed = true;
    for (const wake of [...this.#sleepers]) wake();
    const closing = [...this.#links].map(
      (link) =>
        new Promise<void>((resolve) => {
          clearInterval(link.timer);
          if (link.ws.readyState === CLOSED) return resolve();
          const timer = setTimeout(() => link.ws.terminate(), 3000);
          link.ws.once("close", () => {
            clearTimeout(timer);
            resolve();
          });
          // Acknowledge what arrived, so the peer does not keep it as unacknowledged.
          if (link.peer && link.peer.unacked > 0) this.#sendAck(link.peer);
          link.ws.close(CLOSE_NORMAL, "shutdown");
        }),
    );
    await Promise.all(closing);
    for (const p of [...this.#peers.values()]) this.#forget(p, "this node closed");
    await this.#server?.close();
  }
}

/** Remove a Unix socket file that no process listens on (left by a killed process). */
async function removeStaleSocket(path: string): Promise<void> {
  if (!existsSync(path)) return;
  const live = await new Promise<boolean>((resolve) => {
    const s = netConnect(path);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
  if (!live) {
    try {
      unlinkSync(path);
    } catch {
      // listen() reports the problem
    }
  }
}
