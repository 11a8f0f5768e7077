/** One message delivered by a transport. */
export interface TransportMessage {
  /** The topic, e.g. `"task.greeting"` for a task event or a plain router topic. */
  topic: string;
  /** The encoded arguments (the transport never looks inside). */
  payload: Uint8Array;
  /** The node id of the sender. */
  from: number;
}

/** A peer joined or left. */
export interface PeerEvent {
  type: "joined" | "left";
  /** The peer's node id. */
  nodeId: number;
  /** The labels the peer announced in its handshake. */
  labels: string[];
}

/**
 * Moves bytes between nodes under topics. A transport never delivers a node's own messages back
 * to it, keeps the order of messages per sender and receiver, and knows nothing of tasks, events
 * or codecs. The WebSocket mesh, the in-memory hub and Redis implement it.
 */
export interface Transport {
  /** This node's id. */
  readonly nodeId: number;
  /** The node ids of the peers currently connected. */
  readonly peers: readonly number[];
  /**
   * Bind, dial and wait until every peer this node expects is connected.
   * @throws {TransportError} If the expected peers cannot be reached in time.
   */
  open(): Promise<void>;
  /**
   * Send `payload` under `topic` to every connected peer. The transport may keep `payload` (until
   * every peer has it), so the caller must not change it afterwards.
   *
   * @param done Optional: called once when the transport will never read `payload` again (it
   *   copied the bytes, or every peer acknowledged them), so that their memory can be reused. A
   *   transport may never call it (for a dropped peer whose socket may still be sending the
   *   bytes); they are then simply left to the garbage collector.
   * @throws {TransportError} A transport may refuse a payload it could never deliver (code
   *   `"ERR_DITASK_TOO_LARGE"`); it then sends nothing and never calls `done`.
   */
  publish(topic: string, payload: Uint8Array, done?: () => void): void;
  /** Tell the transport that this node wants `topic` (a hint; the mesh delivers every topic). */
  subscribe(topic: string): void;
  /** Tell the transport that this node no longer wants `topic`. */
  unsubscribe(topic: string): void;
  /** Receive messages; returns a function that stops receiving. */
  onMessage(fn: (msg: TransportMessage) => void): () => void;
  /** Learn about peers joining and leaving; returns a function that stops it. */
  onPeer(fn: (ev: PeerEvent) => void): () => void;
  /** Receive background errors (a failed dial, a bad frame); returns a function that stops it. */
  onError(fn: (err: Error) => void): () => void;
  /**
   * Optional: the router's start-up hold has ended. A transport that filters by topic (Redis)
   * receives every topic until then, so that the router can hold events that arrive before their
   * listener; afterwards it receives only the subscribed topics. Idempotent.
   */
  endStartup?(): void;
  /** Optional: resolve when every message published so far has reached every peer (back-pressure). */
  drain?(): Promise<void>;
  /** Send what is queued and close every connection. Idempotent. */
  close(): Promise<void>;
}
