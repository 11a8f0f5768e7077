/** A map from event names to the tuple of arguments each event carries. */
export type EventMap = Record<string, readonly unknown[]>;

/** A loosely typed event map: any event name, any arguments. */
export type AnyEvents = Record<string, unknown[]>;

/** A function called with an event's arguments. It may return a promise. */
export type Listener<A extends readonly unknown[] = unknown[]> = (
  ...args: A
) => void | Promise<void>;

/** Called when a listener throws or rejects; `event` names the event it was handling. */
export type ListenerErrorHandler = (err: unknown, event: string) => void;

/**
 * A local, synchronous event bus: `emit` calls the listeners of one event in registration order,
 * inside the call. A listener that throws (or returns a promise that rejects) never stops the other
 * listeners: its error goes to the error handler given to the constructor.
 *
 * It does no I/O and knows nothing of processes or sockets.
 *
 * @example
 * ```ts
 * const bus = new EventBus((err, event) => console.error(event, err));
 * const off = bus.on("greeting", (msg) => console.log(msg));
 * bus.emit("greeting", ["Hi"]);
 * off();
 * ```
 */
export class EventBus {
  #listeners = new Map<string, Listener[]>();
  /** Wrappers and the functions they stand for (see {@link EventBus.standIn}). */
  #standsFor = new WeakMap<Listener, Listener>();
  #onError: ListenerErrorHandler;
  #onAdd: ((event: string) => void) | undefined;

  /**
   * @param onError Receives each listener failure with the event's name.
   * @param onAdd Called after a listener is added for an event (used to replay held events).
   */
  constructor(onError: ListenerErrorHandler, onAdd?: (event: string) => void) {
    this.#onError = onError;
    this.#onAdd = onAdd;
  }

  /**
   * Add a listener; the same function may be added twice and is then called twice.
   *
   * @returns A function that removes this registration.
   */
  on(event: string, fn: Listener): () => void {
    const list = this.#listeners.get(event);
    // Copy on write: an emit in progress keeps iterating the array it started with.
    this.#listeners.set(event, list ? [...list, fn] : [fn]);
    this.#onAdd?.(event);
    return () => this.off(event, fn);
  }

  /**
   * Remove the latest registration of `fn` (or of a stand-in for it, see {@link EventBus.standIn}) for
   * `event`, or every listener of `event` when `fn` is omitted, except those `keep` accepts.
   *
   * @returns Whether anything was removed.
   */
  off(event: string, fn?: Listener, keep?: (l: Listener) => boolean): boolean {
    const list = this.#listeners.get(event);
    if (!list) return false;
    if (fn === undefined) {
      const kept = keep ? list.filter(keep) : [];
      if (kept.length === 0) this.#listeners.delete(event);
      else this.#listeners.set(event, kept);
      return kept.length < list.length;
    }
    // The latest registration of `fn` itself or of a stand-in for it (a once() wrapper).
    let i = list.length - 1;
    while (i >= 0 && list[i] !== fn && this.#standsFor.get(list[i]!) !== fn) i--;
    if (i < 0) return false;
    if (list.length === 1) this.#listeners.delete(event);
    else this.#listeners.set(event, [...list.slice(0, i), ...list.slice(i + 1)]);
    return true;
  }

  /**
   * Let `wrapper` stand for `fn`: `off(event, fn)` then removes a registration of `wrapper` too.
   * For wrappers such as `once`'s, so that removing the function the caller gave works.
   *
   * @example
   * ```ts
   * const bus = new EventBus((err) => console.error(err)); const fn = () => {};
   * const wrapper = (...a: unknown[]) => { bus.off("x", wrapper); return fn(...a); };
   * bus.standIn(wrapper, fn); bus.on("x", wrapper); bus.off("x", fn); // removed
   * ```
   */
  standIn(wrapper: Listener, fn: Listener): void {
    this.#standsFor.set(wrapper, fn);
  }

  /** Whether `event` has at least one listener. */
  has(event: string): boolean {
    return this.#listeners.has(event);
  }

  /** The number of listeners of `event`. */
  count(event: string): number {
    return this.#listeners.get(event)?.length ?? 0;
  }

  /** The names of all events that have listeners. */
  events(): string[] {
    return [...this.#listeners.keys()];
  }

  /**
   * Call every listener of `event` with `args`, synchronously and in registration order.
   *
   * @returns The number of listeners called.
   */
  emit(event: string, args: readonly unknown[]): number {
    const list = this.#listeners.get(event);
    if (!list) return 0;
    for (const fn of list) {
      try {
        const r = fn(...args);
        if (r !== undefined && typeof (r as Promise<void>).then === "function") {
          (r as Promise<void>).then(undefined, (err: unknown) => this.#onError(err, event));
        }
      } catch (err) {
        this.#onError(err, event);
      }
    }
    return list.length;
  }

  /** Remove every listener. */
  clear(): void {
    this.#listeners.clear();
  }
}
