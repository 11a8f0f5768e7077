/**
 * Options accepted by every {@link DitaskError} constructor.
 */
export interface DitaskErrorOptions extends ErrorOptions {
  /** A stable, machine-readable code such as `"ERR_DITASK_TIMEOUT"`. */
  code?: string;
}

/**
 * Base class of every error ditask throws on purpose. Each carries a stable `code`.
 *
 * @example Tell ditask errors apart
 * ```ts
 * try { await task.waitFor("ready", { timeout: 100 }); }
 * catch (err) { if (err instanceof DitaskError) console.log(err.code); }
 * ```
 */
export class DitaskError extends Error {
  /** Stable code, e.g. `"ERR_DITASK_TIMEOUT"`. */
  readonly code: string;
  constructor(message: string, options: DitaskErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "DitaskError";
    this.code = options.code ?? "ERR_DITASK";
  }
}

/**
 * Raised when waiting (for example `task.waitFor`) takes longer than allowed.
 *
 * @example
 * ```ts
 * await task.waitFor("model", { timeout: 50 }).catch((e) => e instanceof TimeoutError);
 * ```
 */
export class TimeoutError extends DitaskError {
  /** The event that was awaited, when there was one. */
  readonly event: string | undefined;
  /** The time limit in milliseconds. */
  readonly ms: number;
  constructor(message: string, options: DitaskErrorOptions & { event?: string; ms: number }) {
    super(message, { code: "ERR_DITASK_TIMEOUT", ...options });
    this.name = "TimeoutError";
    this.event = options.event;
    this.ms = options.ms;
  }
}

/**
 * Raised when a task method is used in a state that does not allow it, for example
 * `task.run()` before `task.start()`, or a `waitFor` that was pending when the task stopped.
 */
export class TaskStateError extends DitaskError {
  constructor(message: string, options: DitaskErrorOptions = {}) {
    super(message, { code: "ERR_DITASK_TASK_STATE", ...options });
    this.name = "TaskStateError";
  }
}

/**
 * Raised for transport failures: a peer that cannot be reached, a refused handshake, a bad address.
 */
export class TransportError extends DitaskError {
  /** The peer's node id, when known. */
  readonly peerId: number | undefined;
  /** The WebSocket close code, when the error comes from a closed connection. */
  readonly closeCode: number | undefined;
  constructor(
    message: string,
    options: DitaskErrorOptions & { peerId?: number; closeCode?: number } = {},
  ) {
    super(message, { code: "ERR_DITASK_TRANSPORT", ...options });
    this.name = "TransportError";
    this.peerId = options.peerId;
    this.closeCode = options.closeCode;
  }
}

/**
 * Raised when a value cannot be encoded to CBOR (a function, a symbol) or bytes cannot be decoded.
 */
export class CodecError extends DitaskError {
  constructor(message: string, options: DitaskErrorOptions = {}) {
    super(message, { code: "ERR_DITASK_CODEC", ...options });
    this.name = "CodecError";
  }
}

/**
 * An error that happened in another process (a worker), rebuilt in this one.
 * `message` is the original message; `nodeId` says where it happened.
 */
export class RemoteError extends DitaskError {
  /** The original error's class name, e.g. `"Error"` or `"TypeError"`. */
  readonly remoteName: string;
  /** The node id of the process where the error was thrown. */
  readonly nodeId: number | undefined;
  /** The original stack trace, as text. */
  readonly remoteStack: string | undefined;
  constructor(
    message: string,
    options: DitaskErrorOptions & { remoteName?: string; nodeId?: number; remoteStack?: string } = {},
  ) {
    super(message, { code: "ERR_DITASK_REMOTE", ...options });
    this.name = "RemoteError";
    this.remoteName = options.remoteName ?? "Error";
    this.nodeId = options.nodeId;
    this.remoteStack = options.remoteStack;
  }
}

/**
 * Raised by `Parallel.runner` when a worker fails: it threw (then `cause` is a {@link RemoteError}
 * with the original message), exited with a non-zero code, or was killed by a signal.
 */
export class WorkerExitError extends DitaskError {
  /** The failed worker's node id. */
  readonly nodeId: number;
  /** The exit code, or `null` when the worker was killed by a signal. */
  readonly exitCode: number | null;
  /** The signal that ended the worker, if any. */
  readonly signal: string | null;
  constructor(
    message: string,
    options: DitaskErrorOptions & { nodeId: number; exitCode: number | null; signal: string | null },
  ) {
    super(message, { code: "ERR_DITASK_WORKER_EXIT", ...options });
    this.name = "WorkerExitError";
    this.nodeId = options.nodeId;
    this.exitCode = options.exitCode;
    this.signal = options.signal;
  }
}

/** A plain, CBOR- and JSON-safe description of an error, for sending it to another process. */
export interface PlainError {
  name: string;
  message: string;
  code?: string;
  stack?: string;
  nodeId?: number;
}

/**
 * Turn any thrown value into a {@link PlainError} that can cross a process boundary.
 *
 * @param err The thrown value.
 * @param nodeId The node where it was thrown.
 */
export function toPlainError(err: unknown, nodeId?: number): PlainError {
  if (err instanceof Error) {
    const out: PlainError = { name: err.name, message: err.message };
    const code = (err as { code?: unknown }).code;
    if (typeof code === "string") out.code = code;
    if (err.stack !== undefined) out.stack = err.stack;
    // The cause, as Node prints it, so that it survives the trip to the launcher.
    if (err.cause !== undefined) {
      const cause = err.cause instanceof Error ? (err.cause.stack ?? `${err.cause.name}: ${err.cause.message}`) : showValue(err.cause);
      out.stack = `${out.stack ?? `${err.name}: ${err.message}`}\n[cause]: ${cause}`;
    }
    if (nodeId !== undefined) out.nodeId = nodeId;
    return out;
  }
  // A thrown object that is no Error (`throw { code: 5 }`): its JSON, not "[object Object]".
  const out: PlainError = { name: "Error", message: typeof err === "object" && err !== null ? showValue(err) : String(err) };
  if (nodeId !== undefined) out.nodeId = nodeId;
  return out;
}

/**
 * Rebuild a {@link RemoteError} from a {@link PlainError}.
 *
 * @param plain The description received from another process.
 */
export function fromPlainError(plain: PlainError): RemoteError {
  const opts: DitaskErrorOptions & { remoteName?: string; nodeId?: number; remoteStack?: string } = {
    remoteName: plain.name,
  };
  if (plain.code !== undefined) opts.code = plain.code;
  if (plain.nodeId !== undefined) opts.nodeId = plain.nodeId;
  if (plain.stack !== undefined) opts.remoteStack = plain.stack;
  return new RemoteError(plain.message, opts);
}

/**
 * The `TypeError` for a name that must be a string and is not (JavaScript callers): an event name
 * or a router topic. The value is shown as JSON (a symbol as itself).
 *
 * @example
 * ```ts
 * notAString("emit", 123, "an event name"); // TypeError: Cannot emit 123: an event name must be a string
 * ```
 */
export function notAString(verb: string, value: unknown, what: string): TypeError {
  return new TypeError(`Cannot ${verb} ${showValue(value)}: ${what} must be a string`);
}

/**
 * `value` as an error message shows it: JSON where JSON can say it, else `String(value)` (a
 * bigint, a symbol, a value with a cycle).
 *
 * @example
 * ```ts
 * showValue("x"); // '"x"'
 * showValue(10n); // "10"
 * ```
 */
export function showValue(value: unknown): string {
  if (typeof value === "symbol") return value.toString();
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * `value` as a list of strings: an array, a Set or another iterable of strings. A lone string is
 * refused, not read letter by letter.
 *
 * @param name The option, for the message (`labels`).
 * @throws {TypeError} Naming the option and the value that is not a string.
 * @example
 * ```ts
 * stringList(new Set(["collector"]), "labels"); // ["collector"]
 * stringList("collector", "labels"); // TypeError: Invalid labels "collector": expected a list of strings, such as ["collector"]
 * ```
 */
export function stringList(value: unknown, name: string): string[] {
  if (typeof value === "string") {
    throw new TypeError(`Invalid ${name} ${showValue(value)}: expected a list of strings, such as [${showValue(value)}]`);
  }
  if (typeof value !== "object" || value === null || typeof (value as Iterable<unknown>)[Symbol.iterator] !== "function") {
    throw new TypeError(`Invalid ${name} ${showValue(value)}: expected a list of strings`);
  }
  const list = [...(value as Iterable<unknown>)];
  for (const x of list) if (typeof x !== "string") throw new TypeError(`Invalid ${name}: ${showValue(x)} is not a string`);
  return list as string[];
}
