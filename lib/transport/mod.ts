import type { Transport } from "./types.ts";
import { WsMeshTransport, type WsMeshOptions } from "./ws/mod.ts";

/** Everything a node needs to build its transport (a worker's plan, less the process details). */
export interface NodeTransportOptions {
  nodeId: number;
  /** `ws` (the mesh; `nng` is its alias) or `redis`. */
  mqType: "ws" | "nng" | "redis";
  listen: string;
  dial: string[];
  expect: number[];
  labels: string[];
  maxPayload?: number;
  connectTimeout?: number;
  redisHost?: string;
  redisPort?: number;
}

/** Build the transport a node's plan asks for. */
export function createTransport(o: NodeTransportOptions): Transport {
  const opts: WsMeshOptions = { nodeId: o.nodeId, listen: o.listen, dial: o.dial, expect: o.expect, labels: o.labels };
  if (o.maxPayload !== undefined) opts.maxPayload = o.maxPayload;
  if (o.connectTimeout !== undefined) opts.connectTimeout = o.connectTimeout;
  return new WsMeshTransport(opts);
}
