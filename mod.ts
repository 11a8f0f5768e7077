/**
 * @module
 * ditask: DI-engine's distributed task runtime for Node and Deno. A `task` with an event system
 * and a middleware pipeline; `Parallel.runner` runs `main` in several processes joined by a
 * WebSocket full mesh, where `task.emit` reaches every connected peer.
 *
 * @example The seed's first example
 * ```ts
 * import { task, OnlineRLContext } from "ditask";
 * await task.start({ ctx: new OnlineRLContext() }, () => {
 *   task.on("greeting", (msg) => console.log(`Get msg: ${msg}`));
 *   task.emit("greeting", "Hi");
 * });
 * ```
 */
export { Lock, Role, Task, task, VoidMiddleware } from "./lib/task.ts";
export type {
  Middleware,
  MiddlewareFn,
  MiddlewareObject,
  MiddlewareResult,
  MiddlewareWrapper,
  StartOptions,
  UseOptions,
  WaitForOptions,
} from "./lib/task.ts";
export { EventBus } from "./lib/events.ts";
export type { AnyEvents, EventMap, Listener } from "./lib/events.ts";
export { Context, OfflineRLContext, OnlineRLContext } from "./lib/context.ts";
export { StepTimer } from "./lib/step_timer.ts";
export type { StepTimerOptions } from "./lib/step_timer.ts";
export { PEER_JOINED, PEER_LEFT, Router } from "./lib/router.ts";
export { DEFAULT_PORT_BASE, NODE_ID_ENV, padParam, Parallel } from "./lib/parallel.ts";
export type { MainFn, ParallelOptions, Topology } from "./lib/parallel.ts";
export { WsMeshTransport } from "./lib/transport/ws/mod.ts";
export type { TlsOptions, WsMeshOptions } from "./lib/transport/ws/mod.ts";
export { RedisTransport } from "./lib/transport/redis/mod.ts";
export type { RedisTransportOptions } from "./lib/transport/redis/mod.ts";
export { cborCodec, createCborCodec } from "./lib/codec.ts";
export type { CborCodecOptions, Codec } from "./lib/codec.ts";
export type { PeerEvent, Transport, TransportMessage } from "./lib/transport/types.ts";
export { MemoryHub, MemoryTransport } from "./lib/transport/memory.ts";
export {
  CodecError,
  DitaskError,
  fromPlainError,
  RemoteError,
  TaskStateError,
  TimeoutError,
  toPlainError,
  TransportError,
  WorkerExitError,
} from "./lib/errors.ts";
export type { DitaskErrorOptions, PlainError } from "./lib/errors.ts";
