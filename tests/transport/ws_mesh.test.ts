import { WsMeshTransport } from "../../lib/transport/ws/mod.ts";
import { defineTransportContract } from "./contract.ts";

/** n mesh nodes on loopback with free ports: node i dials nodes 0..i-1. */
export async function meshCluster(n: number, protocol: "tcp" | "ipc" = "tcp") {
  const nodes: WsMeshTransport[] = [];
  const ids = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < n; i++) {
    const listen = protocol === "tcp"
      ? "tcp://127.0.0.1:0"
      : `ipc://${(await import("node:os")).tmpdir()}/ditask_test_${process.pid}_${Date.now()}_${i}.ipc`;
    const t = new WsMeshTransport({
      nodeId: i,
      listen,
      dial: nodes.map((p) => p.address!),
      expect: ids.filter((id) => id !== i),
      connectTimeout: 10_000,
    });
    await t.bind();
    nodes.push(t);
  }
  await Promise.all(nodes.map((t) => t.open()));
  return { nodes, close: async () => void (await Promise.all(nodes.map((t) => t.close()))) };
}

defineTransportContract("WsMeshTransport (tcp)", (n) => meshCluster(n, "tcp"));
defineTransportContract("WsMeshTransport (ipc)", (n) => meshCluster(n, "ipc"));
