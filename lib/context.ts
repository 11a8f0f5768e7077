/**
 * The state that middleware share during one step of `task.run()`. After each step the task calls
 * `renew()`: a fresh context of the same class, with `totalStep + 1` and only the kept keys copied.
 *
 * Keys kept by the class (its `keptKeys`) survive every renew; a key kept at run time with
 * `keep()` survives the next renew only, as in DI-engine. Any other field returns to its default.
 * Other fields may be set freely (`ctx.result = ...`). A context is a plain data object: it encodes
 * to CBOR as a map of its fields, so it can be sent to another node.
 *
 * @example Keep a value across steps
 * ```ts
 * const ctx = new Context();
 * ctx.seen = 3;
 * ctx.keep("seen");
 * const next = ctx.renew(); // next.totalStep === 1, next.seen === 3
 * ```
 */
export class Context {
  /** Keys that every instance of this class keeps across `renew()`. */
  static readonly keptKeys: readonly string[] = [];

  /** The step counter: 0 in the first step, incremented by every `renew()`. */
  totalStep = 0;
  // Runtime kept keys; a private field, so it is not part of the encoded data.
  #kept: Set<string>;
  [key: string]: unknown;

  constructor() {
    this.#kept = new Set((this.constructor as typeof Context).keptKeys);
  }

  /**
   * Keep `keys` across the next `renew()`.
   *
   * @param keys Field names to copy into the renewed context.
   * @throws {TypeError} If a key is not a string.
   */
  keep(...keys: string[]): void {
    for (const k of keys) {
      if (typeof k !== "string") throw new TypeError(`Cannot keep key ${String(k)}: keys must be strings`);
      this.#kept.add(k);
    }
  }

  /** The keys that the next `renew()` copies. */
  keptKeys(): string[] {
    return [...this.#kept];
  }

  /** Whether the context has a field named `key` (DI-engine's `has_attr`). */
  hasAttr(key: string): boolean {
    return key in this;
  }

  /**
   * Make the next step's context: a new instance of the same class, with the kept keys copied and
   * `totalStep + 1`.
   */
  renew(): this {
    const Ctor = this.constructor as new () => this;
    const next = new Ctor();
    for (const k of this.#kept) {
      if (k in this) (next as Record<string, unknown>)[k] = this[k];
    }
    next.totalStep = this.totalStep + 1;
    return next;
  }
}

/**
 * The context of online RL pipelines (collector, learner, evaluator in a loop), with DI-engine's
 * `OnlineRLContext` fields camelCased. Kept across steps: `envStep`, `envEpisode`, `trainIter`,
 * `lastEvalIter`, `lastEvalValue`, `wandbUrl`.
 */
export class OnlineRLContext extends Context {
  static override readonly keptKeys: readonly string[] = [
    "envStep",
    "envEpisode",
    "trainIter",
    "lastEvalIter",
    "lastEvalValue",
    "wandbUrl",
  ];
  envStep = 0;
  envEpisode = 0;
  trainIter = 0;
  trainData: unknown = null;
  trainOutput: unknown = null;
  collectKwargs: Record<string, unknown> = {};
  obs: unknown = null;
  action: unknown = null;
  inferenceOutput: unknown = null;
  trajectories: unknown = null;
  episodes: unknown = null;
  trajectoryEndIdx: number[] = [];
  evalValue = -Infinity;
  lastEvalIter = -1;
  lastEvalValue = -Infinity;
  evalOutput: Record<string, unknown> = {};
  infoForLogging: Record<string, unknown> = {};
  wandbUrl = "";
}

/**
 * The context of offline RL pipelines, with DI-engine's `OfflineRLContext` fields camelCased.
 * Kept across steps: `trainedEnvStep`, `trainIter`, `lastEvalIter`, `lastEvalValue`, `wandbUrl`.
 */
export class OfflineRLContext extends Context {
  static override readonly keptKeys: readonly string[] = [
    "trainedEnvStep",
    "trainIter",
    "lastEvalIter",
    "lastEvalValue",
    "wandbUrl",
  ];
  trainedEnvStep = 0;
  trainEpoch = 0;
  trainIter = 0;
  trainData: unknown = null;
  trainOutput: unknown = null;
  evalValue = -Infinity;
  lastEvalIter = -1;
  lastEvalValue = -Infinity;
  evalOutput: Record<string, unknown> = {};
  infoForLogging: Record<string, unknown> = {};
  wandbUrl = "";
}
