// ditask's benchmark: the mesh against bare `ws` on loopback, in one run, side by side.
//
//   npm run bench                      (Node: build, then node dist/bench/bench.js)
//   deno run -A bench/bench.ts         (Deno)
//
// Options:
//   --quick             short run (CI smoke); writes no result files unless --json is given
//   --json <path>       write the results as JSON to <path> (and the chart next to it, .svg)
//   --both              also run every test on the other runtime (Node and Deno in one run,
//                       taking turns within each repetition of each test)
//   --only a,b          run only these tests: s64 s1k s64k s4m rtt mesh4 launch slow
//   --repeat <n>        run each stream, round-trip and 4-node test n times in fresh processes and
//                       report the medians (default 5; 1 with --quick)
//   --wait-quiet <s>    before each test, wait up to <s> seconds until other processes use < 15% CPU
//   --cpu-prof <dir>    the child processes (Node and Deno) write V8 CPU profiles into <dir>
//   --verbose           pass the child processes' own output through
//   --no-redis          skip the Redis rows (run when redis-server is installed)
//
// This file is also the entry of every child process (`--role <name> <json>`), and Parallel.runner
// re-runs it in its workers; each role loads only what it needs.
import process from "node:process";
import { report } from "./control.ts";

const tScript = Date.now();
const argv = process.argv.slice(2);
const roleAt = argv.indexOf("--role");

async function runRole(role: string, spec: unknown): Promise<void> {
  switch (role) {
    case "bare":
      return (await import("./bare_roles.ts")).runBare(spec as import("./bare_roles.ts").BareSpec);
    case "mesh":
      return (await import("./mesh_roles.ts")).runMesh(spec as import("./mesh_roles.ts").MeshSpec);
    case "launch": {
      const m = await import("./launch_role.ts");
      await m.runLaunch(spec as import("./launch_role.ts").LaunchSpec, tScript, Date.now());
      process.exit(0);
      return;
    }
    case "info":
      report({ type: "info", ...(await (await import("./info.ts")).runtimeInfo()) });
      process.exit(0);
      return;
    default:
      throw new Error(`unknown role ${role}`);
  }
}

if (roleAt >= 0) {
  try {
    await runRole(argv[roleAt + 1] ?? "", JSON.parse(argv[roleAt + 2] ?? "{}"));
  } catch (err) {
    report({ type: "error", message: (err as Error)?.stack ?? String(err) });
    process.exit(1);
  }
} else {
  const { main } = await import("./orchestrator.ts");
  process.exitCode = await main(argv);
  // The Redis message queue's rows (SPEC §5): after the mesh, against a private redis-server.
  if (!argv.includes("--no-redis") && !argv.includes("--only")) {
    const { printRedisRows, redisRows } = await import("./redis_rows.ts");
    printRedisRows(await redisRows(argv.includes("--quick")));
  }
}
