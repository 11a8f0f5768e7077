import { MemoryHub } from "../../lib/transport/memory.ts";
import { defineTransportContract } from "./contract.ts";

defineTransportContract("MemoryTransport", async (n) => {
  const hub = new MemoryHub();
  const nodes = Array.from({ length: n }, (_, i) => hub.transport(i));
  await Promise.all(nodes.map((t) => t.open()));
  return { nodes, close: async () => void (await Promise.all(nodes.map((t) => t.close()))) };
});
