// What runtime and library versions a child process sees.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { nativeCbor } from "../lib/codec.ts";
import { repoRoot } from "./control.ts";

function pkgVersion(path: string): string | null {
  try {
    return (JSON.parse(readFileSync(join(repoRoot(), path), "utf8")) as { version?: string }).version ?? null;
  } catch {
    return null;
  }
}

interface DenoVersion {
  version: { deno: string; v8: string; typescript: string };
}

/** Runtime, V8 and package versions, and whether cbor-x runs its native extension. */
export function runtimeInfo(): Record<string, unknown> {
  const deno = (globalThis as { Deno?: DenoVersion }).Deno;
  return {
    runtime: deno ? "deno" : "node",
    version: deno ? deno.version.deno : process.versions.node,
    v8: deno ? deno.version.v8 : process.versions.v8,
    // Deno reports the Node version its compatibility layer implements.
    nodeCompat: deno ? process.versions.node : undefined,
    ditask: pkgVersion("package.json"),
    ws: pkgVersion("node_modules/ws/package.json"),
    cborX: pkgVersion("node_modules/cbor-x/package.json"),
    cborNative: nativeCbor,
    bufferutil: pkgVersion("node_modules/bufferutil/package.json"),
  };
}
