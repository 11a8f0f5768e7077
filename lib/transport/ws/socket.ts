// What the mesh transport (mod.ts) needs from a WebSocket implementation: a connected socket, a
// way to dial one and a way to serve them. Two implementations, picked by runtime.ts:
//   node_ws.ts  npm `ws` over node:http / node:net (Node)
//   deno_ws.ts  ditask's own RFC 6455 reader and writer over Deno.Conn (Deno), which reads each
//               large payload straight into the buffer it is delivered in
// Both speak plain RFC 6455 without extensions, so Node and Deno nodes share one mesh.
import { Buffer } from "node:buffer";
import type { Address } from "./protocol.ts";

/** TLS material for `wss` (PEM text). */
export interface TlsOptions {
  /** The certificate chain this node serves with. */
  cert: string;
  /** The private key of `cert`. */
  key: string;
  /** CA certificates that peers' certificates must chain to (default: the system's). */
  ca?: string;
}

/** `readyState` values, as the WebSocket API numbers them. */
export const OPEN = 1;
export const CLOSING = 2;
export const CLOSED = 3;

/**
 * `reason` cut to the 123 bytes of UTF-8 a close frame holds, at a character boundary (a cut
 * character would be invalid UTF-8, which the peer answers with 1007; `ws` throws instead).
 */
export function closeReason(reason: string): string {
  const bytes = Buffer.from(reason);
  if (bytes.length <= 123) return reason;
  let n = 123;
  while (n > 0 && (bytes[n]! & 0xc0) === 0x80) n--;
  return bytes.subarray(0, n).toString();
}

/** Events of a {@link MeshSocket} and their listeners. */
export interface MeshSocketEvents {
  /** A complete message: the payloads of the fragments it came in, in order (usually one). */
  message: (fragments: Uint8Array[], isBinary: boolean) => void;
  pong: () => void;
  /** The connection is gone: the close code received (1005 without one, 1006 without a close frame). */
  close: (code: number, reason: string) => void;
  error: (err: Error) => void;
}

/** One open WebSocket connection between two nodes. */
export interface MeshSocket {
  /** {@link OPEN}, {@link CLOSING} or {@link CLOSED}. */
  readonly readyState: number;
  /** Bytes received on the connection so far: progress while a large frame is still arriving. */
  readonly bytesRead: number;
  on<E extends keyof MeshSocketEvents>(event: E, listener: MeshSocketEvents[E]): unknown;
  once<E extends keyof MeshSocketEvents>(event: E, listener: MeshSocketEvents[E]): unknown;
  /**
   * Start reading. Messages that arrived before are delivered from now on; call it once the
   * listeners are attached.
   */
  start(): void;
  /** Send `data` as a binary message; `fin: false` sends it as a fragment that the next send continues. */
  send(data: Uint8Array, fin?: boolean): void;
  /**
   * Send `frame` as one binary message, writing the WebSocket header into the `WS_HEADROOM`
   * bytes before it (only `encodeEvents` guarantees those), so it goes out as one buffer.
   */
  sendFrame(frame: Uint8Array): void;
  ping(): void;
  /** Start the closing handshake. */
  close(code: number, reason: string): void;
  /** Drop the connection at once. */
  terminate(): void;
}

/** Options of {@link SocketKit.dial}. */
export interface DialOptions {
  maxPayload: number;
  /** CA certificates for a `wss` peer (default: the system's). */
  ca?: string;
  /** How long connecting and the opening handshake may take, in ms. */
  timeout: number;
}

/** Options and hooks of {@link SocketKit.listen}. */
export interface ListenOptions {
  maxPayload: number;
  tls?: TlsOptions;
  /** How long a connection may take to send its upgrade request, in ms (where the kit sets it). */
  timeout: number;
  /** Asked when a connection asks to upgrade: false drops it (too many handshakes pending, or closing). */
  admit(): boolean;
  /** A connection that completed the opening handshake. */
  accept(socket: MeshSocket): void;
  /** The server failed after it started listening. */
  fail(err: Error): void;
  /** Something worth a log line (a client that broke off, a TLS handshake that failed). */
  note(level: "debug" | "info", message: string): void;
}

/** A listening server. */
export interface MeshServer {
  /** The port bound (0 for ipc). */
  readonly port: number;
  /** Stop listening and drop connections still in their opening handshake. */
  close(): Promise<void>;
}

/** A WebSocket implementation the mesh runs on. */
export interface SocketKit {
  /**
   * Connect to `addr` and complete the opening handshake.
   * @throws {Error} If the connection or the handshake fails, or takes longer than `timeout`.
   */
  dial(addr: Address, options: DialOptions): Promise<MeshSocket>;
  /**
   * Serve WebSocket connections on `addr`; other HTTP requests get 426.
   * @throws {Error} If the address cannot be bound (`code` "EADDRINUSE" when it is in use).
   */
  listen(addr: Address, options: ListenOptions): Promise<MeshServer>;
}
