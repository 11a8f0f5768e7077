import type { Transport } from "./types.ts";
import { WsMeshTransport, type WsMeshOptions } from "./ws/mod.ts";
import { RedisTransport, type RedisTransportOptions } from "./redis/mod.ts";

/**
 * Everything a node needs to build its transport: the mesh's options (with the addresses and peers
 * a worker's plan always has), the transport kind and the Redis settings. Other fields of a plan
 * are ignored.
 */
export type NodeTransportOptions =
  & WsMeshOptions
  & Required<Pick<WsMeshOptions, "listen" | "dial" | "expect" | "labels">>
  & {
    /** `ws` (the mesh; `nng` is its alias) or `redis`. */
    mqType: "ws" | "nng" | "redis";
    redisHost?: string;
    redisPort?: number;
    /** `redis://[[user]:password@]host[:port][/db]` or `rediss://...` (wins over host/port). */
    redisUrl?: string;
  };

/**
 * The Redis transport's options for a node's plan: the Redis server, and the plan's liveness
 * settings in Redis's terms (`heartbeatInterval` is how often presence is refreshed,
 * `heartbeatTimeout` is the `peerTimeout` after which a silent peer has left).
 */
export function redisTransportOptions(o: NodeTransportOptions): RedisTransportOptions {
  const r: RedisTransportOptions = { nodeId: o.nodeId, expect: o.expect, labels: o.labels };
  if (o.redisUrl !== undefined) r.redisUrl = o.redisUrl;
  if (o.redisHost !== undefined) r.redisHost = o.redisHost;
  if (o.redisPort !== undefined) r.redisPort = o.redisPort;
  if (o.connectTimeout !== undefined) r.connectTimeout = o.connectTimeout;
  if (o.heartbeatInterval !== undefined) r.heartbeatInterval = o.heartbeatInterval;
  if (o.heartbeatTimeout !== undefined) r.peerTimeout = o.heartbeatTimeout;
  return r;
}

/**
 * Build the transport a node's plan asks for: the WebSocket mesh, or Redis pub/sub for
 * `mqType: "redis"` (where `listen` and `dial` are not used: every node talks through Redis).
 *
 * @param o The node's plan.
 * @returns The transport, not opened yet.
 * @throws {TypeError} If an address, the node id or a Redis option is invalid.
 * @example
 * ```ts
 * const t = createTransport({ nodeId: 0, mqType: "redis", listen: "", dial: [], expect: [1], labels: [], redisPort: 6379 });
 * await t.open();
 * ```
 */
export function createTransport(o: NodeTransportOptions): Transport {
  // RedisTransport loads its client (@redis/client) only when it opens.
  if (o.mqType === "redis") return new RedisTransport(redisTransportOptions(o));
  const { mqType: _kind, redisHost: _host, redisPort: _port, redisUrl: _url, ...mesh } = o;
  return new WsMeshTransport(mesh);
}
