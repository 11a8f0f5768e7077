// The mesh's sockets on Node: npm `ws` over node:http, node:https and node:net (see socket.ts).
import http from "node:http";
import https from "node:https";
import type { Duplex } from "node:stream";
import { loadWs } from "../../runtime.ts";
import { dialUrl, type Address, wsMessage } from "./protocol.ts";
import { closeReason, type DialOptions, type ListenOptions, type MeshServer, type MeshSocket, type MeshSocketEvents, OPEN, type SocketKit } from "./socket.ts";

const { WebSocket, WebSocketServer } = await loadWs();
type WebSocket = InstanceType<typeof WebSocket>;

function zeroMask(mask: Uint8Array): void {
  mask.fill(0);
}

/**
 * A listener in ws's terms: a close reason is a Buffer, and a text message comes as one Buffer
 * (binary ones as the list of their fragments, with binaryType "fragments").
 */
// deno-lint-ignore no-explicit-any
function adapt<E extends keyof MeshSocketEvents>(event: E, listener: MeshSocketEvents[E]): (...args: any[]) => void {
  if (event === "close") {
    const fn = listener as MeshSocketEvents["close"];
    return (code: number, reason: Buffer) => fn(code, reason.toString());
  }
  if (event === "message") {
    const fn = listener as MeshSocketEvents["message"];
    return (data: Buffer | Buffer[], isBinary: boolean) => fn(Array.isArray(data) ? data : [data], isBinary);
  }
  return listener;
}

/** A `ws` WebSocket and the connection under it, as a {@link MeshSocket}. */
class NodeSocket implements MeshSocket {
  readonly #ws: WebSocket;
  /** The connection under the WebSocket: single-buffer frames are written to it directly (see sendFrame). */
  readonly #socket: Duplex | undefined;
  readonly #masked: boolean;
  /**
   * What ws reported before start(): a dialer's first messages can come with the handshake's
   * response and be emitted (on process.nextTick) before the dial's promise settles.
   */
  #early: Array<[string, ...unknown[]]> | undefined = [];
  readonly #record = (event: string) => (...args: unknown[]) => this.#early?.push([event, ...args]);
  readonly #recorders = { message: this.#record("message"), close: this.#record("close") };

  constructor(ws: WebSocket, socket: Duplex | undefined, masked: boolean) {
    this.#ws = ws;
    this.#socket = socket;
    this.#masked = masked;
    // Fragments as they came: a large event's payload fragment is used without joining it to its head.
    ws.binaryType = "fragments";
    ws.on("message", this.#recorders.message);
    ws.on("close", this.#recorders.close);
  }

  get readyState(): number {
    return this.#ws.readyState;
  }

  get bytesRead(): number {
    return (this.#socket as { bytesRead?: number } | undefined)?.bytesRead ?? 0;
  }

  on<E extends keyof MeshSocketEvents>(event: E, listener: MeshSocketEvents[E]): this {
    this.#ws.on(event, adapt(event, listener));
    return this;
  }

  once<E extends keyof MeshSocketEvents>(event: E, listener: MeshSocketEvents[E]): this {
    this.#ws.once(event, adapt(event, listener));
    return this;
  }

  start(): void {
    const early = this.#early;
    if (!early) return;
    this.#early = undefined;
    this.#ws.off("message", this.#recorders.message);
    this.#ws.off("close", this.#recorders.close);
    for (const [event, ...args] of early) this.#ws.emit(event, ...args);
  }

  send(data: Uint8Array, fin = true): void {
    this.#ws.send(data, { binary: true, fin });
  }

  /**
   * ws would write its header and the data as two buffers (a writev), which costs about 1 µs more
   * per message. ws writes whole frames synchronously (no compression, no Blob data here), so its
   * own frames (pings, close) never split ours. Once ws is no longer open (or where its socket was
   * not seen), ws.send decides.
   */
  sendFrame(frame: Uint8Array): void {
    if (this.#ws.readyState === OPEN && this.#socket) this.#socket.write(wsMessage(frame, this.#masked));
    else this.#ws.send(frame);
  }

  ping(): void {
    this.#ws.ping();
  }

  close(code: number, reason: string): void {
    this.#ws.close(code, closeReason(reason));
  }

  terminate(): void {
    this.#ws.terminate();
  }
}

function dial(addr: Address, options: DialOptions): Promise<MeshSocket> {
  return new Promise((resolve, reject) => {
    const wsOptions: ConstructorParameters<typeof WebSocket>[2] = {
      perMessageDeflate: false,
      maxPayload: options.maxPayload,
      handshakeTimeout: options.timeout,
      // Masking guards browsers' proxies against forged requests; between mesh nodes it only
      // costs a JavaScript XOR over every byte sent (8x slower for large frames). An all-zero
      // mask makes ws skip it.
      generateMask: zeroMask,
    };
    if (addr.kind === "tcp" && addr.tls && options.ca !== undefined) wsOptions.ca = options.ca;
    const ws = new WebSocket(dialUrl(addr), wsOptions);
    let opened = false;
    let socket: Duplex | undefined;
    ws.once("upgrade", (res) => (socket = res.socket));
    ws.once("open", () => {
      opened = true;
      resolve(new NodeSocket(ws, socket, true));
    });
    ws.on("error", (err) => {
      if (!opened) reject(err);
    });
  });
}

async function listen(addr: Address, options: ListenOptions): Promise<MeshServer> {
  const onRequest = (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(426, { "content-type": "text/plain" }).end("ditask mesh: WebSocket upgrade required\n");
  };
  const server = options.tls
    ? https.createServer({ cert: options.tls.cert, key: options.tls.key }, onRequest)
    : http.createServer(onRequest);
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: options.maxPayload });
  wss.on("error", (err) => options.fail(err));
  server.on("upgrade", (req, socket: Duplex, head) => {
    socket.on("error", (err) => options.note("debug", `upgrade socket error: ${err.message}`));
    if (!options.admit()) {
      socket.destroy();
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => options.accept(new NodeSocket(ws, socket, false)));
  });
  server.on("clientError", (_err, socket) => socket.destroy());
  server.on("tlsClientError", (err) => options.note("info", `TLS handshake failed: ${err.message}`));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const ready = () => {
      server.off("error", reject);
      server.on("error", (err) => options.fail(err));
      resolve();
    };
    if (addr.kind === "ipc") server.listen(addr.path, ready);
    else server.listen(addr.port, addr.host, ready);
  });
  const a = server.address();
  return {
    port: typeof a === "object" && a ? a.port : 0,
    close: () =>
      new Promise<void>((resolve) => {
        wss.close();
        server.close(() => resolve());
        server.closeAllConnections?.();
      }),
  };
}

/** npm `ws` over Node's http, https and net modules. */
export const nodeKit: SocketKit = { dial, listen };
