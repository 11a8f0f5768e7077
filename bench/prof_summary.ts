// Summarise V8 CPU profiles (.cpuprofile, from `node --cpu-prof` or `bench --cpu-prof <dir>`):
// self time per function and per package, heaviest first.
//   node dist/bench/prof_summary.js <file.cpuprofile | dir> [top=25]
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

/** Which package or part of ditask a script URL belongs to. */
function area(url: string): string {
  if (url === "") return "(native/GC/idle)";
  const nm = url.lastIndexOf("node_modules/");
  if (nm >= 0) return url.slice(nm + 13).split("/")[0]!;
  if (url.startsWith("node:")) return "node:" + url.slice(5).split("/")[0];
  const m = /\/(lib\/.*|bench\/.*|mod)\.(ts|js)$/.exec(url);
  return m ? `ditask ${m[1]}` : url;
}

function summarise(path: string, top: number): void {
  const p = JSON.parse(readFileSync(path, "utf8")) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  p.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (p.timeDeltas[i] ?? 0)));
  let total = 0;
  const fn = new Map<string, number>();
  const ar = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    const name = n.callFrame.functionName || "(anonymous)";
    if (name === "(idle)" || name === "(program)") {
      ar.set(name, (ar.get(name) ?? 0) + us);
      total += us;
      continue;
    }
    const file = n.callFrame.url.split("/").slice(-1)[0] ?? "";
    const key = `${name}  ${file}:${n.callFrame.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const a = area(n.callFrame.url);
    ar.set(a, (ar.get(a) ?? 0) + us);
    total += us;
  }
  const idle = ar.get("(idle)") ?? 0;
  const busy = total - idle;
  const pct = (us: number) => ((100 * us) / busy).toFixed(1).padStart(5) + "%";
  process.stdout.write(`\n${path}\n  busy ${(busy / 1000).toFixed(0)} ms of ${(total / 1000).toFixed(0)} ms sampled\n  by area:\n`);
  for (const [k, us] of [...ar].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]).slice(0, 12)) {
    process.stdout.write(`  ${pct(us)}  ${k}\n`);
  }
  process.stdout.write("  by function (self time):\n");
  for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) process.stdout.write(`  ${pct(us)}  ${k}\n`);
}

const target = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (!target) {
  process.stderr.write("usage: prof_summary <file.cpuprofile | dir> [top]\n");
  process.exit(2);
}
const files = statSync(target).isDirectory()
  ? readdirSync(target).filter((f) => f.endsWith(".cpuprofile")).map((f) => join(target, f))
  : [target];
for (const f of files) summarise(f, top);
