import { type AnyEvents, EventBus, type EventMap, type Listener } from "./events.ts";
import { Context } from "./context.ts";
import { notAString, stringList, TaskStateError, TimeoutError } from "./errors.ts";
import { Router } from "./router.ts";
import { log } from "./log.ts";
import { MAX_TIMER_MS } from "./runtime.ts";

/** The roles a node can take (DI-engine's `task.role`). */
export const Role = {
  LEARNER: "learner",
  COLLECTOR: "collector",
  EVALUATOR: "evaluator",
  FETCHER: "fetcher",
} as const;
/** One of the values of {@link Role}. */
export type Role = (typeof Role)[keyof typeof Role];

/** What a middleware function may return: nothing, a promise, or a (async) generator. */
export type MiddlewareResult =
  | void
  | Promise<void>
  | Generator<unknown, unknown, unknown>
  | AsyncGenerator<unknown, unknown, unknown>;

/** A middleware function: code before its first `yield` runs forward, code after it backward. */
export type MiddlewareFn<C extends Context = Context> = (ctx: C) => MiddlewareResult;

/** A callable object: a middleware class instance with a `call(ctx)` method (DI-engine's `__call__`). */
export interface MiddlewareObject<C extends Context = Context> {
  call(ctx: C): MiddlewareResult;
}

/** A middleware: a function or a callable object. */
export type Middleware<C extends Context = Context> = MiddlewareFn<C> | MiddlewareObject<C>;

/** A wrapper applied to every middleware (`task.useWrapper`), e.g. a step timer. */
export type MiddlewareWrapper<C extends Context = Context> = (fn: MiddlewareFn<C>) => MiddlewareFn<C>;

/** A middleware that does nothing; `task.use()` skips it (DI-engine's `VoidMiddleware`). */
export class VoidMiddleware {
  call(_ctx: Context): void {}
}

/**
 * An async mutual-exclusion lock for `task.use(fn, { lock })`: middleware that share a lock never
 * run their forward (or backward) halves at the same time.
 *
 * @example
 * ```ts
 * const lock = new Lock();
 * task.use(a, { lock }); task.use(b, { lock });
 * ```
 */
export class Lock {
  #tail: Promise<void> = Promise.resolve();
  /** Wait for the lock; resolves with the function that releases it. */
  acquire(): Promise<() => void> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.#tail;
    this.#tail = prev.then(() => next);
    return prev.then(() => release);
  }
}

/** Options of {@link Task.use} and {@link Task.wrap}. */
export interface UseOptions {
  /** `true` for the task's own lock, or a shared {@link Lock}. @default false */
  lock?: boolean | Lock;
}

/** Options of {@link Task.start}. */
export interface StartOptions<C extends Context = Context> {
  /** Run the forward halves of one step concurrently. @default false */
  asyncMode?: boolean;
  /** The context of the first step. @default new Context() */
  ctx?: C;
  /** User labels, added to the automatic ones. */
  labels?: Iterable<string>;
}

/** Options of {@link Task.waitFor}. */
export interface WaitForOptions {
  /** Give up after this many milliseconds with a `TimeoutError`. @default Infinity */
  timeout?: number;
  /** Give up when this signal aborts (rejects with the signal's reason). */
  signal?: AbortSignal;
}

type AnyGen = Generator<unknown, unknown, unknown> | AsyncGenerator<unknown, unknown, unknown>;

interface Entry<C extends Context> {
  fn: MiddlewareFn<C>;
  lock: Lock | undefined;
}

function isGenerator(v: unknown): v is AnyGen {
  return (
    typeof v === "object" && v !== null && typeof (v as AnyGen).next === "function" &&
    (Symbol.iterator in v || Symbol.asyncIterator in v)
  );
}

function isThenable(v: unknown): v is Promise<unknown> {
  return typeof v === "object" && v !== null && typeof (v as Promise<unknown>).then === "function";
}

function nameOf(fn: Middleware<never>): string {
  if (typeof fn === "function") return fn.name || "anonymous";
  return (fn as object).constructor?.name ?? "object";
}

/** Turn a middleware (function or callable object) into a function. */
function toFn<C extends Context>(mw: Middleware<C>): MiddlewareFn<C> {
  if (typeof mw === "function") return mw;
  if (typeof mw === "object" && mw !== null && typeof (mw as MiddlewareObject<C>).call === "function") {
    const fn = (ctx: C) => mw.call(ctx);
    Object.defineProperty(fn, "name", { value: nameOf(mw) });
    return fn;
  }
  throw new TypeError(`Middleware should be a function or an object with a call(ctx) method, got ${typeof mw}`);
}

/**
 * Compile a fnmatch-style glob (`*`, `?`, `[abc]`, `[!a-z]`) to a regular expression, as Python's
 * `fnmatch.translate` does: a `]` first in a class is a member, `^` is a literal, a range written
 * backwards (`[9-0]`) matches nothing, and an unclosed `[` is a literal.
 */
function globToRegExp(glob: string): RegExp {
  let re = "";
  const n = glob.length;
  let i = 0;
  while (i < n) {
    const c = glob[i++]!;
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      let j = i;
      if (j < n && glob[j] === "!") j++;
      if (j < n && glob[j] === "]") j++;
      while (j < n && glob[j] !== "]") j++;
      if (j >= n) {
        re += "\\[";
        continue;
      }
      re += globClass(glob.slice(i, j));
      i = j + 1;
    } else re += c.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  }
  return new RegExp("^" + re + "$");
}

/** The regular expression for the body of a glob's `[...]` (without the brackets). */
function globClass(body: string): string {
  const negated = body.startsWith("!");
  const members = negated ? body.slice(1) : body;
  // Split at the hyphens that make ranges ("a-c"), keeping a hyphen first or last as a member.
  const parts: string[] = [];
  let from = 0;
  for (let k = members.indexOf("-", 1); k >= 0 && k < members.length - 1; k = members.indexOf("-", k + 3)) {
    parts.push(members.slice(from, k));
    from = k + 1;
  }
  parts.push(members.slice(from));
  // Drop ranges written backwards: they match nothing.
  for (let k = parts.length - 1; k > 0; k--) {
    const before = parts[k - 1]!;
    const after = parts[k]!;
    if (before.length > 0 && after.length > 0 && before[before.length - 1]! > after[0]!) {
      parts[k - 1] = before.slice(0, -1) + after.slice(1);
      parts.splice(k, 1);
    }
  }
  const escape = (p: string) => p.replace(/[\\\]\[^-]/g, "\\$&");
  const set = parts.map(escape).join("-");
  if (set === "") return negated ? "." : "(?!)";
  return `[${negated ? "^" : ""}${set}]`;
}

async function advance(g: AnyGen): Promise<boolean> {
  const r = g.next();
  const step = isThenable(r) ? await r : r;
  return !(step as IteratorResult<unknown>).done;
}

/**
 * The task: an event system and a step-by-step middleware pipeline, and (through `router`) the
 * node's link to its peers. `task` is the process-wide instance; `new Task()` makes another (tests).
 *
 * @typeParam E The event map: event names and the argument tuples they carry.
 * @typeParam C The context class.
 *
 * @example The seed's first example
 * ```ts
 * await task.start({ ctx: new OnlineRLContext() }, () => {
 *   task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
 *   task.emit("greeting", "Hi");
 * });
 * ```
 */
export class Task<E extends EventMap = AnyEvents, C extends Context = Context> {
  /** The router: this node's id, peers and labels, and un-prefixed remote topics. */
  readonly router: Router;
  /** The roles (DI-engine's `task.role`). */
  readonly role: typeof Role = Role;

  #bus: EventBus;
  #running = false;
  #finish = false;
  #asyncMode = false;
  #ctx: C | undefined;
  #labels = new Set<string>();
  #roles = new Set<Role>();
  #middleware: Entry<C>[] = [];
  #wrappers: MiddlewareWrapper<C>[] = [];
  #backward: AnyGen[] = [];
  #lock = new Lock();
  #errors: unknown[] = [];
  /** Pending `waitFor` calls: the listener each registered, and how to reject it. */
  #waits = new Map<Listener, (err: unknown) => void>();
  // The lock of each generator waiting for its backward half: the lock is held again for it.
  #genLocks = new WeakMap<AnyGen, Lock>();

  constructor(router: Router = new Router()) {
    this.router = router;
    this.#bus = new EventBus(
      (err, event) => this.#handlerFailed(err, event),
      (event) => this.router.taskListenerAdded(event),
    );
    router.bindTask({
      // "finish" is always wanted while running: it ends run() (DI-engine's finish propagation).
      has: (event) => this.#running && (event === "finish" || this.#bus.has(event)),
      emit: (event, args) => {
        if (!this.#running) return;
        if (event === "finish") this.#finish = args[0] !== false;
        this.#bus.emit(event, args);
      },
    });
  }

  // ---------------------------------------------------------------- lifecycle

  /**
   * Start the task. With `body`, run it, then `stop()` (also when it throws), and return its
   * result: this is DI-engine's `with task.start(...):` block. Without `body`, return the task;
   * end it with `stop()` or `await using`.
   *
   * @throws {TaskStateError} If the task is already running.
   */
  start(options?: StartOptions<C>): this;
  start<R>(options: StartOptions<C> | undefined, body: () => R | Promise<R>): Promise<Awaited<R>>;
  start<R>(options: StartOptions<C> = {}, body?: () => R | Promise<R>): this | Promise<Awaited<R>> {
    if (this.#running) throw new TaskStateError("Cannot start the task: it is already running; call stop() first");
    if (options.ctx !== undefined && !(options.ctx instanceof Context)) {
      throw new TypeError("Cannot start the task: options.ctx must be a Context");
    }
    const labels = options.labels === undefined ? [] : stringList(options.labels, "labels");
    this.#running = true;
    this.#finish = false;
    this.#asyncMode = options.asyncMode ?? false;
    this.#ctx = options.ctx ?? (new Context() as C);
    this.#middleware = [];
    this.#wrappers = [];
    this.#backward = [];
    this.#roles = new Set();
    this.#errors = [];
    this.#labels = new Set(labels);
    if (this.#asyncMode) this.#labels.add("async");
    if (this.router.isActive) {
      this.router.taskInterest("finish", true);
      this.#labels.add("distributed");
      this.#labels.add(`node.${this.router.nodeId}`);
      for (const l of this.router.labels) this.#labels.add(l);
    } else this.#labels.add("standalone");
    if (body === undefined) return this;
    return (async (): Promise<Awaited<R>> => {
      try {
        return await body();
      } finally {
        this.stop();
      }
    })();
  }

  /**
   * Stop the task: when distributed, send `finish` to the peers; reject pending `waitFor`s; remove
   * every listener registered through the task and all middleware. Idempotent.
   */
  stop(): void {
    if (!this.#running) return;
    if (this.router.isActive) {
      try {
        this.router.publishTask("finish", [true]);
      } catch (err) {
        log.warn("could not send finish:", err);
      }
    }
    this.#running = false;
    const err = new TaskStateError("The task stopped while waiting for an event");
    for (const reject of [...this.#waits.values()]) reject(err);
    this.#waits.clear();
    for (const event of this.#bus.events()) this.router.taskInterest(event, false);
    this.router.taskInterest("finish", false);
    this.#bus.clear();
    this.#middleware = [];
    this.#wrappers = [];
    this.#backward = [];
  }

  /** `await using t = task.start()` stops the task at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    this.stop();
    return Promise.resolve();
  }

  /** Whether the task is between `start()` and `stop()`. */
  get running(): boolean {
    return this.#running;
  }

  /** Whether the pipeline should end. Setting it is local; `stop()` tells the peers. */
  get finish(): boolean {
    return this.#finish;
  }
  set finish(v: boolean) {
    this.#finish = v;
  }

  /** Whether the task runs in async mode. */
  get asyncMode(): boolean {
    return this.#asyncMode;
  }

  /**
   * The current context.
   * @throws {TaskStateError} Before the first `start()`.
   */
  get ctx(): C {
    if (this.#ctx === undefined) throw new TaskStateError("Cannot read ctx: the task was never started");
    return this.#ctx;
  }

  /** The labels: `standalone` or `distributed` + `node.<id>`, `async`, and user labels. */
  get labels(): Set<string> {
    return this.#labels;
  }

  /** The node id that sent the event being handled now (see `Router.sender`). */
  get sender(): number | null {
    return this.router.sender;
  }

  // ---------------------------------------------------------------- events

  /**
   * Emit an event: to the local listeners (synchronously, in registration order) and, when
   * distributed, to every connected peer.
   *
   * @throws {TypeError} If `event` is not a string (also from `emitLocal`, `emitRemote`, `on`,
   *   `once`; `waitFor` rejects with it).
   * @throws {TaskStateError} If the task is not running.
   * @throws {CodecError} If an argument cannot be sent to peers.
   * @throws {TransportError} (code `"ERR_DITASK_TOO_LARGE"`) If the event is larger than the
   *   mesh's `maxPayload` or `maxOutboxBytes`; nothing is delivered, not even locally.
   */
  emit<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.#assertEvent("emit", event);
    this.router.publishTask(event, args as unknown as unknown[]);
    this.#emitLocal(event, args);
  }

  /** Emit to the local listeners only (DI-engine's `only_local`). */
  emitLocal<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.#assertEvent("emit", event);
    this.#emitLocal(event, args);
  }

  /** Emit to the peers only (DI-engine's `only_remote`); nothing happens while not distributed. */
  emitRemote<K extends keyof E & string>(event: K, ...args: E[K]): void {
    this.#assertEvent("emit", event);
    this.router.publishTask(event, args as unknown as unknown[]);
  }

  /**
   * Listen to `event`, local or remote. The listener may be async; if it throws or rejects, the
   * error is logged and `run()` rejects with it at the end of the step.
   *
   * @returns A function that removes this listener.
   * @throws {TaskStateError} If the task is not running.
   */
  on<K extends keyof E & string>(event: K, fn: Listener<E[K]>): () => void {
    this.#assertEvent("listen to", event);
    if (typeof fn !== "function") throw new TypeError(`Cannot listen to "${event}": the listener must be a function`);
    this.router.taskInterest(event, true);
    this.#bus.on(event, fn as unknown as Listener);
    return () => this.off(event, fn);
  }

  /** Listen to the next `event` only. */
  once<K extends keyof E & string>(event: K, fn: Listener<E[K]>): () => void {
    const wrapper = ((...args: E[K]) => {
      this.off(event, wrapper);
      return fn(...args);
    }) as Listener<E[K]>;
    this.#bus.standIn(wrapper as unknown as Listener, fn as unknown as Listener);
    return this.on(event, wrapper);
  }

  /**
   * Remove `fn` from `event` (its latest registration, by `on` or `once`), or every listener of
   * `event` when `fn` is omitted (pending `waitFor` calls keep waiting).
   */
  off<K extends keyof E & string>(event: K, fn?: Listener<E[K]>): void {
    if (fn === undefined) {
      // Pending waitFor calls are not listeners the caller added: they keep waiting. (DI-engine
      // drops them too, and a wait_for without a timeout then never returns.)
      this.#bus.off(event, undefined, (l) => this.#waits.has(l));
    } else this.#bus.off(event, fn as unknown as Listener);
    if (!this.#bus.has(event) && event !== "finish") this.router.taskInterest(event, false);
  }

  /**
   * Wait for the next `event`, local or remote.
   *
   * @returns The event's arguments.
   * @throws {TimeoutError} If `options.timeout` elapses first.
   * @throws {TaskStateError} If the task stops first or is not running.
   *
   * @example
   * ```ts
   * const [weights, iter] = await task.waitFor("learner.model", { timeout: 5_000 });
   * ```
   */
  waitFor<K extends keyof E & string>(event: K, options: WaitForOptions = {}): Promise<E[K]> {
    if (typeof event !== "string") return Promise.reject(notAString("wait for", event, "an event name"));
    const { timeout = Infinity, signal } = options;
    if (typeof timeout !== "number" || Number.isNaN(timeout) || timeout < 0) {
      return Promise.reject(new RangeError(`Cannot wait for "${event}": timeout must be a number >= 0, got ${timeout}`));
    }
    if (!this.#running) {
      return Promise.reject(new TaskStateError(`Cannot wait for "${event}": the task is not running`));
    }
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise<E[K]>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        this.#waits.delete(listener as unknown as Listener);
        this.off(event, listener);
        if (timer !== undefined) clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      const listener = ((...args: E[K]) => {
        done();
        resolve(args);
      }) as Listener<E[K]>;
      const fail = (err: unknown) => {
        done();
        reject(err);
      };
      const onAbort = () => fail(signal!.reason);
      this.#waits.set(listener as unknown as Listener, fail);
      this.on(event, listener);
      if (Number.isFinite(timeout)) {
        // A timer longer than MAX_TIMER_MS would fire after 1 ms: wait in steps.
        const arm = (left: number) => {
          timer = setTimeout(
            () =>
              left > MAX_TIMER_MS
                ? arm(left - MAX_TIMER_MS)
                : fail(new TimeoutError(`Cannot wait for event "${event}": timed out after ${timeout} ms`, { event, ms: timeout })),
            Math.min(left, MAX_TIMER_MS),
          );
        };
        arm(timeout);
      }
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  // ---------------------------------------------------------------- middleware

  /**
   * Add a middleware to the pipeline. `task.void()` instances are skipped.
   *
   * @throws {TypeError} If `fn` is not a function or callable object.
   * @throws {TaskStateError} If the task is not running.
   */
  use(fn: Middleware<C> | VoidMiddleware, options: UseOptions = {}): this {
    this.#assertRunning("use middleware");
    if (fn instanceof VoidMiddleware) return this;
    let f = toFn(fn as Middleware<C>);
    for (const w of this.#wrappers) f = w(f);
    this.#middleware.push({ fn: f, lock: this.#lockOf(options.lock) });
    return this;
  }

  /**
   * Wrap every middleware, present and future, with `wrapper` (e.g. a {@link StepTimer}).
   */
  useWrapper(wrapper: MiddlewareWrapper<C>): this {
    if (typeof wrapper !== "function") throw new TypeError("Cannot use wrapper: it must be a function");
    for (const e of this.#middleware) e.fn = wrapper(e.fn);
    this.#wrappers.push(wrapper);
    return this;
  }

  /**
   * Run the pipeline step by step: forward every middleware in order (concurrently in async
   * mode), then the backward halves in reverse order, then `renew()` the context, until `finish`
   * is set or `maxStep` steps ran. After `run(N)`, `ctx.totalStep === N - 1` (as in DI-engine).
   *
   * @throws The first error of a middleware, or of a listener that failed during the step.
   * @throws {TaskStateError} If the task is not running.
   */
  async run(maxStep = 1e12): Promise<void> {
    this.#assertRunning("run");
    if (!Number.isInteger(maxStep) || maxStep < 1) {
      if (!(maxStep === Infinity)) throw new RangeError(`Cannot run: maxStep must be an integer >= 1, got ${maxStep}`);
    }
    if (this.#middleware.length === 0) return;
    for (let i = 0; i < maxStep; i++) {
      const entries = this.#middleware;
      if (this.#asyncMode) {
        await Promise.all(entries.map((e) => this.#forwardEntry(e, this.ctx, this.#backward)));
      } else {
        for (const e of entries) await this.#forwardEntry(e, this.ctx, this.#backward);
      }
      await this.backward();
      this.#throwListenerErrors();
      if (i === maxStep - 1) this.#finish = true;
      this.router.endStartup();
      if (this.#finish || !this.#running) break;
      this.renew();
    }
  }

  /**
   * Run the forward half of `fn` on `ctx` (default: the task's context). A generator is advanced to
   * its first `yield` and pushed on the backward stack.
   *
   * @returns The generator waiting for its backward half, if any.
   */
  async forward(fn: Middleware<C>, ctx?: C): Promise<AnyGen | undefined> {
    this.#assertRunning("forward");
    return this.#forwardEntry({ fn: toFn(fn), lock: undefined }, ctx ?? this.ctx, this.#backward);
  }

  /** Run the backward halves waiting on the stack, last pushed first. */
  async backward(): Promise<void> {
    await this.#drain(this.#backward);
  }

  /**
   * Run `fns` one after the other as one middleware (their backward halves in reverse order):
   * forces an order in async mode.
   */
  serial(...fns: Middleware<C>[]): MiddlewareFn<C> {
    const list = fns.map((f) => toFn(f));
    const self = this;
    const mw = async function* (ctx: C) {
      const stack: AnyGen[] = [];
      for (const f of list) await self.#forwardEntry({ fn: f, lock: undefined }, ctx, stack);
      yield;
      await self.#drain(stack);
    };
    Object.defineProperty(mw, "name", { value: `serial<${list.map(nameOf).join(",")}>` });
    return mw;
  }

  /** Run the forward halves of `fns` concurrently as one middleware, then their backward halves. */
  parallel(...fns: Middleware<C>[]): MiddlewareFn<C> {
    const list = fns.map((f) => toFn(f));
    const self = this;
    const mw = async function* (ctx: C) {
      const stack: AnyGen[] = [];
      await Promise.all(list.map((f) => self.#forwardEntry({ fn: f, lock: undefined }, ctx, stack)));
      yield;
      await Promise.all(stack.splice(0).reverse().map((g) => advance(g)));
    };
    Object.defineProperty(mw, "name", { value: `parallel<${list.map(nameOf).join(",")}>` });
    return mw;
  }

  /**
   * Make a middleware callable from inside another one (nested middleware). The returned function
   * runs `fn`'s forward half and resolves with a function that runs its backward half; if that is
   * never called, the backward half runs in the step's backward phase.
   *
   * @example
   * ```ts
   * const child = task.wrap(childMiddleware);
   * task.use(async (ctx) => { const back = await child(ctx); work(ctx); await back(); });
   * ```
   */
  wrap(fn: Middleware<C>, options: UseOptions = {}): (ctx: C) => Promise<() => Promise<void>> {
    const entry = { fn: toFn(fn), lock: this.#lockOf(options.lock) };
    const wrapped = async (ctx: C) => {
      const g = await this.#forwardEntry(entry, ctx, this.#backward);
      return async () => {
        if (g === undefined) return;
        const i = this.#backward.lastIndexOf(g);
        if (i < 0) return;
        this.#backward.splice(i, 1);
        await this.#drain([g]);
      };
    };
    Object.defineProperty(wrapped, "name", { value: nameOf(fn) });
    return wrapped;
  }

  /** Replace the context with `ctx.renew()`. */
  renew(): this {
    this.#ctx = this.ctx.renew();
    return this;
  }

  /** A middleware that does nothing and that `use()` skips. */
  void(): VoidMiddleware {
    return new VoidMiddleware();
  }

  // ---------------------------------------------------------------- labels and roles

  /** Whether any label matches any of the glob `patterns` (`*`, `?`, `[...]`), e.g. `"node.*"`. */
  matchLabels(patterns: string | Iterable<string>): boolean {
    const list = typeof patterns === "string" ? [patterns] : stringList(patterns, "label patterns");
    return list.some((p) => {
      const re = globToRegExp(p);
      for (const l of this.#labels) if (re.test(l)) return true;
      return false;
    });
  }

  /** Give this node a role. */
  addRole(role: Role): void {
    if (typeof role !== "string") throw notAString("add role", role, "a role");
    this.#roles.add(role);
  }

  /** Whether this node has `role`; true when no role was added at all (as in DI-engine). */
  hasRole(role: Role): boolean {
    return this.#roles.size === 0 || this.#roles.has(role);
  }

  /** The roles added since `start()`. */
  get roles(): Set<Role> {
    return this.#roles;
  }

  // ---------------------------------------------------------------- private

  /** Throw unless `event` is a string and the task is running (this runs on every emit). */
  #assertEvent(verb: string, event: string): void {
    if (typeof event !== "string") throw notAString(verb, event, "an event name");
    this.#assertRunning(verb, event);
  }

  /** Throw unless running; the message is built only then. */
  #assertRunning(verb: string, event?: string): void {
    if (this.#running) return;
    const what = event === undefined ? verb : `${verb} "${event}"`;
    throw new TaskStateError(`Cannot ${what}: the task is not running; call task.start() first`);
  }

  #emitLocal(event: string, args: readonly unknown[]): void {
    this.router.emitAs(this.#bus, event, args, this.router.nodeId);
  }

  #handlerFailed(err: unknown, event: string): void {
    log.error(`node ${this.router.nodeId ?? "standalone"}: listener of "${event}" failed:`, err);
    this.#errors.push(err);
  }

  #throwListenerErrors(): void {
    if (this.#errors.length === 0) return;
    const errs = this.#errors.splice(0);
    if (errs.length === 1) throw errs[0];
    throw new AggregateError(errs, `${errs.length} event listeners failed during the step`);
  }

  #lockOf(lock: boolean | Lock | undefined): Lock | undefined {
    if (lock === true) return this.#lock;
    if (lock instanceof Lock) return lock;
    if (lock === undefined || lock === false) return undefined;
    throw new TypeError("Cannot use middleware: options.lock must be a boolean or a Lock");
  }

  async #forwardEntry(e: Entry<C>, ctx: C, stack: AnyGen[]): Promise<AnyGen | undefined> {
    const release = e.lock ? await e.lock.acquire() : undefined;
    try {
      const r = e.fn(ctx);
      if (isGenerator(r)) {
        if (await advance(r)) {
          if (e.lock) this.#genLocks.set(r, e.lock);
          stack.push(r);
          return r;
        }
        return undefined;
      }
      if (isThenable(r)) await r;
      return undefined;
    } finally {
      release?.();
    }
  }

  async #drain(stack: AnyGen[]): Promise<void> {
    while (stack.length > 0) {
      const g = stack.pop()!;
      const l = this.#genLocks.get(g);
      const release = l ? await l.acquire() : undefined;
      try {
        await advance(g);
      } finally {
        release?.();
      }
    }
  }
}

/** The process-wide task (loosely typed). Its `router` is the one `Parallel.runner` activates. */
export const task: Task<AnyEvents, Context> = new Task();

// Two copies of ditask in one process (a main that imports ditask from another path or version
// than the launcher's) each have their own `task`: the one the launcher did not attach stays
// standalone, and what it emits goes nowhere. Nothing fails, so say it once, naming both copies.
const COPIES = Symbol.for("ditask.loadedCopies");
const copies: string[] = ((globalThis as Record<symbol, string[] | undefined>)[COPIES] ??= []);
copies.push(import.meta.url);
if (copies.length === 2) {
  log.warn(
    `two copies of ditask are loaded in this process (${copies[0]} and ${copies[1]}); each has its own ` +
      "task, and only the one Parallel.runner attached reaches other nodes: import ditask from one place",
  );
}
