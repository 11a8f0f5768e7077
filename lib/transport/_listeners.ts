import type { PeerEvent, TransportMessage } from "./types.ts";

/**
 * The listener bookkeeping every transport shares: `onMessage`, `onPeer` and `onError`, each
 * returning its unsubscribe function, and the `fire*` methods a transport calls.
 */
export class TransportListeners {
  #msg = new Set<(m: TransportMessage) => void>();
  #peer = new Set<(e: PeerEvent) => void>();
  #err = new Set<(e: Error) => void>();

  /** Receive messages; returns a function that stops receiving. */
  onMessage(fn: (m: TransportMessage) => void): () => void {
    this.#msg.add(fn);
    return () => this.#msg.delete(fn);
  }

  /** Learn about peers joining and leaving; returns a function that stops it. */
  onPeer(fn: (e: PeerEvent) => void): () => void {
    this.#peer.add(fn);
    return () => this.#peer.delete(fn);
  }

  /** Receive background errors; returns a function that stops it. */
  onError(fn: (e: Error) => void): () => void {
    this.#err.add(fn);
    return () => this.#err.delete(fn);
  }

  /** Call every message listener. */
  protected fireMessage(m: TransportMessage): void {
    for (const fn of this.#msg) fn(m);
  }

  /** Call every peer listener. */
  protected firePeer(e: PeerEvent): void {
    for (const fn of this.#peer) fn(e);
  }

  /** Call every error listener; returns whether there was one. */
  protected fireError(err: Error): boolean {
    for (const fn of this.#err) fn(err);
    return this.#err.size > 0;
  }
}
