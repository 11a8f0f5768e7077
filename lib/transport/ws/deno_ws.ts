// The mesh's sockets on Deno: an RFC 6455 WebSocket of ditask's own over Deno.Conn (see socket.ts).
//
// Why not `ws` on Deno: there it runs over Deno's node:net, which reads every 64 KiB into a fresh
// buffer, and `ws` then joins a message that straddles two reads into another fresh buffer
// (zero-filled on Deno). For the mesh's large events that fresh memory was most of the receiver's
// cost. This reader reads small frames into a slab it reuses and each large payload straight into
// the buffer it is delivered in. Deno's built-in WebSocket is no option either: it copies large
// messages several times (about 7x the mesh's CPU per 4 MiB array).
//
// Scope: what the mesh uses. Binary and text messages, fragmentation, ping/pong, the closing
// handshake with codes and reasons, maxPayload, masking in both directions (a dialer masks with an
// all-zero key, as the mesh's Node dialers do), no extensions and no subprotocols. Protocol errors
// close the connection with the code `ws` uses (1002, 1007 for bad UTF-8 in text, 1009 too large).
//
// Only this file touches the Deno namespace for sockets; runtime.ts decides which kit runs.
import { Buffer } from "node:buffer";
import { EventEmitter } from "node:events";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, unlinkSync } from "node:fs";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { type Address, wsHeadSize, wsMessage, writeWsHead } from "./protocol.ts";
import { CLOSED, CLOSING, closeReason, type DialOptions, type ListenOptions, type MeshServer, type MeshSocket, OPEN, type SocketKit } from "./socket.ts";

// --- the parts of the Deno namespace used here ---------------------------------------------------

interface DenoConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
  closeWrite(): Promise<void>;
  setNoDelay?(on?: boolean): void;
  handshake?(): Promise<unknown>;
}

interface DenoListener {
  accept(): Promise<DenoConn>;
  close(): void;
  readonly addr: { port?: number };
}

interface DenoNet {
  connect(o: { hostname: string; port: number } | { transport: "unix"; path: string }): Promise<DenoConn>;
  listen(o: { hostname: string; port: number } | { transport: "unix"; path: string }): DenoListener;
  listenTls(o: { hostname: string; port: number; cert: string; key: string }): DenoListener;
  errors: { AddrInUse: new () => Error };
}

function denoNet(): DenoNet {
  return (globalThis as unknown as { Deno: DenoNet }).Deno;
}

/**
 * A node:tls connection as a {@link DenoConn}, for dialing `wss`. Deno.connectTls verifies with
 * rustls, which refuses a self-signed certificate that is its own CA ("CaUsedAsEndEntity"): the
 * usual way to secure a private mesh, and accepted by Node and by Deno's node:tls. Reads copy out
 * of the chunks node:tls delivers; TLS links are not the mesh's fast path.
 */
class TlsStreamConn implements DenoConn {
  readonly #socket: TLSSocket;
  #chunks: Uint8Array[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  constructor(socket: TLSSocket) {
    this.#socket = socket;
    const wake = () => {
      const w = this.#wake;
      this.#wake = undefined;
      w?.();
    };
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      wake();
    });
    socket.on("end", () => {
      this.#ended = true;
      wake();
    });
    socket.on("error", (err) => {
      this.#error ??= err;
      wake();
    });
    socket.on("close", () => {
      this.#ended = true;
      wake();
    });
  }

  /** Connect and complete the TLS handshake (node:tls sends the host as SNI unless it is an IP). */
  static open(host: string, port: number, ca: string | undefined): Promise<TlsStreamConn> {
    return new Promise((resolve, reject) => {
      const socket = tlsConnect({ host, port, ...(ca !== undefined ? { ca } : {}) });
      socket.once("secureConnect", () => {
        socket.off("error", reject);
        resolve(new TlsStreamConn(socket));
      });
      socket.once("error", reject);
    });
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
    const c = this.#chunks[0]!;
    const n = Math.min(c.byteLength, p.byteLength);
    p.set(n === c.byteLength ? c : c.subarray(0, n));
    if (n === c.byteLength) this.#chunks.shift();
    else this.#chunks[0] = c.subarray(n);
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    return new Promise((resolve, reject) => this.#socket.write(p, (err) => (err ? reject(err) : resolve(p.byteLength))));
  }

  close(): void {
    this.#socket.destroy();
  }

  closeWrite(): Promise<void> {
    this.#socket.end();
    return Promise.resolve();
  }
}

// --- constants ------------------------------------------------------------------------------------

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/** The reader's slab: small frames are read into it and delivered as views of it. */
const SLAB = 64 * 1024;
/** Less room than this left in the slab: the next read goes into a new one. */
const MIN_ROOM = 16 * 1024;
/** A payload at least this large that has not fully arrived is read straight into a buffer of its own. */
const DIRECT = 16 * 1024;
/** Queued writes smaller than this are joined into one write. */
const JOIN_WRITES = 64 * 1024;
/** The longest HTTP head accepted in the opening handshake. */
const MAX_HEAD = 16 * 1024;
/** A closing handshake the peer does not finish within this time ends with the connection dropped. */
const CLOSE_TIMEOUT = 10_000;

const OP_CONT = 0;
const OP_TEXT = 1;
const OP_BINARY = 2;
const OP_CLOSE = 8;
const OP_PING = 9;
const OP_PONG = 10;

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A protocol violation: the connection closes with `code`. */
class WsProtocolError extends RangeError {
  readonly code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

function acceptKey(key: string): string {
  return createHash("sha1").update(key + GUID).digest("base64");
}

/** A frame header: `first` is the FIN bit and the opcode; a masked one has an all-zero key. */
function frameHead(first: number, n: number, masked: boolean): Uint8Array {
  const out = new Uint8Array(wsHeadSize(n, masked));
  writeWsHead(out, first, n, masked);
  return out;
}

/** A frame with a small payload, in one buffer (the mask key, if any, is all zero). */
function smallFrame(first: number, payload: Uint8Array, masked: boolean): Uint8Array {
  const head = wsHeadSize(payload.byteLength, masked);
  const out = new Uint8Array(head + payload.byteLength);
  writeWsHead(out, first, payload.byteLength, masked);
  out.set(payload, head);
  return out;
}

/** XOR `data` with the 4-byte key at `key[k..k+4]`, in place. */
function unmask(data: Uint8Array, key: Uint8Array, k: number): void {
  const m0 = key[k]!, m1 = key[k + 1]!, m2 = key[k + 2]!, m3 = key[k + 3]!;
  if ((m0 | m1 | m2 | m3) === 0) return;
  const n = data.length;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    data[i] ^= m0;
    data[i + 1] ^= m1;
    data[i + 2] ^= m2;
    data[i + 3] ^= m3;
  }
  const m = [m0, m1, m2, m3];
  for (; i < n; i++) data[i] ^= m[i & 3]!;
}

// --- the socket -----------------------------------------------------------------------------------

/** One WebSocket connection over a Deno.Conn whose opening handshake is done. */
class DenoSocket extends EventEmitter implements MeshSocket {
  #state = OPEN;
  readonly #conn: DenoConn;
  /** A dialer: it masks what it sends, and what it receives must not be masked. */
  readonly #client: boolean;
  readonly #maxPayload: number;
  /** Bytes read with the handshake's head that belong to the first frames. */
  #head: Uint8Array;
  #started = false;
  #bytesRead = 0;
  // Writing
  #out: Uint8Array[] = [];
  #writing = false;
  /** Set once no more is written: the write side is shut once `#out` is empty. */
  #ending = false;
  /** The next `send` continues a fragmented message. */
  #sendingFragments = false;
  // The closing handshake
  #closeSent = false;
  /** Stop parsing: a protocol error, or the close frame arrived; what follows is read and dropped. */
  #discard = false;
  #code = 1006;
  #reason = "";
  #closeTimer: ReturnType<typeof setTimeout> | undefined;
  #finished = false;
  // The message being received
  #fragments: Uint8Array[] = [];
  #fragmentBytes = 0;
  #fragmentOpcode = 0;

  constructor(conn: DenoConn, client: boolean, maxPayload: number, head: Uint8Array) {
    super();
    this.#conn = conn;
    this.#client = client;
    this.#maxPayload = maxPayload;
    this.#head = head;
  }

  get readyState(): number {
    return this.#state;
  }

  get bytesRead(): number {
    return this.#bytesRead;
  }

  start(): void {
    if (this.#started) return;
    this.#started = true;
    void this.#readLoop();
  }

  // --- sending ---

  send(data: Uint8Array, fin = true): void {
    if (this.#state !== OPEN) return;
    const first = (fin ? 0x80 : 0) | (this.#sendingFragments ? OP_CONT : OP_BINARY);
    this.#sendingFragments = !fin;
    if (data.byteLength < DIRECT) this.#write(smallFrame(first, data, this.#client));
    else {
      // A large payload is written as it is, after a header of its own.
      this.#write(frameHead(first, data.byteLength, this.#client));
      this.#write(data);
    }
  }

  sendFrame(frame: Uint8Array): void {
    if (this.#state !== OPEN) return;
    this.#write(wsMessage(frame, this.#client));
  }

  ping(): void {
    if (this.#state === OPEN) this.#write(frameHead(0x80 | OP_PING, 0, this.#client));
  }

  close(code: number, reason: string): void {
    if (this.#state !== OPEN) return;
    this.#state = CLOSING;
    this.#sendClose(code, reason);
    this.#armCloseTimer();
  }

  terminate(): void {
    this.#drop();
  }

  /** Send a close frame: with `code` and `reason`, or empty (no status) for code 1005. */
  #sendClose(code: number, reason: string): void {
    if (this.#closeSent) return;
    this.#closeSent = true;
    if (code === 1005) return this.#write(frameHead(0x80 | OP_CLOSE, 0, this.#client));
    const r = Buffer.from(closeReason(reason));
    const payload = new Uint8Array(2 + r.length);
    payload[0] = code >> 8;
    payload[1] = code & 255;
    payload.set(r, 2);
    this.#write(smallFrame(0x80 | OP_CLOSE, payload, this.#client));
  }

  #armCloseTimer(): void {
    this.#closeTimer ??= setTimeout(() => this.#drop(), CLOSE_TIMEOUT);
  }

  #write(buf: Uint8Array): void {
    if (this.#ending || this.#finished) return;
    this.#out.push(buf);
    if (!this.#writing) void this.#pump();
  }

  /** No more writes: shut the write side once what is queued is written. */
  #end(): void {
    if (this.#ending) return;
    this.#ending = true;
    if (!this.#writing) void this.#pump();
  }

  async #pump(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#out.length > 0) {
        let buf = this.#out.shift()!;
        if (buf.byteLength < JOIN_WRITES && this.#out.length > 0 && this.#out[0]!.byteLength < JOIN_WRITES) {
          // Several small buffers: one write.
          const parts = [buf];
          let n = buf.byteLength;
          while (this.#out.length > 0 && n + this.#out[0]!.byteLength <= JOIN_WRITES) {
            const next = this.#out.shift()!;
            parts.push(next);
            n += next.byteLength;
          }
          buf = Buffer.concat(parts, n);
        }
        for (let done = 0; done < buf.byteLength;) done += await this.#conn.write(done === 0 ? buf : buf.subarray(done));
      }
      if (this.#ending && !this.#finished) {
        // The peer may have gone already; the reader sees the end either way.
        await this.#conn.closeWrite().catch(() => {});
      }
    } catch (err) {
      if (!this.#finished) {
        this.#emitError(err as Error);
        this.#drop();
      }
    } finally {
      this.#writing = false;
    }
  }

  // --- receiving ---

  async #readLoop(): Promise<void> {
    try {
      await this.#read();
    } catch (err) {
      // A reset connection, or a read cut short by terminate().
      if (!this.#finished && !this.#discard) this.#emitError(err as Error);
    } finally {
      this.#drop();
    }
  }

  /** Read and handle frames until the connection ends. */
  async #read(): Promise<void> {
    const conn = this.#conn;
    let buf = new Uint8Array(Math.max(SLAB, this.#head.length + MIN_ROOM));
    buf.set(this.#head);
    let start = 0;
    let end = this.#head.length;
    this.#head = new Uint8Array(0);
    /** Whether views of `buf` were handed out (then what they cover is never written again). */
    let lent = false;
    let sink: Uint8Array | undefined;
    for (;;) {
      if (this.#discard) {
        // The close frame arrived, or a protocol error: read and drop until the peer closes.
        sink ??= new Uint8Array(SLAB);
        const n = await conn.read(sink);
        if (n === null) return;
        this.#bytesRead += n;
        continue;
      }
      try {
        // Handle every complete frame in buf[start, end) (none once terminate() was called).
        while (!this.#discard && !this.#finished && end - start >= 2) {
          const b0 = buf[start]!;
          const b1 = buf[start + 1]!;
          let len = b1 & 0x7f;
          let hl = 2;
          if (len === 126) {
            if (end - start < 4) break;
            len = (buf[start + 2]! << 8) | buf[start + 3]!;
            hl = 4;
          } else if (len === 127) {
            if (end - start < 10) break;
            const hi = ((buf[start + 2]! << 24) | (buf[start + 3]! << 16) | (buf[start + 4]! << 8) | buf[start + 5]!) >>> 0;
            const lo = ((buf[start + 6]! << 24) | (buf[start + 7]! << 16) | (buf[start + 8]! << 8) | buf[start + 9]!) >>> 0;
            if (hi > 0x1fffff) throw new WsProtocolError(1009, "Unsupported WebSocket frame: payload length > 2^53 - 1");
            len = hi * 0x100000000 + lo;
            hl = 10;
          }
          const masked = (b1 & 0x80) !== 0;
          this.#checkHeader(b0, masked, len);
          const k = start + hl;
          if (masked) hl += 4;
          if (end - start < hl) break;
          const total = hl + len;
          if (end - start >= total) {
            const payload = buf.subarray(start + hl, start + total);
            if (masked) unmask(payload, buf, k);
            start += total;
            if (this.#onFrame(b0, payload)) lent = true;
            continue;
          }
          if (len >= DIRECT) {
            // The rest of a large payload is read straight into the buffer it is delivered in.
            const payload = new Uint8Array(len);
            let have = end - start - hl;
            payload.set(buf.subarray(start + hl, end));
            const key = masked ? buf.slice(k, k + 4) : undefined;
            start = end;
            while (have < len) {
              const n = await conn.read(payload.subarray(have));
              if (n === null) return;
              have += n;
              this.#bytesRead += n;
            }
            if (key) unmask(payload, key, 0);
            this.#onFrame(b0, payload);
            continue;
          }
          if (total > buf.length - start) {
            // The frame does not fit in what is left of the slab: move its start to a new one.
            const next = new Uint8Array(Math.max(SLAB, total + MIN_ROOM));
            next.set(buf.subarray(start, end));
            end -= start;
            start = 0;
            buf = next;
            lent = false;
          }
          break;
        }
      } catch (err) {
        if (!(err instanceof WsProtocolError)) throw err;
        this.#fail(err);
        continue;
      }
      if (start === end && !lent) start = end = 0; // nothing handed out: the slab is reused
      if (buf.length - end < MIN_ROOM) {
        const next = new Uint8Array(SLAB);
        next.set(buf.subarray(start, end));
        end -= start;
        start = 0;
        buf = next;
        lent = false;
      }
      const n = await conn.read(buf.subarray(end));
      if (n === null) return;
      end += n;
      this.#bytesRead += n;
    }
  }

  #emitError(err: Error): void {
    try {
      this.emit("error", err);
    } catch {
      // no listener
    }
  }

  /** Refuse a frame header that breaks the protocol, before its payload is read. */
  #checkHeader(b0: number, masked: boolean, len: number): void {
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) throw new WsProtocolError(1002, "Invalid WebSocket frame: RSV1, RSV2 and RSV3 must be clear");
    if (masked === this.#client) {
      throw new WsProtocolError(1002, `Invalid WebSocket frame: MASK must be ${this.#client ? "clear" : "set"}`);
    }
    if (opcode >= 8) {
      if (opcode > OP_PONG) throw new WsProtocolError(1002, `Invalid WebSocket frame: invalid opcode ${opcode}`);
      if ((b0 & 0x80) === 0) throw new WsProtocolError(1002, "Invalid WebSocket frame: FIN must be set");
      if (len > 125) throw new WsProtocolError(1002, `Invalid WebSocket frame: invalid payload length ${len}`);
      return;
    }
    if (opcode === OP_CONT) {
      if (this.#fragmentOpcode === 0) throw new WsProtocolError(1002, "Invalid WebSocket frame: invalid opcode 0");
    } else if (opcode === OP_TEXT || opcode === OP_BINARY) {
      if (this.#fragmentOpcode !== 0) throw new WsProtocolError(1002, `Invalid WebSocket frame: invalid opcode ${opcode}`);
    } else throw new WsProtocolError(1002, `Invalid WebSocket frame: invalid opcode ${opcode}`);
    if (this.#fragmentBytes + len > this.#maxPayload) throw new WsProtocolError(1009, "Max payload size exceeded");
  }

  /** Handle one complete frame; true when `payload` (a view of the slab) was handed out. */
  #onFrame(b0: number, payload: Uint8Array): boolean {
    const opcode = b0 & 0x0f;
    if (opcode >= 8) {
      if (opcode === OP_PING) {
        if (this.#state === OPEN) this.#write(smallFrame(0x80 | OP_PONG, payload, this.#client));
      } else if (opcode === OP_PONG) this.emit("pong");
      else this.#onClose(payload);
      return false;
    }
    const fin = (b0 & 0x80) !== 0;
    if (!fin) {
      if (opcode !== OP_CONT) this.#fragmentOpcode = opcode;
      // A fragment is kept until the message is complete: small ones are copied out of the slab
      // (so that it can be reused), larger ones are kept as they are.
      const keep = payload.length >= DIRECT;
      this.#fragments.push(keep ? payload : payload.slice());
      this.#fragmentBytes += payload.length;
      return keep;
    }
    let fragments = [payload];
    let kind = opcode;
    if (opcode === OP_CONT) {
      fragments = this.#fragments;
      fragments.push(payload);
      kind = this.#fragmentOpcode;
      this.#fragments = [];
      this.#fragmentBytes = 0;
      this.#fragmentOpcode = 0;
    }
    if (kind === OP_TEXT) {
      try {
        utf8.decode(fragments.length === 1 ? fragments[0] : Buffer.concat(fragments));
      } catch {
        throw new WsProtocolError(1007, "Invalid WebSocket frame: invalid UTF-8 sequence");
      }
    }
    this.emit("message", fragments, kind === OP_BINARY);
    return true;
  }

  #onClose(payload: Uint8Array): void {
    let code = 1005;
    let reason = "";
    if (payload.length === 1) throw new WsProtocolError(1002, "Invalid WebSocket frame: invalid payload length 1");
    if (payload.length >= 2) {
      code = (payload[0]! << 8) | payload[1]!;
      if (!validCloseCode(code)) throw new WsProtocolError(1002, `Invalid WebSocket frame: invalid status code ${code}`);
      try {
        reason = utf8.decode(payload.subarray(2));
      } catch {
        throw new WsProtocolError(1007, "Invalid WebSocket frame: invalid UTF-8 sequence");
      }
    }
    this.#discard = true;
    this.#code = code;
    this.#reason = reason;
    if (this.#state === OPEN) {
      // Answer with the same code and reason (an empty close frame to an empty one), as `ws` does.
      this.#state = CLOSING;
      this.#sendClose(code, reason);
    }
    this.#end();
    this.#armCloseTimer();
  }

  /**
   * A protocol error: send a close frame with its code and drop what the peer sends after. The
   * 'close' event reports the code of the close frame received, or 1006 without one (RFC 6455
   * §7.1.5), as `ws` does.
   */
  #fail(err: WsProtocolError): void {
    if (this.#finished) return;
    this.#discard = true;
    this.#state = CLOSING;
    this.#sendClose(err.code, "");
    this.#end();
    this.#armCloseTimer();
    this.#emitError(err);
  }

  /** Close the connection now; 'close' follows on a later turn. */
  #drop(): void {
    if (this.#finished) return;
    this.#finished = true;
    this.#state = CLOSING;
    if (this.#closeTimer) clearTimeout(this.#closeTimer);
    this.#out = [];
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
    // 'close' comes on a later turn, as with ws (a caller of terminate() attaches its listener after).
    setTimeout(() => {
      this.#state = CLOSED;
      this.emit("close", this.#code, this.#reason);
    }, 0);
  }
}

// --- the opening handshake ----------------------------------------------------------------------

interface Head {
  /** The request line or status line. */
  line: string;
  /** Header names in lower case; repeated headers joined with ", ". */
  headers: Map<string, string>;
  /** What was read after the head: the first frames. */
  rest: Uint8Array;
}

/** Read an HTTP head (up to the empty line) from `conn`. */
async function readHead(conn: DenoConn): Promise<Head> {
  let buf = new Uint8Array(4096);
  let n = 0;
  for (;;) {
    if (n === buf.length) {
      if (n >= MAX_HEAD) throw new Error(`the HTTP head is longer than ${MAX_HEAD} bytes`);
      const next = new Uint8Array(buf.length * 2);
      next.set(buf);
      buf = next;
    }
    const from = Math.max(0, n - 3);
    const got = await conn.read(buf.subarray(n));
    if (got === null) throw new Error("the connection closed during the opening handshake");
    n += got;
    for (let i = from; i + 3 < n; i++) {
      if (buf[i] === 13 && buf[i + 1] === 10 && buf[i + 2] === 13 && buf[i + 3] === 10) {
        const lines = Buffer.from(buf.buffer, buf.byteOffset, i).toString("latin1").split("\r\n");
        const headers = new Map<string, string>();
        for (const l of lines.slice(1)) {
          const c = l.indexOf(":");
          if (c <= 0) continue;
          const name = l.slice(0, c).trim().toLowerCase();
          const value = l.slice(c + 1).trim();
          headers.set(name, headers.has(name) ? `${headers.get(name)}, ${value}` : value);
        }
        return { line: lines[0]!, headers, rest: buf.slice(i + 4, n) };
      }
    }
  }
}

async function writeAll(conn: DenoConn, text: string): Promise<void> {
  const bytes = Buffer.from(text, "latin1");
  for (let done = 0; done < bytes.length;) done += await conn.write(bytes.subarray(done));
}

function closeQuietly(conn: DenoConn): void {
  try {
    conn.close();
  } catch {
    // already closed
  }
}

/**
 * A deadline for an opening handshake: `expired` rejects after `ms` (race it against the work;
 * close the connection then, so that its pending reads end too).
 */
function deadline(ms: number): { expired: Promise<never>; passed: () => boolean; cancel(): void } {
  let passed = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      passed = true;
      reject(new Error("Opening handshake has timed out"));
    }, ms);
  });
  expired.catch(() => {}); // raced, or cancelled before it fired
  return { expired, passed: () => passed, cancel: () => clearTimeout(timer) };
}

function hasToken(value: string | undefined, token: string): boolean {
  return value !== undefined && value.toLowerCase().split(",").some((t) => t.trim() === token);
}

async function dial(addr: Address, options: DialOptions): Promise<MeshSocket> {
  const net = denoNet();
  const d = deadline(options.timeout);
  const connecting: Promise<DenoConn> = addr.kind === "ipc"
    ? net.connect({ transport: "unix", path: addr.path })
    : addr.tls
    ? TlsStreamConn.open(addr.host, addr.port, options.ca)
    : net.connect({ hostname: addr.host, port: addr.port });
  // A connection that comes after the deadline is closed at once.
  connecting.then((c) => d.passed() && closeQuietly(c), () => {});
  let conn: DenoConn | undefined;
  try {
    conn = await Promise.race([connecting, d.expired]);
    return await Promise.race([clientHandshake(conn, addr, options), d.expired]);
  } catch (err) {
    if (conn) closeQuietly(conn);
    throw err;
  } finally {
    d.cancel();
  }
}

/** The client's side of the opening handshake on a connected `conn`. */
async function clientHandshake(conn: DenoConn, addr: Address, options: DialOptions): Promise<DenoSocket> {
  conn.setNoDelay?.(true);
  const key = randomBytes(16).toString("base64");
  const host = addr.kind === "ipc" ? "localhost" : addr.host.includes(":") ? `[${addr.host}]:${addr.port}` : `${addr.host}:${addr.port}`;
  await writeAll(
    conn,
    `GET / HTTP/1.1\r\nHost: ${host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${key}\r\n\r\n`,
  );
  const head = await readHead(conn);
  const status = /^HTTP\/1\.1 (\d{3})/.exec(head.line)?.[1];
  if (status !== "101") throw new Error(`Unexpected server response: ${status ?? head.line.slice(0, 40)}`);
  if (!hasToken(head.headers.get("upgrade"), "websocket")) throw new Error("Invalid Upgrade header");
  if (head.headers.get("sec-websocket-accept") !== acceptKey(key)) throw new Error("Invalid Sec-WebSocket-Accept header");
  if (head.headers.has("sec-websocket-extensions")) throw new Error("Server sent a Sec-WebSocket-Extensions header but no extension was requested");
  if (head.headers.has("sec-websocket-protocol")) throw new Error("Server sent a subprotocol but none was requested");
  return new DenoSocket(conn, true, options.maxPayload, head.rest);
}

/** Answer a request that is not a valid upgrade, and close. */
async function refuse(conn: DenoConn, status: string, body: string): Promise<void> {
  try {
    await writeAll(conn, `HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`);
  } catch {
    // the client went away
  }
  closeQuietly(conn);
}

/** The opening handshake of an accepted connection; the socket, or undefined when refused. */
async function serverHandshake(conn: DenoConn, options: ListenOptions): Promise<DenoSocket | undefined> {
  await conn.handshake?.().catch((err: Error) => {
    options.note("info", `TLS handshake failed: ${err.message}`);
    throw err;
  });
  conn.setNoDelay?.(true);
  const head = await readHead(conn);
  const [method] = head.line.split(" ");
  const h = head.headers;
  if (!h.has("upgrade")) {
    await refuse(conn, "426 Upgrade Required", "ditask mesh: WebSocket upgrade required\n");
    return undefined;
  }
  const key = h.get("sec-websocket-key");
  const version = h.get("sec-websocket-version");
  if (method !== "GET" || !hasToken(h.get("upgrade"), "websocket") || !key || !/^[+/0-9A-Za-z]{22}==$/.test(key) || (version !== "13" && version !== "8")) {
    await refuse(conn, "400 Bad Request", "Bad Request\n");
    return undefined;
  }
  if (!options.admit()) {
    closeQuietly(conn);
    return undefined;
  }
  await writeAll(conn, `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${acceptKey(key)}\r\n\r\n`);
  return new DenoSocket(conn, false, options.maxPayload, head.rest);
}

/** Upgrade an accepted connection and hand it to the transport. */
async function upgrade(conn: DenoConn, options: ListenOptions): Promise<void> {
  const d = deadline(options.timeout);
  let socket: DenoSocket | undefined;
  try {
    socket = await Promise.race([serverHandshake(conn, options), d.expired]);
  } catch (err) {
    options.note("debug", `upgrade socket error: ${(err as Error).message}`);
    closeQuietly(conn);
    return;
  } finally {
    d.cancel();
  }
  if (!socket) return;
  try {
    options.accept(socket);
  } catch (err) {
    options.note("info", `error while accepting a connection: ${(err as Error).message}`);
    socket.terminate();
  }
}

async function listen(addr: Address, options: ListenOptions): Promise<MeshServer> {
  const net = denoNet();
  let listener: DenoListener;
  try {
    listener = addr.kind === "ipc"
      ? net.listen({ transport: "unix", path: addr.path })
      : options.tls
      ? net.listenTls({ hostname: addr.host, port: addr.port, cert: options.tls.cert, key: options.tls.key })
      : net.listen({ hostname: addr.host, port: addr.port });
  } catch (err) {
    if (err instanceof net.errors.AddrInUse) Object.assign(err, { code: "EADDRINUSE" });
    throw err;
  }
  let closed = false;
  /** Connections in their opening handshake. */
  const pending = new Set<DenoConn>();
  void (async () => {
    while (!closed) {
      let conn: DenoConn;
      try {
        conn = await listener.accept();
      } catch (err) {
        if (closed) return;
        // Out of file descriptors and the like: report, and keep serving.
        options.fail(err as Error);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      pending.add(conn);
      void upgrade(conn, options).finally(() => pending.delete(conn));
    }
  })();
  return {
    port: addr.kind === "ipc" ? 0 : (listener.addr.port ?? addr.port),
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        listener.close();
      } catch {
        // already closed
      }
      for (const conn of pending) closeQuietly(conn);
      // Like Node's server, remove the socket file it made.
      if (addr.kind === "ipc" && existsSync(addr.path)) {
        try {
          unlinkSync(addr.path);
        } catch {
          // gone already
        }
      }
    },
  };
}

/** ditask's own WebSocket over Deno.Conn. */
export const denoKit: SocketKit = { dial, listen };
