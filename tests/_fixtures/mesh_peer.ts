// A mesh node in its own process, for reliability tests. Usage: mesh_peer <WsMeshOptions JSON>
// Prints "ready" once open. Echoes topic "echo" back as "echoed" (same payload); on topic "block"
// it blocks its event loop for the number of ms in the payload's first byte x 100.
import { WsMeshTransport } from "../../lib/transport/ws/mod.ts";

const json = (globalThis as { Deno?: { args: string[] } }).Deno?.args[0] ?? process.argv[2]!;
const t = new WsMeshTransport(JSON.parse(json));
t.onMessage((m) => {
  if (m.topic === "echo") t.publish("echoed", m.payload);
  if (m.topic === "block") {
    const until = Date.now() + m.payload[0]! * 100;
    while (Date.now() < until) { /* busy: a long synchronous training step */ }
    t.publish("unblocked", new Uint8Array([1]));
  }
});
await t.open();
console.log(`ready ${t.address ?? ""}`);
// Stay until killed; end when the test (our parent) goes away.
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
