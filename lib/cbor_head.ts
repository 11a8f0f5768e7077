// CBOR item heads (RFC 8949 §3): the first byte (major type and additional information) and the
// argument that follows it. Shared by the codec's large-array encoder and the mesh's frame codec,
// which both write heads by hand and lengthen some of them to align what follows.

/** The head sizes CBOR allows: the argument inline, or in 1, 2, 4 or 8 more bytes. */
export const HEAD_SIZES: readonly number[] = [1, 2, 3, 5, 9];

/** The size of the shortest head for the argument `n`. */
export function headSize(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : n < 0x100000000 ? 5 : 9;
}

/**
 * Write a head of major type `major` for the argument `n` at `pos`, `size` bytes long (by default
 * the shortest; a longer one is valid CBOR). Returns the position after it.
 */
export function writeHead(buf: Uint8Array, pos: number, major: number, n: number, size: number = headSize(n)): number {
  if (size === 1) {
    buf[pos] = (major << 5) | n;
    return pos + 1;
  }
  buf[pos] = (major << 5) | (size === 2 ? 24 : size === 3 ? 25 : size === 5 ? 26 : 27);
  if (size < 9) {
    // Per frame on the hot path: shifts, valid while n < 2^32 (which a head of 5 bytes or less means).
    for (let i = size - 1, v = n; i >= 1; i--, v >>>= 8) buf[pos + i] = v & 0xff;
  } else {
    let v = n;
    for (let i = 8; i >= 1; i--) {
      buf[pos + i] = v % 256;
      v = Math.floor(v / 256);
    }
  }
  return pos + size;
}

/**
 * Pick one size for each of several heads, from its allowed sizes, so that `fixed` plus the sizes
 * is a multiple of 8: the lengthening that puts what follows the heads 8-aligned.
 *
 * @param options For each head, the sizes it may take (each at least its shortest).
 * @returns The sizes, in order; `undefined` when no choice reaches a multiple of 8.
 */
export function alignedSizes(fixed: number, options: readonly (readonly number[])[]): number[] | undefined {
  const pick: number[] = new Array(options.length);
  const search = (i: number, sum: number): boolean => {
    if (i === options.length) return sum % 8 === 0;
    for (const s of options[i]!) {
      pick[i] = s;
      if (search(i + 1, sum + s)) return true;
    }
    return false;
  };
  return search(0, fixed) ? pick : undefined;
}
