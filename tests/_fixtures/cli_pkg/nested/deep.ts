// A nested module: `--main nested.deep.main` loads nested/deep.ts.
import { task } from "../../../../mod.ts";

/** Print which main ran. */
export function main(): void {
  console.log(`nested.deep main on node ${task.router.nodeId}`);
}
