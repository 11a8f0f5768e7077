import { PlatformError, quote } from "./spec.ts";

/**
 * The most hosts (or per-node counts) one list may expand to; guards against `n[0-999999999]`.
 *
 * @example
 * ```ts
 * parseHostlist("n[0-999999]"); // throws PlatformError: it expands to more than 100000 hosts
 * ```
 */
export const MAX_HOSTLIST_SIZE = 100_000;

type Fail = (detail: string) => never;

/** Split `text` on commas that are not inside brackets. */
function splitTopLevel(text: string, fail: Fail): string[] {
  const items: string[] = [];
  let open = -1;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "[") {
      if (open >= 0) fail(`nested "[" at position ${i}`);
      open = i;
    } else if (c === "]") {
      if (open < 0) fail(`unmatched "]" at position ${i}`);
      open = -1;
    } else if (c === "," && open < 0) {
      items.push(text.slice(start, i));
      start = i + 1;
    }
  }
  if (open >= 0) fail(`unclosed "[" at position ${open}`);
  items.push(text.slice(start));
  return items;
}

/** Expand the inside of one bracket group, e.g. `001-003,7` → 001, 002, 003, 7. */
function expandGroup(body: string, fail: Fail): string[] {
  const out: string[] = [];
  for (const raw of body.split(",")) {
    const part = raw.trim();
    const single = /^\d+$/.exec(part);
    if (single) {
      out.push(part);
      continue;
    }
    const range = /^(\d+)-(\d+)$/.exec(part);
    if (!range) fail(`${quote(part)} in "[${body}]" is neither a number nor a range like "1-3"`);
    const [, loText, hiText] = range as RegExpExecArray;
    const lo = Number(loText);
    const hi = Number(hiText);
    if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi)) fail(`range ${quote(part)} is too large`);
    if (hi < lo) fail(`range ${quote(part)} goes backwards`);
    if (out.length + (hi - lo + 1) > MAX_HOSTLIST_SIZE) {
      fail(`it expands to more than ${MAX_HOSTLIST_SIZE} hosts`);
    }
    // Slurm keeps the width of the low bound: n[001-003] is n001..n003, n[8-10] is n8..n10.
    const width = (loText as string).length;
    for (let n = lo; n <= hi; n++) out.push(String(n).padStart(width, "0"));
  }
  return out;
}

/** Expand one top-level item such as `rack[1-2]-node[01-02]` (leftmost group varies slowest). */
function expandItem(item: string, fail: Fail): string[] {
  let names = [""];
  const pattern = /\[([^\]]*)\]/g;
  let last = 0;
  let m: RegExpExecArray | null;
  const append = (suffixes: string[]): void => {
    if (names.length * suffixes.length > MAX_HOSTLIST_SIZE) {
      fail(`it expands to more than ${MAX_HOSTLIST_SIZE} hosts`);
    }
    names = names.flatMap((n) => suffixes.map((s) => n + s));
  };
  while ((m = pattern.exec(item)) !== null) {
    if (m.index > last) append([item.slice(last, m.index)]);
    const body = m[1] as string;
    if (body.trim() === "") fail(`${quote(item)} has an empty "[]"`);
    append(expandGroup(body, fail));
    last = m.index + m[0].length;
  }
  if (last < item.length) append([item.slice(last)]);
  return names;
}

/**
 * Expand a Slurm hostlist, reporting problems through `fail`; the engine behind
 * {@link parseHostlist}, for callers that word their own errors.
 *
 * @internal
 * @param s A compressed hostlist such as `n[001-003],gpu[1-2]b[3-4]`.
 * @param fail Called with a short description of the problem (e.g. `unclosed "[" at position 1`); must throw.
 * @returns The host names, in order.
 * @throws Whatever `fail` throws.
 *
 * @example Word the error for an environment variable
 * ```ts
 * expandHostlist(env.SLURM_NODELIST ?? "", (d) => { throw new PlatformError(`SLURM_NODELIST: ${d}`); });
 * ```
 */
export function expandHostlist(s: string, fail: Fail): string[] {
  const text = s.trim();
  if (text === "") fail("it is empty");
  const out: string[] = [];
  for (const raw of splitTopLevel(text, fail)) {
    const item = raw.trim();
    if (item === "") fail("it has an empty host name");
    if (/\s/.test(item)) fail(`host name ${quote(item)} contains white space`);
    const hosts = expandItem(item, fail);
    if (out.length + hosts.length > MAX_HOSTLIST_SIZE) fail(`it expands to more than ${MAX_HOSTLIST_SIZE} hosts`);
    out.push(...hosts);
  }
  return out;
}

/**
 * Expand a Slurm hostlist (the format of `SLURM_NODELIST`) into host names.
 *
 * Supports comma-separated items at the top level, bracket groups with single values and `lo-hi`
 * ranges, several bracket groups in one name (`a[1-2]b[3-4]` is a1b3, a1b4, a2b3, a2b4), and keeps
 * zero padding as Slurm does: the width of a range is the width of its low bound.
 *
 * @param s A compressed hostlist such as `n[001-003]` or `SH-IDC1-10-5-38-[190,215]`.
 * @returns The host names, in order.
 * @throws {PlatformError} If the list is empty or malformed (unbalanced or nested brackets, a bad
 * range, an empty name) or expands to more than {@link MAX_HOSTLIST_SIZE} hosts.
 *
 * @example Expand a zero-padded list
 * ```ts
 * parseHostlist("n[001-003],login"); // ["n001", "n002", "n003", "login"]
 * ```
 */
export function parseHostlist(s: string): string[] {
  return expandHostlist(s, (detail) => {
    throw new PlatformError(`Cannot parse hostlist ${quote(s)}: ${detail}`);
  });
}

/**
 * Expand a Slurm tasks-per-node value, reporting problems through `fail`; the engine behind
 * {@link parseTasksPerNode}.
 *
 * @internal
 * @param s A value such as `3(x2),1`.
 * @param nNodes The number of nodes it describes.
 * @param fail Called with a short description of the problem; must throw.
 * @returns One task count per node.
 * @throws Whatever `fail` throws.
 *
 * @example Word the error for an environment variable
 * ```ts
 * expandTasksPerNode("2(x3)", 3, (d) => { throw new PlatformError(`SLURM_TASKS_PER_NODE: ${d}`); });
 * ```
 */
export function expandTasksPerNode(s: string, nNodes: number, fail: Fail): number[] {
  const text = s.trim();
  if (text === "") fail("it is empty");
  const counts: number[] = [];
  let repeated = false;
  for (const raw of text.split(",")) {
    const item = raw.trim();
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(item);
    if (!m) fail(`${quote(item)} is not a count like "3" or "3(x2)"`);
    const count = Number((m as RegExpExecArray)[1]);
    const times = (m as RegExpExecArray)[2] === undefined ? 1 : Number((m as RegExpExecArray)[2]);
    if (!Number.isSafeInteger(count) || count < 1) fail(`task count ${quote(item)} must be at least 1`);
    if (!Number.isSafeInteger(times) || times < 1) fail(`repeat count in ${quote(item)} must be at least 1`);
    if (counts.length + times > MAX_HOSTLIST_SIZE) fail(`it describes more than ${MAX_HOSTLIST_SIZE} nodes`);
    if ((m as RegExpExecArray)[2] !== undefined) repeated = true;
    for (let i = 0; i < times; i++) counts.push(count);
  }
  // A single plain count (what `--ntasks-per-node=3` sets) applies to every node, as in DI-engine.
  if (counts.length === 1 && !repeated) return Array.from({ length: nNodes }, () => counts[0] as number);
  if (counts.length !== nNodes) {
    fail(`it describes ${counts.length} nodes, but there are ${nNodes}`);
  }
  return counts;
}

/**
 * Expand a Slurm tasks-per-node value (`SLURM_NTASKS_PER_NODE` / `SLURM_TASKS_PER_NODE`) into one
 * task count per node.
 *
 * `3(x2),1` means 3 tasks on each of 2 nodes, then 1 task. A single plain count such as `3` applies
 * to every node (DI-engine read only this form, with `int()`).
 *
 * @param s The value, e.g. `3`, `3(x2),1`.
 * @param nNodes How many nodes the job has (the length of the expanded `SLURM_NODELIST`).
 * @returns One task count per node, `nNodes` long.
 * @throws {PlatformError} If `s` is malformed or describes a different number of nodes.
 * @throws {RangeError} If `nNodes` is not a positive integer.
 *
 * @example Expand a compressed count
 * ```ts
 * parseTasksPerNode("3(x2),1", 3); // [3, 3, 1]
 * parseTasksPerNode("3", 2);       // [3, 3]
 * ```
 */
export function parseTasksPerNode(s: string, nNodes: number): number[] {
  if (!Number.isSafeInteger(nNodes) || nNodes < 1) {
    throw new RangeError(`Cannot parse tasks per node: node count ${quote(nNodes)} must be a positive integer`);
  }
  return expandTasksPerNode(s, nNodes, (detail) => {
    throw new PlatformError(`Cannot parse tasks per node ${quote(s)}: ${detail}`);
  });
}
