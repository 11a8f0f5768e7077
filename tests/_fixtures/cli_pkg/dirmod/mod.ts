// A directory module: `--main dirmod.main` loads dirmod/mod.ts (dirmod/mod.js when compiled).
import { task } from "../../../../mod.ts";

/** Print which main ran. */
export function main(): void {
  console.log(`dirmod main on node ${task.router.nodeId}`);
}
