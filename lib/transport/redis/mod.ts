import type { createClient } from "@redis/client";

// The client module is loaded when a RedisTransport opens, not when ditask is imported: it takes
// ~0.2 s to load, which every mesh worker would pay at start-up.
type RedisModule = typeof import("@redis/client");
let redis: RedisModule | undefined;
import { Buffer } from "node:buffer";
import type { ConnectionOptions } from "node:tls";
import type { Transport, TransportMessage } from "../types.ts";
import { TransportError } from "../../errors.ts";
import { TransportListeners } from "../_listeners.ts";
import { checkNodeLimits, peerLists } from "../limits.ts";
import { log } from "../../log.ts";
import { getEnv } from "../../runtime.ts";
import {
  decodeEvents,
  decodeMember,
  encodeEvents,
  encodeMember,
  encodePresence,
  type MemberMessage,
  newInstance,
  presenceKey,
  type RedisNames,
  redisNames,
} from "./protocol.ts";

export { redisNames } from "./protocol.ts";

/** Options of {@link RedisTransport}. */
export interface RedisTransportOptions {
  /** This node's id (an integer >= 0). */
  nodeId: number;
  /**
   * The server as a URL: `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS.
   * Takes precedence over `redisHost`/`redisPort`.
   */
  redisUrl?: string;
  /** The server's host (DI-engine's `redis_host`). @default "127.0.0.1" */
  redisHost?: string;
  /** The server's port (DI-engine's `redis_port`). @default 6379 */
  redisPort?: number;
  /** TLS options (CA, client certificate, ...); setting them turns TLS on. */
  tls?: ConnectionOptions;
  /**
   * The job: a namespace that keeps jobs sharing one Redis apart (channels and keys start with
   * `ditask:<job>:`). @default the environment variable `DITASK_JOB`, else `DI_JOB_ID` (set by
   * DI-orchestrator), else `"default"`
   */
  job?: string;
  /** Node ids that must be present before `open()` resolves. */
  expect?: number[];
  /** Labels announced to peers. */
  labels?: string[];
  /** How long `open()` waits for Redis and the expected peers, in ms. @default 60000 */
  connectTimeout?: number;
  /** How often this node refreshes its presence and sends a heartbeat, in ms. @default 1000, or a quarter of `peerTimeout` when that is less */
  heartbeatInterval?: number;
  /**
   * A peer not heard from for this long is reported as left; it is also how long a presence key
   * outlives its node. Keep it well above the longest event-loop stall (a training step). @default 15000
   */
  peerTimeout?: number;
  /**
   * At most this many bytes of events wait while Redis is unreachable; past it the oldest are
   * dropped (and counted in a warning). @default 268435456 (256 MiB)
   */
  maxQueuedBytes?: number;
}

type Client = ReturnType<typeof createClient>;

/** Encoded frames, in seq order, waiting to be sent or for Redis to confirm them. */
interface Frame {
  channel: string;
  data: Buffer;
}

/** Events of one topic published in this tick, not yet encoded. */
interface Run {
  topic: string;
  seq: number;
  payloads: Uint8Array[];
  bytes: number;
  /** Publishers' `done` callbacks: called once the payloads are copied into a frame. */
  dones?: Array<() => void>;
}

interface Peer {
  inst: string;
  labels: string[];
  lastSeen: number;
}

/** After a reconnect: frames wait until every peer was heard from again (or `peerTimeout`). */
interface Gate {
  since: number;
  heard: Set<number>;
}

/** A run of events is cut into another Redis message past this many bytes. */
const MAX_RUN_BYTES = 1024 * 1024;
/** How many dropped foreign messages are logged one by one before only every 1000th is. */
const LOG_DROPS = 20;

/**
 * The Redis transport (`mqType: "redis"`): nodes exchange the same events as on the mesh through a
 * Redis server's pub/sub, one channel per topic (`ditask:<job>:t:<topic>`), with presence keys and
 * a membership channel for peers joining and leaving.
 *
 * - Every message carries the sender's node id, instance and a sequence number: a node never
 *   receives its own messages, order per sender is kept and a message is delivered at most once.
 * - Until {@link endStartup} the node subscribes to every topic of the job with one pattern, so
 *   that no event sent by a peer's `main` at start-up is lost (the router holds the events without
 *   a listener yet); afterwards it subscribes only to the topics it listens to.
 * - Subscriptions are restored when the connection comes back. Events published while Redis is
 *   unreachable wait (up to `maxQueuedBytes`) and are sent, in order, once every peer is back.
 *
 * @example Two nodes in one process
 * ```ts
 * const a = new RedisTransport({ nodeId: 0, redisPort: 6379, expect: [1] });
 * const b = new RedisTransport({ nodeId: 1, redisPort: 6379, expect: [0] });
 * await Promise.all([a.open(), b.open()]);
 * b.onMessage((m) => console.log(m.topic, m.from));
 * a.publish("task.greeting", new Uint8Array([1]));
 * ```
 */
export class RedisTransport extends TransportListeners implements Transport {
  readonly nodeId: number;
  readonly labels: string[];
  /** The job (namespace) this node belongs to. */
  readonly job: string;
  #names: RedisNames;
  #key: string;
  #inst = newInstance();
  #clientOptions: Parameters<typeof createClient>[0];
  #display: string;
  #expect: number[];
  #connectTimeout: number;
  #heartbeatInterval: number;
  #peerTimeout: number;
  #maxQueuedBytes: number;
  #cmd: Client | undefined;
  #sub: Client | undefined;
  #cmdUp = false;
  #subUp = false;
  #joined = false;
  #needRejoin = false;
  #lostLogged = false;
  #closed = false;
  #opened: Promise<void> | undefined;
  #closing: Promise<void> | undefined;
  #abortOpen: ((err: Error) => void) | undefined;
  #patternMode = true;
  #wanted = new Set<string>();
  #subOps = new Set<Promise<unknown>>();
  #peers = new Map<number, Peer>();
  /** Every node id that was present at some time (a fast peer may be done before open() is). */
  #everSeen = new Set<number>();
  #senders = new Map<number, { inst: string; last: number }>();
  #seq = 0;
  #runs: Run[] = [];
  #flushScheduled = false;
  /** Sending directly (connected, not gated). */
  #up = false;
  #gate: Gate | undefined;
  #outbox: Frame[] = [];
  #outboxBytes = 0;
  #inflight: Frame[] = [];
  #droppedFrames = 0;
  #drainWaiters: Array<() => void> = [];
  #heartbeat: ReturnType<typeof setInterval> | undefined;
  #lastTick = 0;
  /** When this node last heard its own heartbeat back on the membership channel (0: not yet). */
  #heardSelf = 0;
  #drops = 0;
  #lastError: string | undefined;

  /**
   * @param options See {@link RedisTransportOptions}.
   * @throws {TypeError} If the node id, the URL, the port, the job, a limit or a timing is invalid.
   */
  constructor(options: RedisTransportOptions) {
    super();
    checkNodeLimits(options);
    if (!Number.isInteger(options.nodeId) || options.nodeId < 0 || options.nodeId > 0xffffffff) {
      throw new TypeError(`Invalid nodeId ${options.nodeId}: expected an integer >= 0`);
    }
    this.nodeId = options.nodeId;
    const { labels, expect } = peerLists(options);
    this.labels = labels;
    this.job = jobOf(options);
    this.#names = redisNames(this.job);
    this.#key = presenceKey(this.#names, this.nodeId);
    this.#expect = expect.filter((id) => id !== this.nodeId);
    this.#connectTimeout = options.connectTimeout ?? 60_000;
    this.#peerTimeout = options.peerTimeout ?? 15_000;
    // A short peerTimeout alone asks for quick detection: refresh presence often enough for it.
    this.#heartbeatInterval = options.heartbeatInterval ?? Math.min(1000, this.#peerTimeout / 4);
    this.#maxQueuedBytes = options.maxQueuedBytes ?? 256 * 1024 * 1024;
    const { clientOptions, display } = clientConfig(options);
    this.#clientOptions = clientOptions;
    this.#display = display;
  }

  /** The server, as `redis://host:port` (without credentials). */
  get address(): string {
    return this.#display;
  }

  /** The node ids of the peers present now (heard from within `peerTimeout`). */
  get peers(): number[] {
    return [...this.#peers.keys()];
  }

  /**
   * The labels a present peer announced.
   *
   * @param nodeId The peer's node id.
   * @returns Its labels, or `undefined` if it is not present.
   */
  peerLabels(nodeId: number): string[] | undefined {
    return this.#peers.get(nodeId)?.labels;
  }

  /**
   * Connect to Redis, subscribe, announce this node and wait until every expected node id has
   * been present (a fast peer that already finished and left counts: its events were received).
   *
   * @throws {TransportError} If Redis cannot be reached or refuses the credentials, another live
   *   process holds this node id in the job, or the expected peers are not present within
   *   `connectTimeout`.
   */
  open(): Promise<void> {
    this.#opened ??= this.#open();
    return this.#opened;
  }

  async #open(): Promise<void> {
    if (this.#closed) throw new TransportError(`Cannot open node ${this.nodeId}: the transport is closed`);
    const deadline = Date.now() + this.#connectTimeout;
    const aborted = new Promise<never>((_, reject) => (this.#abortOpen = reject));
    aborted.catch(() => {});
    const step = async <T>(p: Promise<T>, what: string): Promise<T> => {
      const r = await within(Promise.race([p, aborted]), deadline - Date.now(), () => this.#timeoutError(what));
      if (log.enabled("debug")) log.debug(`node ${this.nodeId}: open: ${what}: done`);
      return r;
    };
    try {
      redis ??= await import("@redis/client");
      const [cmd, sub] = this.#makeClients();
      await step(Promise.all([cmd.connect(), sub.connect()]), `connect to Redis at ${this.#display}`);
      await step(
        Promise.all([
          sub.subscribe(this.#names.members, this.#onMember, true),
          this.#patternMode
            ? sub.pSubscribe(this.#names.topicPattern, this.#onData, true)
            : this.#wanted.size > 0
            ? sub.subscribe([...this.#wanted].map((t) => this.#names.topicPrefix + t), this.#onData, true)
            : Promise.resolve(),
        ]),
        "subscribe",
      );
      await step(this.#claim(deadline), "claim the node id");
      await step(this.#announce("hello"), "announce this node");
      this.#joined = true;
      await step(this.#discover(), "list the present nodes");
      this.#lastTick = Date.now();
      this.#heartbeat = setInterval(() => this.#tick(), this.#heartbeatInterval);
      this.#up = true;
      this.#pump();
      await step(this.#waitExpected(), "wait for the expected peers");
    } catch (err) {
      this.#abortOpen = undefined;
      await this.close();
      if (err instanceof TransportError && !err.message.startsWith("Redis refused")) throw err;
      throw new TransportError(
        `Cannot open node ${this.nodeId} on Redis at ${this.#display}: ${(err as Error)?.message ?? String(err)}`,
        { cause: err },
      );
    }
    this.#abortOpen = undefined;
  }

  #timeoutError(what: string): TransportError {
    if (what === "wait for the expected peers") {
      const missing = this.#expect.filter((id) => !this.#everSeen.has(id));
      return new TransportError(
        `Cannot start node ${this.nodeId}: peers ${missing.join(", ")} did not join job "${this.job}" within ${this.#connectTimeout} ms`,
      );
    }
    const detail = this.#lastError !== undefined ? ` (last error: ${this.#lastError})` : "";
    return new TransportError(
      `Cannot start node ${this.nodeId}: could not ${what} within ${this.#connectTimeout} ms${detail}`,
    );
  }

  #makeClients(): [Client, Client] {
    // The command connection never queues by itself: the transport keeps its own queue, so that
    // it knows what Redis confirmed and can resend the rest after a reconnect. The subscriber is a
    // duplicate (building a client class is costly; node-redis caches only the last config).
    const cmd = redis!.createClient({ ...this.#clientOptions, disableOfflineQueue: true });
    const sub = cmd.duplicate({ disableOfflineQueue: false });
    this.#cmd = cmd;
    this.#sub = sub;
    for (const [role, client] of [["cmd", cmd], ["sub", sub]] as const) {
      client.on("error", (err: Error) => this.#connectionError(role, err));
      client.on("ready", () => this.#connectionReady(role));
      client.on("end", () => this.#connectionDown(role));
    }
    return [cmd, sub];
  }

  #connectionError(role: "cmd" | "sub", err: Error): void {
    if (this.#closed) return;
    const msg = err?.message ?? String(err);
    this.#lastError = msg;
    if (this.#joined && !this.#lostLogged) {
      this.#lostLogged = true;
      log.warn(`node ${this.nodeId}: lost the Redis connection (${role}: ${msg}); reconnecting`);
    } else log.debug(`node ${this.nodeId}: Redis ${role} connection:`, msg);
    this.#connectionDown(role);
  }

  #connectionDown(role: "cmd" | "sub"): void {
    if (role === "cmd") this.#cmdUp = false;
    else this.#subUp = false;
    if (this.#joined && !this.#closed) {
      this.#needRejoin = true;
      this.#up = false;
      this.#gate = undefined;
    }
  }

  #connectionReady(role: "cmd" | "sub"): void {
    if (role === "cmd") this.#cmdUp = true;
    else this.#subUp = true;
    if (this.#closed || !this.#needRejoin || !this.#cmdUp || !this.#subUp) return;
    // Both connections are back and (the client restores subscriptions before "ready") this node
    // hears the job again: announce it, then send what waited once the peers are back too.
    this.#needRejoin = false;
    this.#lostLogged = false;
    log.info(`node ${this.nodeId}: Redis connection restored; subscriptions are back`);
    this.#gate = { since: Date.now(), heard: new Set() };
    this.#announce("hello").catch((err) => log.debug(`node ${this.nodeId}: re-announce failed:`, err?.message));
    this.#checkGate();
  }

  #checkGate(): void {
    const g = this.#gate;
    if (!g || !this.#cmdUp || !this.#subUp) return;
    const waiting = [...this.#peers.keys()].filter((id) => !g.heard.has(id));
    if (waiting.length > 0 && Date.now() - g.since < this.#peerTimeout) return;
    if (waiting.length > 0) log.warn(`node ${this.nodeId}: peers ${waiting.join(", ")} did not come back; sending anyway`);
    this.#gate = undefined;
    this.#up = true;
    this.#pump();
  }

  /** Take this node's presence key; wait while a previous process with this id still holds it. */
  async #claim(deadline: number): Promise<void> {
    const cmd = this.#cmd!;
    const value = encodePresence(this.nodeId, this.#inst.hex, this.labels);
    const giveUp = Math.min(deadline, Date.now() + this.#peerTimeout + 2 * this.#heartbeatInterval);
    for (;;) {
      const r = await cmd.set(this.#key, value, { expiration: { type: "PX", value: this.#peerTimeout }, condition: "NX" });
      if (r === "OK") return;
      const held = await cmd.get(this.#key);
      const holder = held === null ? undefined : decodeMember(String(held), true);
      if (typeof holder === "object" && holder.inst === this.#inst.hex) return;
      if (Date.now() >= giveUp) {
        throw new TransportError(
          `Cannot join job "${this.job}" on Redis at ${this.#display}: node id ${this.nodeId} is already present`,
          { peerId: this.nodeId },
        );
      }
      await sleep(Math.min(200, this.#heartbeatInterval));
      if (this.#closed) throw new TransportError(`Cannot open node ${this.nodeId}: the transport is closed`);
    }
  }

  /** Refresh the presence key and the id set, and publish a membership message. */
  async #announce(k: "hello" | "hb"): Promise<void> {
    const cmd = this.#cmd!;
    const value = encodePresence(this.nodeId, this.#inst.hex, this.labels);
    await Promise.all([
      cmd.set(this.#key, value, { expiration: { type: "PX", value: this.#peerTimeout } }),
      cmd.sAdd(this.#names.ids, String(this.nodeId)),
      cmd.pExpire(this.#names.ids, 24 * 3600 * 1000),
      cmd.publish(this.#names.members, this.#member(k)),
    ]);
  }

  #member(k: MemberMessage["k"]): string {
    return encodeMember({ k, id: this.nodeId, inst: this.#inst.hex, labels: this.labels });
  }

  /** Learn the nodes that are present already. */
  async #discover(): Promise<void> {
    const cmd = this.#cmd!;
    const ids = (await cmd.sMembers(this.#names.ids)).map(String).filter((id) => /^\d+$/.test(id) && Number(id) !== this.nodeId);
    if (ids.length === 0) return;
    const values = await cmd.mGet(ids.map((id) => presenceKey(this.#names, Number(id))));
    values.forEach((v) => {
      if (v === null) return;
      const m = decodeMember(String(v), true);
      if (typeof m === "string") {
        this.#dropped(`a presence key of job "${this.job}"`, m);
        return;
      }
      if (m.id !== this.nodeId) this.#seen(m);
    });
  }

  #waitExpected(): Promise<void> {
    const missing = () => this.#expect.filter((id) => !this.#everSeen.has(id));
    if (missing().length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const off = this.onPeer(() => {
        if (missing().length > 0) return;
        off();
        resolve();
      });
    });
  }

  #tick(): void {
    const now = Date.now();
    // A late tick means this process was busy (a long step): peers were not silent, we were deaf.
    const late = now - this.#lastTick > 3 * this.#heartbeatInterval;
    this.#lastTick = now;
    if (this.#cmdUp && this.#subUp && !this.#needRejoin) {
      this.#announce("hb").catch((err) => log.debug(`node ${this.nodeId}: heartbeat failed:`, err?.message));
    }
    if (!late) {
      // Peers are judged up to what this node could hear: while a large message is still
      // arriving on the subscriber connection, everything behind it (our own heartbeat too) waits,
      // and silence then says nothing about the peers.
      const heard = this.#cmdUp && this.#heardSelf > 0 ? Math.min(now, this.#heardSelf + this.#heartbeatInterval) : now;
      for (const [id, p] of this.#peers) if (heard - p.lastSeen > this.#peerTimeout) this.#left(id, p, "timed out");
    }
    this.#checkGate();
  }

  #seen(m: MemberMessage): boolean {
    const p = this.#peers.get(m.id);
    if (p && p.inst === m.inst) {
      p.lastSeen = Date.now();
      p.labels = m.labels;
      return false;
    }
    if (p) this.#left(m.id, p, "restarted");
    this.#peers.set(m.id, { inst: m.inst, labels: m.labels, lastSeen: Date.now() });
    this.#everSeen.add(m.id);
    log.debug(`node ${this.nodeId}: peer ${m.id} joined`);
    this.firePeer({ type: "joined", nodeId: m.id, labels: m.labels });
    return true;
  }

  #left(id: number, p: Peer, why: string): void {
    if (this.#peers.get(id) !== p) return;
    this.#peers.delete(id);
    log.debug(`node ${this.nodeId}: peer ${id} left (${why})`);
    this.firePeer({ type: "left", nodeId: id, labels: p.labels });
    this.#checkGate();
  }

  #onMember = (message: Buffer, _channel: Buffer): void => {
    if (this.#closed) return;
    const m = decodeMember(message);
    if (typeof m === "string") return this.#dropped(`the membership channel of job "${this.job}"`, m);
    if (m.id === this.nodeId) {
      if (m.inst !== this.#inst.hex) this.#dropped(`job "${this.job}"`, `another process uses node id ${m.id}`);
      else this.#heardSelf = Date.now();
      return;
    }
    if (m.k === "bye") {
      const p = this.#peers.get(m.id);
      if (p && p.inst === m.inst) this.#left(m.id, p, "closed");
      this.#senders.delete(m.id);
      return;
    }
    this.#seen(m);
    if (this.#gate) {
      this.#gate.heard.add(m.id);
      this.#checkGate();
    }
    // A newcomer (or a node back from a reconnect) learns at once that this node hears it.
    if (m.k === "hello" && this.#cmdUp && this.#subUp && !this.#needRejoin) {
      this.#cmd!.publish(this.#names.members, this.#member("hb")).catch(() => {});
    }
  };

  #onData = (message: Buffer, channel: Buffer): void => {
    if (this.#closed) return;
    const f = decodeEvents(message);
    if (typeof f === "string") return this.#dropped(`channel "${channel}"`, f);
    if (channel.toString() !== this.#names.topicPrefix + f.topic) {
      return this.#dropped(`channel "${channel}"`, `the frame's topic is "${f.topic}"`);
    }
    if (f.from === this.nodeId) {
      if (f.instance !== this.#inst.hex) this.#dropped(`job "${this.job}"`, `another process uses node id ${f.from}`);
      return;
    }
    let s = this.#senders.get(f.from);
    if (!s || s.inst !== f.instance) {
      s = { inst: f.instance, last: 0 };
      this.#senders.set(f.from, s);
    }
    const p = this.#peers.get(f.from);
    if (p && p.inst === f.instance) p.lastSeen = Date.now();
    const n = f.payloads.length;
    for (let i = 0; i < n; i++) {
      const seq = f.seq + i;
      if (seq <= s.last) continue; // seen already (pattern and channel, or resent)
      s.last = seq;
      const msg: TransportMessage = { topic: f.topic, payload: f.payloads[i]!, from: f.from };
      try {
        this.fireMessage(msg);
      } catch (err) {
        log.error(`node ${this.nodeId}: a message handler for "${f.topic}" failed:`, err);
      }
    }
  };

  #dropped(where: string, why: string): void {
    this.#drops++;
    if (this.#drops <= LOG_DROPS || this.#drops % 1000 === 0) {
      log.warn(`node ${this.nodeId}: dropped a message on ${where}: ${why}${this.#drops > LOG_DROPS ? ` (${this.#drops} so far)` : ""}`);
    }
  }

  /**
   * Send `payload` under `topic` to every node of the job that listens to it. Events of one tick
   * go out together at the end of the tick (consecutive events of a topic as one Redis message).
   * The bytes are read at the end of the tick: do not change them before. Does nothing once closed.
   *
   * @param topic The topic (`task.<event>` or a router topic).
   * @param payload The encoded arguments.
   * @throws {RangeError} If the topic is longer than 65535 bytes in UTF-8.
   */
  publish(topic: string, payload: Uint8Array, done?: () => void): void {
    if (this.#closed) return;
    if (topic.length > 21845 && new TextEncoder().encode(topic).byteLength > 65535) {
      throw new RangeError(`Cannot publish on topic "${topic.slice(0, 40)}…": longer than 65535 bytes`);
    }
    const seq = ++this.#seq;
    let run = this.#runs[this.#runs.length - 1];
    if (run && run.topic === topic && run.bytes < MAX_RUN_BYTES) {
      run.payloads.push(payload);
      run.bytes += payload.byteLength + 4;
    } else {
      run = { topic, seq, payloads: [payload], bytes: payload.byteLength + 4 };
      this.#runs.push(run);
    }
    if (done) (run.dones ??= []).push(done);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      queueMicrotask(() => this.#flush());
    }
  }

  /** Encode this tick's runs into frames and send them (or queue them while not connected). */
  #flush(): void {
    this.#flushScheduled = false;
    const runs = this.#runs;
    if (runs.length === 0) return;
    this.#runs = [];
    for (const r of runs) {
      const data = encodeEvents(this.nodeId, this.#inst.bytes, r.seq, r.topic, r.payloads);
      if (r.dones) for (const done of r.dones) done(); // the payloads were copied into the frame
      const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
      this.#outbox.push({ channel: this.#names.topicPrefix + r.topic, data: buf });
      this.#outboxBytes += buf.byteLength;
    }
    if (this.#up) this.#pump();
    else this.#bound();
  }

  /** Drop the oldest waiting frames past `maxQueuedBytes` (only while Redis is unreachable). */
  #bound(): void {
    let dropped = 0;
    while (this.#outboxBytes > this.#maxQueuedBytes && this.#outbox.length > 0) {
      this.#outboxBytes -= this.#outbox.shift()!.data.byteLength;
      dropped++;
    }
    if (dropped > 0) {
      this.#droppedFrames += dropped;
      log.warn(
        `node ${this.nodeId}: Redis is unreachable and over ${this.#maxQueuedBytes} bytes of events wait; dropped the oldest ${dropped} message(s) (${this.#droppedFrames} in all)`,
      );
    }
  }

  /** Send every waiting frame, in order. */
  #pump(): void {
    const cmd = this.#cmd;
    if (!cmd || !this.#up) return;
    while (this.#outbox.length > 0) {
      const f = this.#outbox.shift()!;
      this.#outboxBytes -= f.data.byteLength;
      this.#inflight.push(f);
      cmd.publish(f.channel, f.data).then(
        () => {
          const i = this.#inflight.indexOf(f);
          if (i >= 0) this.#inflight.splice(i, 1);
          this.#checkDrained();
        },
        (err: Error) => this.#publishFailed(f, err),
      );
    }
  }

  #publishFailed(f: Frame, err: Error): void {
    const i = this.#inflight.indexOf(f);
    if (i < 0) return;
    if (redis && err instanceof redis.ErrorReply) {
      // Redis answered with an error (a full memory, a missing permission): resending will not help.
      this.#inflight.splice(i, 1);
      this.#fail(new TransportError(`Redis refused a message on channel "${f.channel}": ${err.message}`, { cause: err }));
      this.#checkDrained();
      return;
    }
    if (this.#closed) return;
    // Not confirmed: Redis may or may not have it. Send it and everything after it again once the
    // connection is back and the peers are back; receivers drop what they have seen already.
    log.debug(`node ${this.nodeId}: a publish was not confirmed (${err?.message}); it will be sent again`);
    const back = this.#inflight;
    this.#inflight = [];
    for (const b of back) this.#outboxBytes += b.data.byteLength;
    this.#outbox = [...back, ...this.#outbox];
    this.#connectionDown("cmd");
    this.#bound();
    // The client may already be connected again (it failed while not ready): rejoin now.
    if (this.#cmd?.isReady) this.#connectionReady("cmd");
  }

  /**
   * Resolves when Redis has accepted every message published so far (it has handed them to the
   * subscribers' connections): back-pressure for a sender of large payloads. While Redis is
   * unreachable it waits until the queued messages went out after the reconnect.
   *
   * @returns A promise that resolves when nothing published before the call is waiting; at once
   *   after `close()`.
   * @example
   * ```ts
   * for (const batch of batches) { t.publish("task.trajectory", batch); await t.drain(); }
   * ```
   */
  drain(): Promise<void> {
    if (this.#closed || this.#drained()) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  #drained(): boolean {
    return this.#runs.length === 0 && this.#outbox.length === 0 && this.#inflight.length === 0;
  }

  #checkDrained(): void {
    if (this.#drainWaiters.length === 0 || !(this.#closed || this.#drained())) return;
    for (const fn of this.#drainWaiters.splice(0)) fn();
  }

  /**
   * Say that this node wants the events of `topic`. After start-up this subscribes to the topic's
   * channel; events published before Redis confirmed the subscription are not delivered (see
   * {@link whenSubscribed}).
   *
   * @param topic The topic.
   */
  subscribe(topic: string): void {
    if (this.#wanted.has(topic)) return;
    this.#wanted.add(topic);
    if (!this.#patternMode && this.#sub && !this.#closed) {
      this.#track(this.#sub.subscribe(this.#names.topicPrefix + topic, this.#onData, true), `subscribe to "${topic}"`);
    }
  }

  /**
   * Say that this node no longer wants the events of `topic` (after start-up: unsubscribe).
   *
   * @param topic The topic.
   */
  unsubscribe(topic: string): void {
    if (!this.#wanted.delete(topic)) return;
    if (!this.#patternMode && this.#sub && !this.#closed) {
      this.#track(this.#sub.unsubscribe(this.#names.topicPrefix + topic, this.#onData, true), `unsubscribe from "${topic}"`);
    }
  }

  /**
   * End the start-up phase: from now on only the topics passed to {@link subscribe} are received
   * (their channels are subscribed before the pattern is dropped, so nothing falls in between).
   * The router calls it when its start-up hold ends. Idempotent.
   */
  endStartup(): void {
    if (!this.#patternMode) return;
    this.#patternMode = false;
    const sub = this.#sub;
    if (!sub || this.#closed) return;
    if (this.#wanted.size > 0) {
      this.#track(sub.subscribe([...this.#wanted].map((t) => this.#names.topicPrefix + t), this.#onData, true), "subscribe");
    }
    this.#track(sub.pUnsubscribe(this.#names.topicPattern, this.#onData, true), "drop the start-up pattern");
  }

  /** Whether the node still receives every topic of the job (before {@link endStartup}). */
  get startupMode(): boolean {
    return this.#patternMode;
  }

  /**
   * Resolves when Redis has confirmed every subscription change made so far: events published
   * after that reach this node.
   *
   * @returns A promise that resolves (never rejects; failures are reported through `onError`).
   */
  async whenSubscribed(): Promise<void> {
    while (this.#subOps.size > 0) await Promise.all([...this.#subOps]);
  }

  #track(p: Promise<unknown>, what: string): void {
    const q = p.catch((err: Error) => {
      if (!this.#closed) this.#fail(new TransportError(`Cannot ${what} on Redis at ${this.#display}: ${err?.message}`, { cause: err }));
    }).finally(() => this.#subOps.delete(q));
    this.#subOps.add(q);
  }

  #fail(err: Error): void {
    if (!this.fireError(err)) log.warn(`node ${this.nodeId}:`, err.message);
  }

  /**
   * Send what is queued, leave the job (peers see this node leave at once) and close both Redis
   * connections. Events that still wait because Redis is unreachable are dropped (with a
   * warning). Idempotent.
   *
   * @returns A promise that resolves when both connections are closed (within a few seconds even
   *   if Redis does not answer).
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#flush();
    this.#closed = true;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = undefined;
    this.#abortOpen?.(new TransportError(`Cannot open node ${this.nodeId}: the transport was closed`));
    const cmd = this.#cmd, sub = this.#sub;
    const waiting = this.#outbox.length + this.#inflight.length;
    if (this.#joined && cmd && this.#cmdUp) {
      if (!this.#up && waiting > 0) log.warn(`node ${this.nodeId}: closing with ${waiting} unsent Redis message(s)`);
      // Leave after the data (one connection keeps the order): delete the key, then say bye.
      const leave = Promise.all([
        cmd.del(this.#key),
        cmd.sRem(this.#names.ids, String(this.nodeId)),
        cmd.publish(this.#names.members, this.#member("bye")),
      ]);
      await within(leave, 3000, () => new Error("timeout")).catch(() => {});
    } else if (this.#joined && waiting > 0) {
      log.warn(`node ${this.nodeId}: Redis is unreachable; ${waiting} message(s) were not sent`);
    }
    this.#joined = false;
    await Promise.all([cmd, sub].map((c) => (c ? quit(c) : undefined)));
    this.#peers.clear();
    this.#senders.clear();
    this.#runs = [];
    this.#outbox = [];
    this.#inflight = [];
    this.#checkDrained();
  }
}

/** Close a client gracefully (pending replies first), or at once if that takes too long. */
async function quit(c: Client): Promise<void> {
  if (c.isOpen && c.isReady) await within(c.close(), 3000, () => new Error("timeout")).catch(() => {});
  c.destroy();
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** `p`, or a rejection with `make()` after `ms` (the timer is cleared either way). */
function within<T>(p: Promise<T>, ms: number, make: () => Error): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => (timer = setTimeout(() => reject(make()), Math.max(0, ms)))),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Reconnect quickly at first, then every second at most, with jitter; never after bad credentials
 * or a TLS certificate that does not verify (trying again cannot help).
 */
function reconnectStrategy(retries: number, cause: Error): number | Error {
  if (/WRONGPASS|NOAUTH|invalid (username|password)|ERR AUTH|NOPERM/i.test(cause?.message ?? "")) {
    return new TransportError(`Redis refused the credentials: ${cause.message}`, { cause });
  }
  const code = String((cause as { code?: unknown })?.code ?? "");
  if (/CERT|SELF_SIGNED|ERR_TLS|ERR_SSL/.test(code)) {
    return new TransportError(`Redis refused: the TLS certificate does not verify (${code}: ${cause.message})`, { cause });
  }
  return Math.min(1000, 25 * 2 ** Math.min(retries, 6)) * (0.5 + Math.random() / 2);
}

/** The job of `o`: its `job`, else `DITASK_JOB`, else `DI_JOB_ID`, else "default". */
function jobOf(o: RedisServerOptions): string {
  return o.job ?? getEnv("DITASK_JOB") ?? getEnv("DI_JOB_ID") ?? "default";
}

/**
 * Where a node with these options meets its peers, for people to read: the server without
 * credentials and the job, e.g. `redis://127.0.0.1:6379, job "default"`.
 *
 * @param o The server and job fields of the transport's options.
 * @throws {TypeError} If `redisUrl` or `redisPort` is invalid.
 * @example
 * ```ts
 * redisTarget({ redisUrl: "redis://:pw@redis:6379" }); // 'redis://redis:6379, job "default"'
 * ```
 */
export function redisTarget(o: RedisServerOptions): string {
  return `${clientConfig(o).display}, job ${JSON.stringify(jobOf(o))}`;
}

/** The options that say which server and job: what {@link redisTarget} reads. */
export type RedisServerOptions = Pick<RedisTransportOptions, "redisUrl" | "redisHost" | "redisPort" | "job">;

function clientConfig(o: RedisServerOptions & Pick<RedisTransportOptions, "tls">): { clientOptions: Parameters<typeof createClient>[0]; display: string } {
  let host = o.redisHost ?? "127.0.0.1";
  let port = o.redisPort ?? 6379;
  let tls = o.tls !== undefined;
  let username: string | undefined;
  let password: string | undefined;
  let database: number | undefined;
  if (o.redisUrl !== undefined) {
    let u: URL;
    try {
      u = new URL(o.redisUrl);
    } catch {
      throw new TypeError(`Invalid redisUrl ${JSON.stringify(o.redisUrl)}: expected redis://host:port or rediss://host:port`);
    }
    if (u.protocol !== "redis:" && u.protocol !== "rediss:") {
      throw new TypeError(`Invalid redisUrl ${JSON.stringify(u.protocol + "//" + u.host)}: expected redis:// or rediss://`);
    }
    host = u.hostname.replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
    port = u.port ? Number(u.port) : 6379;
    tls = tls || u.protocol === "rediss:";
    if (u.username) username = decodeURIComponent(u.username);
    if (u.password) password = decodeURIComponent(u.password);
    if (u.pathname.length > 1) {
      database = Number(u.pathname.slice(1));
      if (!Number.isInteger(database) || database < 0) {
        throw new TypeError(`Invalid redisUrl database ${JSON.stringify(u.pathname.slice(1))}: expected an integer >= 0`);
      }
    }
  }
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new TypeError(`Invalid redisPort ${JSON.stringify(port)}: expected 1-65535`);
  }
  const socketBase = { host, port, connectTimeout: 10_000, reconnectStrategy };
  const socket = tls ? { ...socketBase, ...(o.tls ?? {}), tls: true as const } : socketBase;
  const clientOptions: Parameters<typeof createClient>[0] = { socket, RESP: 2 };
  if (username !== undefined) clientOptions.username = username;
  if (password !== undefined) clientOptions.password = password;
  if (database !== undefined) clientOptions.database = database;
  const h = host.includes(":") ? `[${host}]` : host;
  return { clientOptions, display: `${tls ? "rediss" : "redis"}://${h}:${port}` };
}
