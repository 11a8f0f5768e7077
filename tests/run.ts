// The single test runner for both runtimes: `deno run -A tests/run.ts`, or on Node the compiled
// `.test-dist/tests/run.js`. The same suites, in the same order, on both.
import "./_defer.ts";
import "./events.test.ts";
import "./context.test.ts";
import "./task.test.ts";
import "./codec.test.ts";
import "./protocol.test.ts";
import "./router.test.ts";
import "./platform.test.ts";
import "./transport/memory.test.ts";
import "./transport/ws_socket.test.ts";
import "./transport/ws_mesh.test.ts";
import "./transport/redis.test.ts";
import "./transport/ws_reliability.test.ts";
import "./transport/ws_security.test.ts";
import "./transport/ws_fuzz.test.ts";
import "./parallel.test.ts";
import "./examples.test.ts";
import "./cli.test.ts";
import "./package.test.ts";
import "./meta.test.ts";
import { runQueued } from "./_runner.ts";

await runQueued();
