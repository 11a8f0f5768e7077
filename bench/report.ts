// Turns raw measurements into metrics (mesh vs bare ws vs SPEC §7 targets), prints the table, and
// writes the JSON results and a hand-written SVG bar chart of the mesh/bare ratios.
import { writeFileSync } from "node:fs";
import process from "node:process";
import type { LaunchOut, Mesh4Out, RttOut, SlowOut, StreamOut } from "./orchestrator.ts";

/** A SPEC §7 target. `ratio`: mesh / bare ws; `abs`: the mesh's own value; `reported`: present. */
export interface Target {
  text: string;
  kind: "ratio" | "abs" | "reported";
  op?: ">=" | "<=" | "<";
  value?: number;
}

/** One row of the table. */
export interface Metric {
  id: string;
  label: string;
  unit: string;
  better: "higher" | "lower";
  bare: number | null;
  mesh: number | null;
  bareText: string;
  meshText: string;
  /** mesh / bare */
  ratio: number | null;
  target: Target | null;
  met: boolean | null;
}

/** Everything measured on one runtime. */
export interface RunResult {
  runtime: string;
  date: string;
  seconds: number;
  info: Record<string, unknown>;
  raw: {
    streams: Record<string, { label: string; size: number; bare: StreamOut | null; mesh: StreamOut | null }>;
    rtt?: { bare: RttOut | null; mesh: RttOut | null };
    mesh4?: { bare: Mesh4Out | null; mesh: Mesh4Out | null };
    launch?: LaunchOut | null;
    slow?: { bare: SlowOut | null; mesh: SlowOut | null };
    /** Per test: the share of the machine's CPU other processes used meanwhile (0-1; Linux only). */
    background?: Record<string, number | null>;
  };
  metrics: Metric[];
  errors: string[];
  /** Set when this run comes from an earlier results file (the date of that file). */
  carriedOver?: string;
}

/** The results file. */
export interface Results {
  schema: string;
  date: string;
  quick: boolean;
  orchestrator: string;
  commit: string | null;
  /** `git status --porcelain` of mod.ts and lib/ at the time of the run (uncommitted changes measured). */
  libChanges: string[] | null;
  machine: Record<string, unknown>;
  loadavg: { start: number[]; end: number[] };
  seconds: number;
  params: unknown;
  runs: Record<string, RunResult>;
}

// ------------------------------------------------------------------ formatting

export function num(v: number | null | undefined): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)} M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)} k`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

function ratioText(r: number | null): string {
  if (r === null || !Number.isFinite(r)) return "—";
  // Three decimals where two would round onto a target (0.7996 is not 0.80).
  const two = r.toFixed(2);
  return [0.8, 1.3, 1.5, 2.5, 3].includes(Number(two)) && Number(two) !== r ? `${r.toFixed(3)}x` : `${two}x`;
}

function metText(m: boolean | null): string {
  return m === null ? "—" : m ? "yes" : "NO";
}

function check(v: number | null, t: Target | null): boolean | null {
  if (!t) return null;
  if (t.kind === "reported") return v !== null && Number.isFinite(v);
  if (v === null || !Number.isFinite(v)) return false;
  if (t.op === ">=") return v >= t.value!;
  if (t.op === "<=") return v <= t.value!;
  return v < t.value!;
}

// ------------------------------------------------------------------ metrics

const STREAM_TARGETS: Record<string, Target | null> = {
  s64: { text: ">= 2.5x", kind: "ratio", op: ">=", value: 2.5 },
  s1k: { text: ">= 1.5x", kind: "ratio", op: ">=", value: 1.5 },
  s64k: null,
  s4m: { text: ">= 3x", kind: "ratio", op: ">=", value: 3 },
};

function metric(
  id: string,
  label: string,
  unit: string,
  better: "higher" | "lower",
  bare: number | null,
  mesh: number | null,
  target: Target | null,
  texts: { bare?: string; mesh?: string } = {},
): Metric {
  const ratio = bare !== null && mesh !== null && bare !== 0 ? mesh / bare : null;
  const judged = target?.kind === "ratio" ? ratio : mesh;
  return {
    id,
    label,
    unit,
    better,
    bare,
    mesh,
    bareText: texts.bare ?? (bare === null ? "—" : `${num(bare)} ${unit}`),
    meshText: texts.mesh ?? (mesh === null ? "—" : `${num(mesh)} ${unit}`),
    ratio,
    target,
    met: check(judged, target),
  };
}

/** The table rows of one run. */
export function buildMetrics(r: RunResult): Metric[] {
  const out: Metric[] = [];
  const raw = r.raw;
  const streamCell = (s: StreamOut | null) => (s ? `${num(s.perSec)} ev/s, ${num(s.mbPerSec)} MB/s` : "—");
  for (const [id, st] of Object.entries(raw.streams)) {
    out.push(
      metric(id, `${st.label}, one-way`, "ev/s", "higher", st.bare?.perSec ?? null, st.mesh?.perSec ?? null, STREAM_TARGETS[id] ?? null, {
        bare: streamCell(st.bare),
        mesh: streamCell(st.mesh),
      }),
    );
  }
  if (raw.rtt) {
    out.push(
      metric("rtt50", "round trip 64 B, p50", "µs", "lower", raw.rtt.bare?.p50 ?? null, raw.rtt.mesh?.p50 ?? null, {
        text: "<= 1.3x",
        kind: "ratio",
        op: "<=",
        value: 1.3,
      }),
    );
    out.push(metric("rtt99", "round trip 64 B, p99", "µs", "lower", raw.rtt.bare?.p99 ?? null, raw.rtt.mesh?.p99 ?? null, null));
  }
  if (raw.mesh4) {
    out.push(
      metric("mesh4", "4 nodes broadcast 64 B, delivered", "ev/s", "higher", raw.mesh4.bare?.perSec ?? null, raw.mesh4.mesh?.perSec ?? null, {
        text: ">= 300 k ev/s",
        kind: "abs",
        op: ">=",
        value: 300_000,
      }),
    );
  }
  if (raw.launch !== undefined) {
    const l = raw.launch;
    out.push(
      metric("launch", "8 workers launched -> all run main", "ms", "lower", null, l?.ms ?? null, {
        text: "< 1500 ms",
        kind: "abs",
        op: "<",
        value: 1500,
      }),
    );
  }
  const first = Object.values(raw.streams).find((s) => s.bare?.idleRss || s.mesh?.idleRss);
  if (first) {
    out.push(
      metric("idle_rss", "idle RSS, process with 1 peer", "MiB", "lower", first.bare?.idleRss?.recv ?? null, first.mesh?.idleRss?.recv ?? null, {
        text: "reported",
        kind: "reported",
      }),
    );
  }
  if (raw.launch) {
    const rss = [...raw.launch.workerRss].sort((a, b) => a - b);
    out.push(
      metric("idle_rss8", "idle RSS, worker of 8 (median)", "MiB", "lower", null, rss[Math.floor(rss.length / 2)] ?? null, {
        text: "reported",
        kind: "reported",
      }),
    );
  }
  const big = raw.streams.s4m;
  if (big) {
    out.push(metric("rss4m_send", "RSS streaming 4 MiB arrays, sender", "MiB", "lower", big.bare?.rssPeakSend ?? null, big.mesh?.rssPeakSend ?? null, null));
    out.push(metric("rss4m_recv", "RSS streaming 4 MiB arrays, receiver", "MiB", "lower", big.bare?.rssPeakRecv ?? null, big.mesh?.rssPeakRecv ?? null, null));
  }
  if (raw.slow) {
    const cell = (s: SlowOut | null) => (s ? `+${s.growth.toFixed(0)} MiB (${s.sentMiB.toFixed(0)} MiB sent)` : "—");
    out.push(
      metric("slow_growth", "slow receiver: sender RSS growth", "MiB", "lower", raw.slow.bare?.growth ?? null, raw.slow.mesh?.growth ?? null, null, {
        bare: cell(raw.slow.bare),
        mesh: cell(raw.slow.mesh),
      }),
    );
  }
  return out;
}

/** Deno against Node for the mesh's own numbers (>= 0.8 means Deno is within 0.8x of Node). */
export function denoVsNode(results: Results): Metric[] {
  const node = results.runs.node;
  const deno = results.runs.deno;
  if (!node || !deno) return [];
  const out: Metric[] = [];
  for (const m of node.metrics) {
    if (!["s64", "s1k", "s64k", "s4m", "rtt50", "mesh4", "launch"].includes(m.id)) continue;
    const d = deno.metrics.find((x) => x.id === m.id);
    const nv = m.mesh;
    const dv = d?.mesh ?? null;
    // Speed of Deno relative to Node: for "lower is better" metrics, Node's value over Deno's.
    const speed = nv !== null && dv !== null && nv > 0 && dv > 0 ? (m.better === "higher" ? dv / nv : nv / dv) : null;
    out.push({
      id: `deno_${m.id}`,
      label: `${m.label} (mesh)`,
      unit: m.unit,
      better: "higher",
      bare: nv,
      mesh: dv,
      bareText: nv === null ? "—" : `${num(nv)} ${m.unit}`,
      meshText: dv === null ? "—" : `${num(dv)} ${m.unit}`,
      ratio: speed,
      target: { text: ">= 0.8x", kind: "ratio", op: ">=", value: 0.8 },
      met: check(speed, { text: "", kind: "ratio", op: ">=", value: 0.8 }),
    });
  }
  return out;
}

// ------------------------------------------------------------------ table

function table(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(w[i]!)).join(" | ")} |`;
  return [line(header), `|${w.map((n) => "-".repeat(n + 2)).join("|")}|`, ...rows.map(line)].join("\n");
}

/** The markdown table of one run. */
export function runTable(r: RunResult): string {
  return table(
    ["metric", "bare ws", "mesh", "ratio", "SPEC §7 target", "met?"],
    r.metrics.map((m) => [m.label, m.bareText, m.meshText, ratioText(m.ratio), m.target?.text ?? "—", metText(m.met)]),
  );
}

function describeRun(r: RunResult): string {
  const i = r.info;
  const rt = i.runtime === "deno" ? `Deno ${i.version} (V8 ${i.v8})` : `Node ${i.version ?? "?"} (V8 ${i.v8 ?? "?"})`;
  return `${rt}, ws ${i.ws}, cbor-x ${i.cborX} (native extension ${i.cborNative ? "on" : "off"}), bufferutil ${i.bufferutil ?? "absent"}`;
}

/**
 * CPU time per event (µs) of the sending and receiving processes: less sensitive to other load on
 * the machine than events/s, and it shows which side limits the rate.
 */
export function cpuTable(r: RunResult): string {
  const f = (v: number | null | undefined) => (v === null || v === undefined || !Number.isFinite(v) ? "—" : v < 10 ? v.toFixed(2) : v.toFixed(1));
  const rows: string[][] = [];
  for (const st of Object.values(r.raw.streams)) {
    const b = st.bare;
    const m = st.mesh;
    const busiest = (x: StreamOut | null) => (x && x.cpuSend !== null && x.cpuRecv !== null ? Math.max(x.cpuSend, x.cpuRecv) : null);
    const bb = busiest(b);
    const mb = busiest(m);
    rows.push([
      st.label,
      f(b?.cpuSend),
      f(b?.cpuRecv),
      f(m?.cpuSend),
      f(m?.cpuRecv),
      bb !== null && mb !== null && mb > 0 ? `${(bb / mb).toFixed(2)}x` : "—",
    ]);
  }
  const b4 = r.raw.mesh4?.bare?.cpuPerEvent;
  const m4 = r.raw.mesh4?.mesh?.cpuPerEvent;
  if (b4 !== undefined || m4 !== undefined) {
    rows.push(["4 nodes, per delivered event (all nodes)", f(b4), "", f(m4), "", b4 && m4 ? `${(b4 / m4).toFixed(2)}x` : "—"]);
  }
  return table(["CPU µs per event", "bare send", "bare recv", "mesh send", "mesh recv", "bare/mesh (busier side)"], rows);
}

/**
 * Every repetition's figures (the tables above show the median run) and the bare/mesh ratio of
 * each repetition, whose two sides ran one after the other. Null when nothing was repeated.
 */
export function spreadTable(r: RunResult): string | null {
  const rows: string[][] = [];
  const add = (label: string, unit: string, bare: number[] | undefined, mesh: number[] | undefined) => {
    if (!bare || !mesh || Math.max(bare.length, mesh.length) < 2) return;
    const ratios = mesh.map((m, i) => (bare[i] ? `${(m / bare[i]!).toFixed(2)}x` : "—"));
    rows.push([label, bare.map(num).join(", ") + ` ${unit}`, mesh.map(num).join(", ") + ` ${unit}`, ratios.join(", ")]);
  };
  for (const st of Object.values(r.raw.streams)) add(st.label, "ev/s", st.bare?.samples, st.mesh?.samples);
  add("round trip 64 B, p50", "µs", r.raw.rtt?.bare?.samples, r.raw.rtt?.mesh?.samples);
  add("4 nodes broadcast 64 B", "ev/s", r.raw.mesh4?.bare?.samples, r.raw.mesh4?.mesh?.samples);
  return rows.length ? table(["every repetition", "bare ws", "mesh", "mesh/bare"], rows) : null;
}

/** Print every run's table, the Deno/Node comparison and notes. */
export function printReport(results: Results): void {
  const out: string[] = [];
  const m = results.machine;
  out.push("");
  out.push(`ditask bench — ${results.date}${results.quick ? " (QUICK: smoke numbers only)" : ""}`);
  out.push(`machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}; load average at start ${results.loadavg.start.map((v) => v.toFixed(2)).join(" ")}`);
  out.push(
    `ditask: commit ${results.commit ?? "?"}${results.libChanges?.length ? ` + uncommitted changes in ${results.libChanges.length} library file(s)` : ""}`,
  );
  for (const r of Object.values(results.runs)) {
    out.push("");
    out.push(`### ${r.runtime}${r.carriedOver ? ` (carried over from the run of ${r.carriedOver})` : ""}: ${describeRun(r)}`);
    out.push("");
    out.push(runTable(r));
    if (Object.keys(r.raw.streams).length || r.raw.mesh4) {
      out.push("");
      out.push(cpuTable(r));
    }
    const spread = spreadTable(r);
    if (spread) {
      out.push("");
      out.push("Each figure above is the median of the repetitions below, each in fresh processes:");
      out.push("");
      out.push(spread);
      out.push("");
    }
    const l = r.raw.launch;
    if (l) {
      out.push("");
      out.push(
        `launch: runs ${l.runs.map((v) => v.toFixed(0)).join(", ")} ms; from spawning the launcher process ${l.fromSpawnMs.toFixed(0)} ms; ` +
          `per worker (median): spawn ${l.phases.spawn.toFixed(0)} ms, runtime boot ${l.phases.boot.toFixed(0)} ms, ` +
          `loading ditask ${l.phases.load.toFixed(0)} ms, connecting the mesh ${l.phases.connect.toFixed(0)} ms`,
      );
    }
    const bg = Object.entries(r.raw.background ?? {}).filter((e): e is [string, number] => e[1] !== null);
    if (bg.length) {
      const worst = bg.reduce((a, b) => (b[1] > a[1] ? b : a));
      const mean = bg.reduce((a, b) => a + b[1], 0) / bg.length;
      out.push(
        `other processes used ${(mean * 100).toFixed(0)}% of the machine's CPU on average during the tests ` +
          `(most: ${(worst[1] * 100).toFixed(0)}% during ${worst[0]})${worst[1] > 0.1 ? " — numbers are disturbed; rerun on a quiet machine" : ""}`,
      );
    }
    if (r.errors.length) out.push(`errors: ${r.errors.join("; ")}`);
  }
  const dn = denoVsNode(results);
  if (dn.length) {
    out.push("");
    out.push("### Deno vs Node (mesh; ratio = Deno's speed relative to Node, latency and launch inverted)");
    out.push("");
    out.push(
      table(
        ["metric", "Node", "Deno", "Deno/Node", "SPEC §7 target", "met?"],
        dn.map((x) => [x.label, x.bareText, x.meshText, ratioText(x.ratio), x.target?.text ?? "—", metText(x.met)]),
      ),
    );
  }
  out.push("");
  out.push(
    "one-way: events/s at the receiver after a warm-up, sender limited to a window of unacknowledged events; " +
      "MB = 10^6 bytes of payload. bare ws: one send per message, client to server, masked, perMessageDeflate off. " +
      "mesh: task.emit on a WsMeshTransport node (tcp loopback), the dialing node sends.",
  );
  process.stdout.write(out.join("\n") + "\n");
}

// ------------------------------------------------------------------ files

/** Write the JSON results and the SVG chart. */
export function writeResults(results: Results, jsonPath: string, svgPath: string): void {
  const withDeno = { ...results, denoVsNode: denoVsNode(results) };
  writeFileSync(jsonPath, JSON.stringify(withDeno, null, 2) + "\n");
  writeFileSync(svgPath, chart(results));
}

/** " (others used N% CPU)" when other processes loaded the machine during the run's tests. */
function backgroundNote(r: RunResult): string {
  const bg = Object.values(r.raw.background ?? {}).filter((v): v is number => v !== null);
  if (bg.length === 0) return "";
  const mean = bg.reduce((a, b) => a + b, 0) / bg.length;
  return mean > 0.1 ? ` (other processes used ${(mean * 100).toFixed(0)}% CPU)` : "";
}

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

const COLOURS: Record<string, { met: string; missed: string; none: string }> = {
  node: { met: "#2e8b57", missed: "#d9534f", none: "#6c8ebf" },
  deno: { met: "#66c29a", missed: "#f0a09d", none: "#a9c1e6" },
};

/**
 * A horizontal bar chart: one group per metric (mesh / bare ws), one bar per runtime, a dashed line
 * at each target, and the absolute targets as text below.
 */
export function chart(results: Results): string {
  const runs = Object.values(results.runs);
  const ids = ["s64", "s1k", "s64k", "s4m", "rtt50", "mesh4"];
  const rows = ids
    .map((id) => ({ id, per: runs.map((r) => ({ run: r, m: r.metrics.find((x) => x.id === id) })) }))
    .filter((row) => row.per.some((p) => p.m));
  const W = 820;
  const left = 230;
  const right = 90;
  const barH = 16;
  const gap = 14;
  const top = 64;
  const groupH = runs.length * (barH + 3) + gap;
  const plotH = rows.length * groupH;
  const values = rows.flatMap((row) => row.per.map((p) => p.m?.ratio ?? 0));
  const targets = rows.flatMap((row) => row.per.map((p) => (p.m?.target?.kind === "ratio" ? p.m.target.value! : 0)));
  const maxX = Math.max(1.5, ...values, ...targets) * 1.12;
  const x = (v: number) => Math.round((left + (v / maxX) * (W - left - right)) * 10) / 10;
  const parts: string[] = [];
  const abs: string[] = [];
  for (const r of runs) {
    for (const id of ["mesh4", "launch", "idle_rss8"]) {
      const m = r.metrics.find((q) => q.id === id);
      if (!m) continue;
      abs.push(`${r.runtime}: ${m.label}: ${m.meshText}${m.target ? ` (target ${m.target.text}: ${metText(m.met)})` : ""}`);
    }
  }
  const dn = denoVsNode(results);
  if (dn.length) {
    const worst = dn.reduce((a, b) => ((a.ratio ?? Infinity) <= (b.ratio ?? Infinity) ? a : b));
    abs.push(`Deno vs Node, worst mesh metric: ${worst.label} ${ratioText(worst.ratio)} (target >= 0.8x: ${metText(worst.met)})`);
  }
  const H = top + plotH + 40 + abs.length * 18 + 24;
  const m = results.machine;
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
  );
  parts.push(`<rect width="${W}" height="${H}" fill="#ffffff"/>`);
  parts.push(
    `<text x="16" y="24" font-size="16" font-weight="bold">ditask mesh / bare ws (same run, loopback)${results.quick ? " — QUICK run" : ""}</text>`,
  );
  parts.push(
    `<text x="16" y="44" fill="#555">${esc(`${runs.map((r) => `${r.runtime} ${r.info.version ?? ""}${backgroundNote(r)}`).join(", ")} · ${m.cpu}, ${m.cores} cores · ${results.date.slice(0, 10)}`)}</text>`,
  );
  // grid: 1x (bare ws) and integer ratios
  for (let v = 0; v <= maxX; v += maxX > 6 ? 2 : maxX > 3 ? 1 : 0.5) {
    parts.push(`<line x1="${x(v)}" y1="${top - 6}" x2="${x(v)}" y2="${top + plotH}" stroke="${v === 1 ? "#888" : "#e6e6e6"}"/>`);
    parts.push(`<text x="${x(v)}" y="${top + plotH + 14}" text-anchor="middle" fill="#777">${v}x</text>`);
  }
  rows.forEach((row, gi) => {
    const y0 = top + gi * groupH;
    const label = row.per.find((p) => p.m)?.m?.label ?? row.id;
    const better = row.per.find((p) => p.m)?.m?.better === "lower" ? " (lower is better)" : "";
    parts.push(`<text x="${left - 8}" y="${y0 + barH - 3}" text-anchor="end">${esc(label.replace(", one-way", ""))}</text>`);
    if (better) parts.push(`<text x="${left - 8}" y="${y0 + barH + 11}" text-anchor="end" fill="#777" font-size="10">${better.trim()}</text>`);
    row.per.forEach((p, i) => {
      const y = y0 + i * (barH + 3);
      const mm = p.m;
      if (!mm || mm.ratio === null) return;
      const c = COLOURS[p.run.runtime] ?? COLOURS.node!;
      const fill = mm.target?.kind === "ratio" ? (mm.met ? c.met : c.missed) : c.none;
      parts.push(`<rect x="${left}" y="${y}" width="${Math.max(1, Math.round((x(mm.ratio) - left) * 10) / 10)}" height="${barH}" fill="${fill}"><title>${esc(`${p.run.runtime}: ${mm.label}: bare ${mm.bareText}, mesh ${mm.meshText}`)}</title></rect>`);
      parts.push(`<text x="${x(mm.ratio) + 4}" y="${y + barH - 4}">${esc(`${ratioText(mm.ratio)}${runs.length > 1 ? ` ${p.run.runtime}` : ""}`)}</text>`);
      if (mm.target?.kind === "ratio") {
        const tx = x(mm.target.value!);
        parts.push(`<line x1="${tx}" y1="${y - 2}" x2="${tx}" y2="${y + barH + 2}" stroke="#222" stroke-width="2" stroke-dasharray="3,2"/>`);
      }
    });
    const t = row.per.find((p) => p.m?.target?.kind === "ratio")?.m?.target;
    if (t) parts.push(`<text x="${W - 8}" y="${y0 + barH - 3}" text-anchor="end" fill="#222">target ${esc(t.text)}</text>`);
  });
  let y = top + plotH + 40;
  parts.push(`<text x="16" y="${y - 8}" font-weight="bold">Absolute targets</text>`);
  for (const line of abs) {
    y += 18;
    parts.push(`<text x="16" y="${y - 8}">${esc(line)}</text>`);
  }
  parts.push(
    `<text x="16" y="${H - 8}" fill="#777" font-size="10">bars: mesh / bare ws; dashed line: SPEC §7 target; green met, red missed, blue no ratio target</text>`,
  );
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}
