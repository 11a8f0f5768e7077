import { EventBus, type Listener } from "./events.ts";
import { cborCodec, type Codec } from "./codec.ts";
import { CodecError, notAString, TaskStateError } from "./errors.ts";
import { log } from "./log.ts";
import type { PeerEvent, Transport, TransportMessage } from "./transport/types.ts";

/** Router event: a peer connected. Listeners get `(nodeId: number, labels: string[])`. */
export const PEER_JOINED = "ditask:peer-joined";
/** Router event: a peer disconnected. Listeners get `(nodeId: number, labels: string[])`. */
export const PEER_LEFT = "ditask:peer-left";

/** The wire prefix of task events (DI-engine's `task.<event>`). */
export const TASK_TOPIC_PREFIX = "task.";

/** How many unhandled remote events the start-up hold keeps at most (oldest dropped past it). */
export const MAX_HELD_EVENTS = 100_000;

// Topic -> task event name (undefined for router topics), cached: the same few topics recur.
const taskEvents = new Map<string, string | undefined>();

function taskEvent(topic: string): string | undefined {
  let e = taskEvents.get(topic);
  if (e === undefined && !taskEvents.has(topic)) {
    e = topic.startsWith(TASK_TOPIC_PREFIX) ? topic.slice(TASK_TOPIC_PREFIX.length) : undefined;
    if (taskEvents.size >= 4096) taskEvents.clear();
    taskEvents.set(topic, e);
  }
  return e;
}

/** What the router needs from the task it serves. */
export interface TaskSink {
  /** Whether the task has a listener for `event`. */
  has(event: string): boolean;
  /** Deliver a remote task event to the task's local listeners. */
  emit(event: string, args: readonly unknown[]): void;
}

/** Options of {@link Router.attach}. */
export interface AttachOptions {
  /** Labels of this node (`--labels`). */
  labels?: Iterable<string>;
  /** The codec for event arguments. @default cborCodec */
  codec?: Codec;
}

interface Held {
  topic: string;
  args: unknown[];
  from: number;
}

/**
 * Connects a task's events to other nodes through a {@link Transport}: DI-engine's `Parallel`
 * instance as seen through `task.router`. It is inactive until `Parallel.runner` (or a test)
 * attaches a transport.
 *
 * Task events travel under the topic `task.<event>`; `router.on/once/off/emit` use un-prefixed
 * topics of their own. Delivery reaches directly connected peers only, never the sender itself,
 * in emit order per sender and receiver.
 *
 * Start-up hold: from `attach()` until this node has finished its first step (or its `main`
 * returned), a remote event whose topic has no listener yet is held and delivered, in order, as
 * soon as a listener for it registers, so events sent by a faster peer's `main` are not lost.
 * Events still unheld when the hold ends are dropped (logged at debug level).
 *
 * @example Learn who sent an event
 * ```ts
 * task.on("trajectory", (traj) => console.log("from node", task.router.sender, traj));
 * ```
 */
export class Router {
  #transport: Transport | undefined;
  #codec: Codec = cborCodec;
  #bus: EventBus;
  #sink: TaskSink | undefined;
  #unsubs: Array<() => void> = [];
  #holding = false;
  #held: Held[] = [];
  #heldDropped = 0;
  #sender: number | null = null;
  #labels = new Set<string>();
  #nodeId: number | null = null;
  /** How many times `main` was re-run after an exception (`autoRecover`). */
  retries = 0;

  constructor() {
    this.#bus = new EventBus(
      (err, event) => log.error(`node ${this.#nodeId}: router handler for "${event}" failed:`, err),
      (topic) => this.#replay(topic, false),
    );
  }

  /** This node's id, or `null` while inactive. */
  get nodeId(): number | null {
    return this.#nodeId;
  }

  /** Whether a transport is attached (the process runs as a node of a parallel job). */
  get isActive(): boolean {
    return this.#transport !== undefined;
  }

  /** This node's labels (from `Parallel.runner({ labels })` or `--labels`). */
  get labels(): Set<string> {
    return this.#labels;
  }

  /** The node ids of the peers connected now. */
  get peers(): number[] {
    return this.#transport ? [...this.#transport.peers] : [];
  }

  /**
   * The node id that sent the event whose listeners are running now: a peer's id for a remote
   * event, this node's id for a local one, `null` outside a listener. Read it synchronously at the
   * start of the listener (before any `await`).
   */
  get sender(): number | null {
    return this.#sender;
  }

  /** Whether the start-up hold is still on. */
  get holding(): boolean {
    return this.#holding;
  }

  /** @internal Bind the task whose events this router carries. */
  bindTask(sink: TaskSink): void {
    this.#sink = sink;
  }

  /**
   * @internal Activate the router over `transport` (already opened or not). Starts the start-up hold.
   * @throws {TaskStateError} If a transport is already attached.
   */
  attach(transport: Transport, options: AttachOptions = {}): void {
    if (this.#transport) throw new TaskStateError("Cannot attach transport: the router is already active");
    this.#transport = transport;
    this.#nodeId = transport.nodeId;
    this.#labels = new Set(options.labels ?? []);
    this.#codec = options.codec ?? cborCodec;
    this.#holding = true;
    this.#unsubs.push(
      transport.onMessage((m) => this.#receive(m)),
      transport.onPeer((e) => this.#peer(e)),
      transport.onError((err) => log.warn(`node ${this.#nodeId}:`, err.message)),
    );
    for (const topic of this.#bus.events()) transport.subscribe(topic);
  }

  /** @internal Deactivate: close the transport and forget it. */
  async detach(): Promise<void> {
    const t = this.#transport;
    if (!t) return;
    this.endStartup();
    for (const u of this.#unsubs.splice(0)) u();
    this.#transport = undefined;
    this.#nodeId = null;
    this.#bus.clear();
    await t.close();
  }

  /** @internal End the start-up hold; events still held are dropped. */
  endStartup(): void {
    if (!this.#holding) return;
    this.#holding = false;
    this.#transport?.endStartup?.();
    if (this.#held.length + this.#heldDropped > 0) {
      log.debug(
        `node ${this.#nodeId}: start-up hold ended; ${this.#held.length + this.#heldDropped} event(s) had no listener`,
      );
    }
    this.#held = [];
    this.#heldDropped = 0;
  }

  /**
   * Listen to an un-prefixed router topic. Survives `task.stop()`.
   *
   * @returns A function that removes the listener.
   */
  on(topic: string, fn: Listener): () => void {
    if (typeof topic !== "string") throw notAString("listen to", topic, "a topic");
    if (typeof fn !== "function") throw new TypeError(`Cannot listen to "${topic}": the listener must be a function`);
    this.#transport?.subscribe(topic);
    return this.#bus.on(topic, fn);
  }

  /** Listen to one message of `topic`. */
  once(topic: string, fn: Listener): () => void {
    const wrapper: Listener = (...args) => {
      off();
      return fn(...args);
    };
    // off(topic, fn) removes it too.
    this.#bus.standIn(wrapper, fn);
    const off = this.on(topic, wrapper);
    return off;
  }

  /** Remove `fn`, or every listener of `topic`. */
  off(topic: string, fn?: Listener): void {
    this.#bus.off(topic, fn);
    if (!this.#bus.has(topic)) this.#transport?.unsubscribe(topic);
  }

  /**
   * Send `args` under `topic` to every connected peer (not to this node). Does nothing while
   * inactive.
   *
   * @throws {TypeError} If `topic` is not a string.
   * @throws {CodecError} If an argument cannot be encoded; the message names the topic.
   * @throws {TransportError} (code `"ERR_DITASK_TOO_LARGE"`) If the message is larger than the
   *   mesh's `maxPayload` or `maxOutboxBytes`; nothing is sent.
   */
  emit(topic: string, ...args: unknown[]): void {
    if (typeof topic !== "string") throw notAString("emit", topic, "a topic");
    if (!this.#transport) return;
    this.#publish(topic, args);
  }

  /**
   * Resolve when every event sent so far has been acknowledged by every connected peer (at once
   * while inactive, or with a transport that does not track delivery): back-pressure for
   * producers of large streams.
   *
   * @example
   * ```ts
   * for (const batch of trajectories) { task.emit("trajectory", batch); await task.router.drain(); }
   * ```
   */
  async drain(): Promise<void> {
    await this.#transport?.drain?.();
  }

  /** @internal Send a task event to the peers. */
  publishTask(event: string, args: unknown[]): void {
    if (!this.#transport) return;
    this.#publish(TASK_TOPIC_PREFIX + event, args);
  }

  /** @internal Subscribe or unsubscribe the task topic of `event` on the transport. */
  taskInterest(event: string, wanted: boolean): void {
    if (!this.#transport) return;
    if (wanted) this.#transport.subscribe(TASK_TOPIC_PREFIX + event);
    else this.#transport.unsubscribe(TASK_TOPIC_PREFIX + event);
  }

  /** @internal Replay held task events once a task listener for `event` registers. */
  taskListenerAdded(event: string): void {
    this.#replay(TASK_TOPIC_PREFIX + event, true);
  }

  /** @internal Call the listeners of `event` on `bus` with `sender` set to `from` (no closure: per event). */
  emitAs(bus: { emit(event: string, args: readonly unknown[]): unknown }, event: string, args: readonly unknown[], from: number | null): void {
    const prev = this.#sender;
    this.#sender = from;
    try {
      bus.emit(event, args);
    } finally {
      this.#sender = prev;
    }
  }

  #publish(topic: string, args: unknown[]): void {
    let payload: Uint8Array;
    try {
      payload = this.#codec.encode(args);
    } catch (err) {
      throw new CodecError(`Cannot send "${topic}": ${(err as Error).message}`, { cause: err });
    }
    const codec = this.#codec;
    // Large encodings come from the codec's pool: they go back to it once every peer has them.
    if (codec.release && codec.pooled?.(payload)) {
      try {
        this.#transport!.publish(topic, payload, () => codec.release!(payload));
      } catch (err) {
        codec.release(payload); // refused (too large): nothing holds it
        throw err;
      }
    } else this.#transport!.publish(topic, payload);
  }

  #receive(m: TransportMessage): void {
    const event = taskEvent(m.topic);
    const wanted = event !== undefined ? (this.#sink?.has(event) ?? false) : this.#bus.has(m.topic);
    // Topics nobody listens to are dropped before decoding (DI-engine does the same).
    if (!wanted && !this.#holding) return;
    let args: unknown;
    try {
      args = this.#codec.decode(m.payload);
    } catch (err) {
      log.warn(`node ${this.#nodeId}: dropped "${m.topic}" from node ${m.from}:`, (err as Error).message);
      return;
    }
    if (!Array.isArray(args)) {
      log.warn(`node ${this.#nodeId}: dropped "${m.topic}" from node ${m.from}: arguments are not an array`);
      return;
    }
    if (wanted) this.#dispatch(m.topic, args, m.from, event);
    else {
      this.#held.push({ topic: m.topic, args, from: m.from });
      if (this.#held.length > MAX_HELD_EVENTS) {
        this.#held.shift();
        this.#heldDropped++;
      }
    }
  }

  #dispatch(topic: string, args: unknown[], from: number, event: string | undefined = taskEvent(topic)): void {
    if (event === undefined) this.emitAs(this.#bus, topic, args, from);
    else if (this.#sink) this.emitAs(this.#sink, event, args, from);
  }

  #replay(topic: string, isTask: boolean): void {
    if (!this.#holding || this.#held.length === 0) return;
    if (isTask !== topic.startsWith(TASK_TOPIC_PREFIX)) return;
    // Deliver after the current synchronous code, so every listener registered in the same tick
    // (an `on` and a `waitFor`, say) sees the held events.
    queueMicrotask(() => {
      const mine = this.#held.filter((h) => h.topic === topic);
      if (mine.length === 0) return;
      this.#held = this.#held.filter((h) => h.topic !== topic);
      for (const h of mine) this.#dispatch(h.topic, h.args, h.from);
    });
  }

  #peer(e: PeerEvent): void {
    this.emitAs(this.#bus, e.type === "joined" ? PEER_JOINED : PEER_LEFT, [e.nodeId, e.labels], e.nodeId);
  }
}
