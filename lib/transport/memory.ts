import type { PeerEvent, Transport, TransportMessage } from "./types.ts";
import { TransportListeners } from "./_listeners.ts";
import { TransportError } from "../errors.ts";

/**
 * An in-process hub that connects {@link MemoryTransport}s: a full mesh inside one process, for
 * tests and demos. Each hub is separate; there is no global one.
 *
 * @example
 * ```ts
 * const hub = new MemoryHub();
 * const a = hub.transport(0), b = hub.transport(1);
 * await Promise.all([a.open(), b.open()]);
 * ```
 */
export class MemoryHub {
  readonly nodes = new Map<number, MemoryTransport>();
  /** Make a transport for `nodeId` on this hub; it joins when opened. */
  transport(nodeId: number, labels: string[] = []): MemoryTransport {
    return new MemoryTransport(this, nodeId, labels);
  }
}

/**
 * A {@link Transport} that delivers through a {@link MemoryHub}. Delivery is asynchronous (a
 * microtask later) and ordered per sender and receiver, like a network link.
 */
export class MemoryTransport extends TransportListeners implements Transport {
  readonly nodeId: number;
  readonly labels: string[];
  #hub: MemoryHub;
  #open = false;
  #inbox = (m: TransportMessage) => this.fireMessage(m);

  constructor(hub: MemoryHub, nodeId: number, labels: string[] = []) {
    super();
    this.#hub = hub;
    this.nodeId = nodeId;
    this.labels = labels;
  }

  get peers(): number[] {
    return this.#open ? [...this.#hub.nodes.keys()].filter((id) => id !== this.nodeId) : [];
  }

  open(): Promise<void> {
    if (this.#open) return Promise.resolve();
    if (this.#hub.nodes.has(this.nodeId)) {
      return Promise.reject(new TransportError(`Cannot join hub: node id ${this.nodeId} is already present`));
    }
    this.#open = true;
    for (const other of this.#hub.nodes.values()) {
      other.#firePeer({ type: "joined", nodeId: this.nodeId, labels: this.labels });
      this.#firePeer({ type: "joined", nodeId: other.nodeId, labels: other.labels });
    }
    this.#hub.nodes.set(this.nodeId, this);
    return Promise.resolve();
  }

  publish(topic: string, payload: Uint8Array, done?: () => void): void {
    if (!this.#open) return;
    // A copy per publish, as a network would make: the receivers never see the sender's buffer.
    const copy = payload.slice();
    done?.();
    const from = this.nodeId;
    for (const other of this.#hub.nodes.values()) {
      if (other === this) continue;
      queueMicrotask(() => {
        if (other.#open) other.#inbox({ topic, payload: copy, from });
      });
    }
  }

  subscribe(_topic: string): void {}
  unsubscribe(_topic: string): void {}

  #firePeer(e: PeerEvent): void {
    this.firePeer(e);
  }

  close(): Promise<void> {
    if (!this.#open) return Promise.resolve();
    this.#open = false;
    this.#hub.nodes.delete(this.nodeId);
    for (const other of this.#hub.nodes.values()) {
      // Leave after messages already queued to the peer, as a socket would.
      queueMicrotask(() => other.#firePeer({ type: "left", nodeId: this.nodeId, labels: this.labels }));
    }
    return Promise.resolve();
  }
}
