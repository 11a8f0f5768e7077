// The limits and timings every transport takes, checked in one place (the transports and
// Parallel.runner, which checks them before it starts any worker).
import { MAX_TIMER_MS } from "../runtime.ts";
import { showValue, stringList } from "../errors.ts";

/** A node's limits and timings; the ws mesh names its timeout `heartbeatTimeout`, Redis `peerTimeout`. */
export interface NodeLimits {
  maxPayload?: number | undefined;
  connectTimeout?: number | undefined;
  heartbeatInterval?: number | undefined;
  heartbeatTimeout?: number | undefined;
  peerTimeout?: number | undefined;
  maxOutboxBytes?: number | undefined;
  maxQueuedBytes?: number | undefined;
}

const NAMES = ["maxPayload", "connectTimeout", "heartbeatInterval", "heartbeatTimeout", "peerTimeout", "maxOutboxBytes", "maxQueuedBytes"] as const;
const TIMINGS = new Set<string>(["connectTimeout", "heartbeatInterval", "heartbeatTimeout", "peerTimeout"]);

/**
 * Check the limits and timings that are given: each a number > 0 (timings at most
 * {@link MAX_TIMER_MS}), and a `heartbeatInterval` that
 * is given shorter than the timeout (`heartbeatTimeout` or `peerTimeout`, default 15000 ms). When
 * no interval is given, the transports take one short enough for the timeout.
 *
 * @throws {TypeError} Naming the option and the value.
 * @example
 * ```ts
 * checkNodeLimits({ heartbeatInterval: 500, heartbeatTimeout: 400 }); // TypeError
 * ```
 */
export function checkNodeLimits(o: NodeLimits): void {
  for (const name of NAMES) {
    const v = o[name];
    if (v !== undefined && (typeof v !== "number" || !(v > 0))) {
      throw new TypeError(`Invalid ${name} ${showValue(v)}: expected a number > 0`);
    }
    if (v !== undefined && TIMINGS.has(name) && v > MAX_TIMER_MS) {
      throw new TypeError(`Invalid ${name} ${v}: expected at most ${MAX_TIMER_MS} ms (about 24.8 days), the longest timer there is`);
    }
  }
  const [name, timeout] = o.peerTimeout !== undefined ? ["peerTimeout", o.peerTimeout] : ["heartbeatTimeout", o.heartbeatTimeout ?? 15_000];
  if (o.heartbeatInterval !== undefined && !(timeout > o.heartbeatInterval)) {
    throw new TypeError(
      `Invalid heartbeatInterval ${o.heartbeatInterval}: it must be shorter than ${name} (${timeout} ms), or peers would be dropped between two heartbeats`,
    );
  }
}

/**
 * The labels a node announces and the node ids it waits for, checked: a list of strings and a
 * list of integers >= 0 (a lone string would otherwise be read letter by letter, and `expect: ["1"]`
 * would wait for a node that can never come).
 *
 * @throws {TypeError} Naming the option and the value.
 * @example
 * ```ts
 * peerLists({ labels: ["gpu"], expect: [1, 2] }); // { labels: ["gpu"], expect: [1, 2] }
 * ```
 */
export function peerLists(o: { labels?: unknown; expect?: unknown }): { labels: string[]; expect: number[] } {
  const labels = o.labels === undefined ? [] : stringList(o.labels, "labels");
  const expect = o.expect ?? [];
  if (!Array.isArray(expect) || !expect.every((id) => Number.isInteger(id) && id >= 0)) {
    throw new TypeError(`Invalid expect ${showValue(expect)}: expected a list of node ids (integers >= 0)`);
  }
  return { labels, expect };
}
