import type { Context } from "./context.ts";
import type { MiddlewareFn, MiddlewareResult } from "./task.ts";

/** Options of {@link StepTimer}. */
export interface StepTimerOptions {
  /** Print every middleware's mean time on steps whose `ctx.totalStep` is a multiple of this; 0 never prints. @default 0 */
  printPerStep?: number;
  /** How many recent durations are kept per middleware. @default 10 */
  smoothWindow?: number;
}

type AnyGen = Generator<unknown, unknown, unknown> | AsyncGenerator<unknown, unknown, unknown>;

/**
 * A middleware wrapper that measures how long each middleware takes per step (forward plus
 * backward half), DI-engine's `StepTimer`. Use it with `task.useWrapper(timer.wrap)`.
 *
 * @example
 * ```ts
 * const timer = new StepTimer();
 * task.useWrapper(timer.wrap);
 * await task.run(3);
 * console.log(timer.records.get("collect")); // three durations in ms
 * ```
 */
export class StepTimer {
  /** Recent durations in milliseconds, per middleware name. */
  readonly records = new Map<string, number[]>();
  readonly #printPerStep: number;
  readonly #window: number;

  constructor(options: StepTimerOptions = {}) {
    this.#printPerStep = options.printPerStep ?? 0;
    this.#window = options.smoothWindow ?? 10;
    if (!Number.isInteger(this.#window) || this.#window < 1) {
      throw new RangeError(`Cannot create StepTimer: smoothWindow must be an integer >= 1, got ${options.smoothWindow}`);
    }
  }

  /** The wrapper to pass to `task.useWrapper`. */
  readonly wrap = <C extends Context>(fn: MiddlewareFn<C>): MiddlewareFn<C> => {
    const name = fn.name || "anonymous";
    const self = this;
    const timed = async function* (ctx: C): AsyncGenerator<unknown, void, unknown> {
      let t0 = performance.now();
      const r: MiddlewareResult = fn(ctx);
      if (r && typeof r === "object" && "next" in r) {
        const g = r as AnyGen;
        const first = await g.next();
        let elapsed = performance.now() - t0;
        if (!first.done) {
          yield;
          t0 = performance.now();
          await g.next();
          elapsed += performance.now() - t0;
        }
        self.#record(name, elapsed, ctx.totalStep);
        return;
      }
      await r;
      self.#record(name, performance.now() - t0, ctx.totalStep);
    };
    Object.defineProperty(timed, "name", { value: name });
    return timed;
  };

  #record(name: string, ms: number, step: number): void {
    let list = this.records.get(name);
    if (!list) this.records.set(name, (list = []));
    list.push(ms);
    if (list.length > this.#window) list.shift();
    // DI-engine's rule: on the chosen steps, every middleware prints (not every Nth record).
    if (this.#printPerStep > 0 && step % this.#printPerStep === 0) {
      const mean = list.reduce((a, b) => a + b, 0) / list.length;
      console.log(`[StepTimer] ${name}: ${mean.toFixed(3)} ms (mean of ${list.length})`);
    }
  }
}
